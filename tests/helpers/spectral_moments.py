r"""Exact output moments of the spectral samplers (DDRM, DDNM+) on a Gaussian prior, for the closed-form tests.

With a Gaussian prior N(μ, Σ) the denoiser is linear, D(x; σ) = μ + K_σ (x − μ), K_σ = Σ (Σ + σ² I)⁻¹, and every
per-coefficient rule of DDRM and DDNM+ has the form (c = Vᵀx̄ in the right-singular basis, x̄ = x_t/sqrt(ᾱ_t))

    c' = a ⊙ c0 + b ⊙ e + g ⊙ ȳ + d ⊙ z,   c0 = m + B (c − m),   e = (c − c0)/σ,   z ~ N(0, I)

with B = Vᵀ K_σ V, m = Vᵀμ and per-coefficient weights (a, b, g, d) that depend on s_i, σ' and σ_y only. So
c' = W c + w + d ⊙ z with W = diag(a) B + diag(b/σ)(I − B), w = (diag(a) − diag(b/σ))(I − B) m + g ⊙ ȳ, and the
output is Gaussian with mean and covariance from the recursion M' = W M + w, S' = W S Wᵀ + diag(d²), in float64.
The weights below are written from the papers' equations (DDRM eq. 7–8; DDNM+ eq. 17–19 in the authors' form),
independently of the samplers' code; a dense A with a full SVD makes U and V non-trivial.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from commands.accuracy import gauss_prior_params
from common.models import build_model
from common.models.base import DiffusionModel
from common.operators.base import SVDOperator
from common.operators.linalg import SVD
from common.operators.noise import GaussianNoise
from common.random import make_generator, randn
from common.sampling.vp import abar, sigma_of

#: (s, σ', σ_y) -> per-coefficient weights (a, b, g, d), each (n,)
Rule = Callable[[torch.Tensor, float, float], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]


class DenseSVD(SVD):
    """A = U diag(s) Vᵀ[:m] from ``torch.linalg.svd`` of a dense (m, n) matrix, m ≤ n, on (C, H, W) images."""

    def __init__(self, matrix: torch.Tensor, shape: Sequence[int]) -> None:
        u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=True)
        self.u_mat, self.v_mat, self.shape = u.float(), vh.T.float(), tuple(shape)
        self.s = torch.cat([s, s.new_zeros(matrix.shape[1] - matrix.shape[0])]).float()

    def vt(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.v_mat

    def v(self, c: torch.Tensor) -> torch.Tensor:
        return (c @ self.v_mat.T).view(c.shape[0], *self.shape)

    def singulars(self) -> torch.Tensor:
        return self.s[None]

    def ut(self, y: torch.Tensor) -> torch.Tensor:
        out = y.new_zeros(y.shape[0], self.s.shape[0])
        out[:, :self.u_mat.shape[0]] = y @ self.u_mat
        return out

    def u(self, c: torch.Tensor) -> torch.Tensor:
        return c[:, :self.u_mat.shape[0]] @ self.u_mat.T


class DenseOperator(SVDOperator):
    """y = M vec(x) + σ_y n for a dense (m, n) matrix M on (C, H, W) images; y is (B, m)."""

    def __init__(self, matrix: torch.Tensor, shape: Sequence[int], sigma: float) -> None:
        super().__init__(GaussianNoise(sigma))
        self.register_buffer("matrix", matrix.float())
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.matrix.to(x.dtype).T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ self.matrix.to(y.dtype)).view(y.shape[0], *self.shape)

    def svd(self, channels: int = 3, dtype: torch.dtype = torch.float32) -> DenseSVD:
        return DenseSVD(self.matrix, self.shape)


class SpectralGaussian(DiffusionModel):
    """The prior N(V m, V diag(λ) Vᵀ) on (C, H, W) images: independent coefficients in A's right-singular basis V,
    with the exact denoiser D(x; σ) = V (m + λ/(λ + σ²) ⊙ (Vᵀx − m))."""

    def __init__(self, svd: DenseSVD, mean: torch.Tensor, variance: torch.Tensor) -> None:
        super().__init__(sample_shape=svd.shape)
        self.svd, self.coef_mean, self.coef_var = svd, mean.float(), variance.float()

    def tweedie(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s2 = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1) ** 2
        c = self.svd.vt(x.float())
        return self.svd.v(self.coef_mean + self.coef_var / (self.coef_var + s2) * (c - self.coef_mean))

    def sample(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Exact prior draws V (m + sqrt(λ) ⊙ z), one per generator."""
        z = randn(self.coef_mean.shape, generators)
        return self.svd.v(self.coef_mean + self.coef_var.sqrt() * z)

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(V m, V diag(λ) Vᵀ), flattened, float64."""
        v = self.svd.v_mat.double()
        return v @ self.coef_mean.double(), v @ torch.diag(self.coef_var.double()) @ v.T


def random_matrix(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A (rows, cols) matrix with orthonormal-random singular vectors and singular values spread over [0.05, 2]."""
    g = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(rows, rows, generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=torch.float64))
    s = torch.logspace(math.log10(2.0), math.log10(0.05), rows, dtype=torch.float64)
    return left @ torch.diag(s) @ right[:, :rows].T


def ddrm_rule(eta: float, eta_b: float) -> Rule:
    """DDRM eq. 8 per coefficient: null space (s = 0), σ' < σ_y/s and σ' ≥ σ_y/s."""
    def rule(s, sigma_next, sigma_y):
        a, b, g, d = (torch.zeros_like(s) for _ in range(4))
        null, noisier = s == 0, (s > 0) & (s * sigma_next >= sigma_y)
        less = (s > 0) & ~noisier
        a[null], b[null], d[null] = 1, math.sqrt(1 - eta ** 2) * sigma_next, eta * sigma_next
        k = math.sqrt(1 - eta ** 2) * sigma_next * s[less] / sigma_y if less.any() else 0
        a[less], g[less], d[less] = 1 - k, k, eta * sigma_next
        a[noisier], g[noisier] = 1 - eta_b, eta_b
        d[noisier] = (sigma_next ** 2 - eta_b ** 2 * sigma_y ** 2 / s[noisier] ** 2).clamp_min(0).sqrt()
        return a, b, g, d
    return rule


def ddnm_rule(eta: float) -> Rule:
    """DDNM (σ_y = 0: x̂0|t = x̂0 − A⁺(A x̂0 − y), DDIM noise) and DDNM+ (eq. 17–19, the authors' λ/noise split)."""
    def rule(s, sigma_next, sigma_y):
        a, b, g = torch.ones_like(s), torch.full_like(s, math.sqrt(1 - eta ** 2) * sigma_next), torch.zeros_like(s)
        d = torch.full_like(s, eta * sigma_next)
        rng = s > 0
        if sigma_y == 0:
            a[rng], g[rng] = 0, 1
            return a, b, g, d
        full = rng & (sigma_next >= sigma_y / s.clamp_min(1e-30))
        part = rng & ~full
        lam = math.sqrt(1 - eta ** 2) * s[part] * sigma_next / sigma_y
        a[full], g[full], b[full] = 0, 1, 0
        d[full] = (sigma_next ** 2 - sigma_y ** 2 / s[full] ** 2).clamp_min(0).sqrt()
        a[part], g[part], b[part] = 1 - lam, lam, 0
        return a, b, g, d
    return rule


def output_moments(model: DiffusionModel, prior_mean: torch.Tensor, prior_cov: torch.Tensor, svd: DenseSVD,
                   ybar: torch.Tensor, sigma_y: float, rule: Rule, moves: Sequence[tuple[int, int]],
                   start: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (n,) and covariance (n, n) of the final image, flattened, float64, for the prior N(μ, Σ) =
    N(``prior_mean``, ``prior_cov``) (flattened images; ``model`` gives the β schedule).

    ``moves``: (t, t') timestep pairs (t' = −1: the clean end); t' > t is a time-travel jump
    x_{t'} ~ q(x_{t'} | x_t). ``start``: "ddrm" (the paper's q(x_T | y): ȳ_i + sqrt(σ_T² − σ_y²/s_i²) z_i where
    s_i σ_T ≥ σ_y, σ_T z_i elsewhere) or "noise" (x_T ~ N(0, I)).
    """
    s, v = svd.s.double(), svd.v_mat.double()
    n = s.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    mean_c = v.T @ prior_mean.double()
    cov_v = v.T @ prior_cov.double() @ v
    ybar = ybar.double()
    t_first = moves[0][0]
    sigma_first = sigma_of(model, t_first)
    if start == "ddrm":
        take = (s > 0) & (s * sigma_first >= sigma_y)
        mean = torch.where(take, ybar, 0)
        var = torch.where(take, sigma_first ** 2 - sigma_y ** 2 / s.clamp_min(1e-30) ** 2, sigma_first ** 2)
        cov = torch.diag(var)
    else:
        mean, cov = torch.zeros(n, dtype=torch.float64), eye / abar(model, t_first)
    for t, t_next in moves:
        if t_next > t:
            cov = cov + (1 / abar(model, t_next) - 1 / abar(model, t)) * eye
            continue
        sigma, sigma_next = sigma_of(model, t), sigma_of(model, t_next)
        gain = torch.linalg.solve(cov_v + sigma ** 2 * eye, cov_v).T     # B = Σ_V (Σ_V + σ² I)⁻¹
        a, b, g, d = rule(s, sigma_next, sigma_y)
        w_mat = torch.diag(a) @ gain + torch.diag(b / sigma) @ (eye - gain)
        w_vec = (a - b / sigma) * ((eye - gain) @ mean_c) + g * ybar
        mean = w_mat @ mean + w_vec
        cov = w_mat @ cov @ w_mat.T + torch.diag(d ** 2)
    return v @ mean, v @ cov @ v.T


def whitened_errors(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor,
                    rtol: float = 1e-9) -> tuple[float, torch.Tensor]:
    """How N samples (N, n) fit N(mean, cov), pooled over the k eigen-directions of cov with eigenvalue
    > rtol·max (cov may be singular: DDRM's noiseless range space):

    * T = N ‖Λ^{-1/2} Qᵀ (x̄ − mean)‖², χ²_k distributed for correct moments (mean k, std sqrt(2k));
    * the sample variance along each direction over its eigenvalue, each ≈ 1 ± sqrt(2/(N − 1)).

    Returns (T − k)/sqrt(2k) (a z-score) and the k variance ratios.
    """
    evals, evecs = torch.linalg.eigh(cov.double())
    keep = evals > rtol * evals.max()
    white = (samples.double() - mean) @ evecs[:, keep] / evals[keep].sqrt()
    k, n = int(keep.sum()), samples.shape[0]
    t = n * white.mean(0).pow(2).sum()
    return float((t - k) / math.sqrt(2 * k)), white.var(0)


def measured(operator, model, seed=1):
    """y = A x + n for one prior draw x, and ȳ = S⁺Uᵀy (float64) for the dense operator."""
    y = operator.measure(model.sample([make_generator(seed, "x")]), [make_generator(seed, "noise")])
    svd = operator.svd()
    s = svd.s.double()
    return y, torch.where(s > 0, svd.ut(y)[0].double() / s.clamp_min(1e-30), 0)


def demo_prior(resolution: int):
    return build_model(**gauss_prior_params(resolution))
