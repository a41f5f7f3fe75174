r"""MCMC kernels for the DAPS inner problem: sample x0 ~ p(x0 | x_t, y) at annealing level σ_t.

Target (DAPS eq. 9, with the reference's data-term convention):

    log π(x0) = −‖A(x0) − y‖² / τ² + log p(x0 | x_t) + const,

where the *un-halved* squared residual over τ² is what the DAPS reference differentiates (an effective
measurement std of τ/√2; ``tau`` keeps the reference's meaning so the papers' configs carry over).
The conditional prior's score is ∇ log p(x0 | x_t) = ∇ log p(x0) + (x_t − x0)/σ_t², with ∇ log p(x0)
taken by ``prior_solver``:

* ``gaussian``  p(x0 | x_t) ≈ N(x̂0, σ_t² I):  ∇ log p(x0) ≈ (x̂0 − x_t)/σ_t²  (x̂0 from the PF-ODE)
* ``score-t``   (D(x_t; σ_t) − x_t)/σ_t², the one-step Tweedie version of the same
* ``score-min`` the model score at x̂0 and σ_min, held fixed during the chain
* ``exact``     the model score at the current x0 and σ_min, re-evaluated every step

Kernels (η_k the step size, ε ~ N(0, I) per step):

* ``langevin``  x ← x + η s(x) + sqrt(2η) ε
* ``hmc``       (damped) v ← m v + sqrt(η) s(x) + sqrt(2(1 − m)) ε,  x ← x + sqrt(η) v,  v_0 ~ N(0, I)
* ``mh``        random-walk Metropolis–Hastings: x' = x + sqrt(η) ε, accepted with probability
                min(1, π(x')/π(x)), using the Gaussian approximation of p(x0 | x_t).

The step size decays linearly over the annealing: η(r) = lr · (1 + r (lr_min_ratio − 1)), r ∈ [0, 1).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from common.errors import one_of, positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.random import rand, randn

MC_ALGOS = ("langevin", "hmc", "mh")
PRIOR_SOLVERS = ("gaussian", "score-t", "score-min", "exact")


class MeasurementFit:
    """The data term L(x0) = ‖A(decode(x0)) − y‖² per sample and its gradient (through the decoder)."""

    def __init__(self, model: DiffusionModel, operator: Operator, y: torch.Tensor) -> None:
        self.model, self.operator, self.y = model, operator, y

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.operator.loss(self.model.decode(x), self.y)

    def gradient(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(∇_x Σ_b L_b(x_b), L(x)), computed per sample-independent graph and released at once."""
        if not self.model.latent:
            return self.operator.gradient(x, self.y)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            loss = self.operator.loss(self.model.decode(x), self.y)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return grad, loss.detach()


class MCMCSampler:
    """One DAPS inner chain per annealing step (see the module docstring for the math)."""

    def __init__(self, num_steps: int, lr: float, tau: float = 0.01, lr_min_ratio: float = 0.01,
                 mc_algo: str = "langevin", prior_solver: str = "gaussian", prior_sigma_min: float = 0.01,
                 momentum: float = 0.9) -> None:
        num_steps = positive_int("num_steps", num_steps, minimum=0)
        lr, tau = real("lr", lr, 0, low_open=True), real("tau", tau, 0, low_open=True)
        lr_min_ratio = real("lr_min_ratio", lr_min_ratio, 0, 1, low_open=True)
        mc_algo, prior_solver = one_of("mc_algo", mc_algo, MC_ALGOS), one_of("prior_solver", prior_solver, PRIOR_SOLVERS)
        prior_sigma_min = real("prior_sigma_min", prior_sigma_min, 0, low_open=True)
        momentum = real("momentum", momentum, 0, 1, high_open=True)
        self.num_steps, self.lr, self.tau = num_steps, lr, tau
        self.lr_min_ratio, self.mc_algo, self.prior_solver = lr_min_ratio, mc_algo, prior_solver
        self.prior_sigma_min, self.momentum = prior_sigma_min, momentum

    def step_size(self, ratio: float) -> float:
        """η(r) = lr · (1 + r (lr_min_ratio − 1))."""
        return self.lr * (1 + ratio * (self.lr_min_ratio - 1))

    def _fixed_prior_score(self, model: DiffusionModel, x0hat: torch.Tensor, x_t: torch.Tensor,
                           sigma: torch.Tensor) -> torch.Tensor | None:
        """∇ log p(x0) under the solvers that hold it fixed during the chain (None for ``exact``)."""
        with torch.no_grad():
            if self.prior_solver == "gaussian":
                return (x0hat - x_t) / sigma ** 2
            if self.prior_solver == "score-t":
                return model.score(x_t, sigma)
            if self.prior_solver == "score-min":
                return model.score(x0hat, self.prior_sigma_min)
        return None

    def sample(self, model: DiffusionModel, fit: MeasurementFit, x0hat: torch.Tensor, x_t: torch.Tensor,
               sigma: torch.Tensor, ratio: float, generators: Sequence[torch.Generator]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the chain from x̂0; returns (x0y, per-sample data loss at the last evaluated state)."""
        eta = self.step_size(ratio)
        if self.mc_algo == "mh":
            return self._metropolis_hastings(fit, x0hat, sigma, eta, generators)
        prior = self._fixed_prior_score(model, x0hat, x_t, sigma)

        def score(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            grad, loss = fit.gradient(x)
            with torch.no_grad():
                p = prior if prior is not None else model.score(x, self.prior_sigma_min)
                return -grad / self.tau ** 2 + (x_t - x) / sigma ** 2 + p, loss

        noise: Callable[[], torch.Tensor] = lambda: randn(x0hat.shape[1:], generators, device=x0hat.device)
        x = x0hat.detach().clone()
        loss = fit.loss(x) if self.num_steps == 0 else None
        velocity = noise() if self.mc_algo == "hmc" else None
        for _ in range(self.num_steps):
            s, loss = score(x)
            eps = noise()
            if velocity is None:
                x = x + eta * s + (2 * eta) ** 0.5 * eps
            else:
                velocity = self.momentum * velocity + eta ** 0.5 * s + (2 * (1 - self.momentum)) ** 0.5 * eps
                x = x + eta ** 0.5 * velocity
        return x, loss

    def _metropolis_hastings(self, fit: MeasurementFit, x0hat: torch.Tensor, sigma: torch.Tensor, eta: float,
                             generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        def log_target(x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
            return -loss / self.tau ** 2 - (x - x0hat).pow(2).flatten(1).sum(-1) / (2 * sigma ** 2)

        x = x0hat.detach().clone()
        loss = fit.loss(x)
        for _ in range(self.num_steps):
            proposal = x + eta ** 0.5 * randn(x.shape[1:], generators, device=x.device)
            proposal_loss = fit.loss(proposal)
            log_accept = log_target(proposal, proposal_loss) - log_target(x, loss)
            u = rand((), generators, device=x.device)
            accept = u.log() < log_accept
            x = torch.where(accept.view(-1, *[1] * (x.ndim - 1)), proposal, x)
            loss = torch.where(accept, proposal_loss, loss)
        return x, loss
