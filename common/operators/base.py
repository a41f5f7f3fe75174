"""The operator seam: y = A(x) + n.

Every forward operator maps a batch of [-1, 1] images ``x`` of shape (B, C, H, W) to measurements, is
differentiable in ``x``, and owns a noise model. Operators whose definition is random (inpainting masks,
motion kernels) hold that randomness as *state*: a dict of tensors with a leading batch dimension (or 1,
broadcast over the batch), drawn per image by :meth:`Operator.draw_state` from that image's generator, and
saved with the results so a run can be repeated on exactly the same measurements.

What an operator offers beyond A(x) is *declared* in its class attribute ``capabilities``, a subset of
:data:`CAPABILITIES`, so that a sampler can be refused before sampling instead of probing for methods.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from common.operators.linalg import SVD, KroneckerSVD, MatrixSVD, conjugate_gradient, gamma_like
from common.operators.noise import NoiseModel

#: What an operator can declare in ``capabilities`` (its methods then exist and are exact up to the stated solver):
#:
#: * ``"linear"``: A is linear, :meth:`LinearOperator.adjoint` gives Aᵀy (every :class:`LinearOperator`);
#: * ``"svd"``: :meth:`SVDOperator.svd` gives A = U diag(s) Vᵀ matrix-free for the installed state (a closed form);
#: * ``"pinv"``: :meth:`LinearOperator.pinv` gives the Moore–Penrose pseudo-inverse A⁺y (closed form, or
#:   conjugate gradients to the relative tolerance ``cg_tol``);
#: * ``"prox"``: :meth:`LinearOperator.prox` gives argmin_z ‖A z − y‖² + γ‖z − x‖² (closed form, or conjugate
#:   gradients).
#: * ``"fourier_magnitude"``: A(x) = |F pad(x/2 + ½)|, the centred orthonormal DFT magnitude of the [0, 1] image
#:   zero-padded by ``pad`` pixels per side (phase retrieval; classical solvers such as HIO need its support).
CAPABILITIES = ("linear", "svd", "pinv", "prox", "fourier_magnitude")


class Operator(nn.Module):
    """Forward model A with measurement noise. Subclasses implement :meth:`forward`."""

    #: what the operator offers beyond A(x), drawn from :data:`CAPABILITIES` (none for a non-linear A)
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: ``"linear" in capabilities``, derived for every class (kept for the code that reads it)
    linear: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(cls.capabilities) - set(CAPABILITIES))
        if unknown:
            raise TypeError(f"{cls.__name__}.capabilities has unknown entries {unknown}; valid: "
                            f"{', '.join(CAPABILITIES)}")
        cls.linear = "linear" in cls.capabilities

    def __init__(self, noise: NoiseModel) -> None:
        super().__init__()
        self.noise = noise
        self._state: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------- the map
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """A(x), batched and differentiable."""
        raise NotImplementedError

    def measure(self, x: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """y = A(x) + n, the noise of sample i drawn from ``generators[i]``."""
        with torch.no_grad():
            return self.noise(self.forward(x), generators)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample un-halved squared residual ||A(x) - y||^2, shape (B,) (the DAPS reference's loss)."""
        return (self.forward(x) - y).pow(2).flatten(1).sum(-1)

    def gradient(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(∇_x Σ_b ||A(x_b) - y_b||^2, per-sample loss), gradients through A only (x is detached)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            loss = self.loss(x, y)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return grad, loss.detach()

    # ---------------------------------------------------------------- the state
    def draw_state(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random definition of the operator for one image (no batch dim); empty when deterministic."""
        return {}

    def state_problems(self, state: dict[str, torch.Tensor]) -> list[str]:
        """What is wrong with the values of a loaded one-image state whose keys and shapes fit
        :meth:`draw_state` (e.g. a mask that is not 0/1); empty when it can be used. Default: nothing."""
        return []

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        """Install a batched state (each tensor (B, ...) or (1, ...)), e.g. from :func:`stack_states`."""
        self._state = {k: v.to(self._device()) for k, v in state.items()}

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self._state

    def _device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")


class LinearOperator(Operator):
    """A linear operator: the adjoint Aᵀ, the pseudo-inverse A⁺ and the data proximal map.

    :meth:`pinv` and :meth:`prox` are matrix-free conjugate-gradient solves (batched, per sample) needing only A
    and Aᵀ; subclasses with structure override them with closed forms. The solver settings are plain attributes,
    independent of the constructor: set them on an instance (``op.cg_tol = 1e-8``) or a class.
    """

    capabilities = frozenset({"linear", "pinv", "prox"})
    #: conjugate-gradient stopping rule: relative residual ‖r‖ ≤ cg_tol·‖b‖ for every sample
    cg_tol: float = 1e-6
    #: conjugate-gradient iteration cap (a warning names the samples that did not converge)
    cg_max_iter: int = 100

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀy, defined by <A x, y> = <x, Aᵀ y>. Default: vector-Jacobian product (exact for linear A)."""
        with torch.enable_grad():
            x = torch.zeros(self.input_shape(y), device=y.device, dtype=y.dtype, requires_grad=True)
            (out,) = torch.autograd.grad(self.forward(x), x, grad_outputs=y)
        return out

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        """Shape of x for a measurement batch y (needed by the autograd adjoint and the solvers)."""
        raise NotImplementedError(f"{type(self).__name__} must define input_shape or adjoint")

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """AᵀA x."""
        return self.adjoint(self.forward(x))

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A⁺y: the minimum-norm least-squares solution, by conjugate gradients on AᵀA x = Aᵀy from x = 0.

        Every iterate lies in range(Aᵀ) = null(A)^⊥, so the limit is the least-squares solution of minimum norm;
        the error after stopping is ≲ κ(A)²·``cg_tol`` relative (κ the condition number on range(Aᵀ)).
        """
        rhs = self.adjoint(y)
        return conjugate_gradient(self.normal, rhs, torch.zeros_like(rhs), tol=self.cg_tol,
                                  max_iter=self.cg_max_iter).x

    def prox(self, x: torch.Tensor, y: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
        """argmin_z ‖A z − y‖² + γ‖z − x‖², i.e. (AᵀA + γI) z = Aᵀy + γx, by conjugate gradients from z = x.

        ``gamma`` ≥ 0: a float or one value per sample (B,). γ = 0 gives x + A⁺(y − A x) (the least-squares
        solution nearest x), since the iterates stay in x + range(Aᵀ).
        """
        g = gamma_like(gamma, x)
        return conjugate_gradient(lambda z: self.normal(z) + g * z, self.adjoint(y) + g * x, x,
                                  tol=self.cg_tol, max_iter=self.cg_max_iter).x


class SVDOperator(LinearOperator):
    """A linear operator with a closed-form SVD (capability ``"svd"``): :meth:`pinv` and :meth:`prox` through it.

    A⁺y = V S⁺ Uᵀy and prox = V (S² + γ)⁻¹ (S Uᵀy + γ Vᵀx), both exact (no iteration); see
    :class:`common.operators.linalg.SVD`.
    """

    capabilities = frozenset({"linear", "svd", "pinv", "prox"})

    def svd(self, channels: int = 3, dtype: torch.dtype = torch.float32) -> SVD:  # pragma: no cover - abstract
        """A = U diag(s) Vᵀ for images with ``channels`` channels and the installed state; ``singulars()`` in
        ``dtype`` (the maps compute in their input's dtype)."""
        raise NotImplementedError

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """A⁺y = V S⁺ Uᵀy (closed form)."""
        return self.svd(y.shape[1], y.dtype).pinv(y)

    def prox(self, x: torch.Tensor, y: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
        """argmin_z ‖A z − y‖² + γ‖z − x‖² = V (S² + γ)⁻¹ (S Uᵀy + γ Vᵀx) (closed form)."""
        return self.svd(x.shape[1], x.dtype).prox(x, y, gamma)


class SeparableOperator(SVDOperator):
    """A X = M X Mᵀ per sample and channel for one fixed 1-D map M on rows and columns (square images).

    The constructor calls :meth:`set_separable_map` with M (exactly the map its forward applies); the SVD is then the
    Kronecker product of M's SVD (:class:`~common.operators.linalg.KroneckerSVD`), factored once in float64 and kept
    in non-persistent buffers (they move with the module but are not part of its ``state_dict``).
    """

    def set_separable_map(self, matrix: torch.Tensor) -> None:
        """Factor the 1-D map M (m × k, m ≤ k) once."""
        for name, factor in zip(("svd_u", "svd_s", "svd_v"), MatrixSVD.of(matrix)):
            self.register_buffer(name, factor, persistent=False)

    def svd(self, channels: int = 3, dtype: torch.dtype = torch.float32) -> KroneckerSVD:
        """A = M ⊗ M through the 1-D SVD of M."""
        return KroneckerSVD(MatrixSVD(self.svd_u, self.svd_s, self.svd_v), channels, dtype)


def stack_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-image states (no batch dim) -> one batched state."""
    if not states or not states[0]:
        return {}
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}
