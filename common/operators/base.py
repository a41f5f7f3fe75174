"""The operator seam: y = A(x) + n.

Every forward operator maps a batch of [-1, 1] images ``x`` of shape (B, C, H, W) to measurements, is
differentiable in ``x``, and owns a noise model. Operators whose definition is random (inpainting masks,
motion kernels) hold that randomness as *state*: a dict of tensors with a leading batch dimension (or 1,
broadcast over the batch), drawn per image by :meth:`Operator.draw_state` from that image's generator, and
saved with the results so a run can be repeated on exactly the same measurements.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from common.operators.noise import NoiseModel


class Operator(nn.Module):
    """Forward model A with measurement noise. Subclasses implement :meth:`forward`."""

    #: True for operators that are linear in x (they then implement ``adjoint``).
    linear: bool = False

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
    """A linear operator: adds the adjoint Aᵀ (and, where cheap, the pseudo-inverse A⁺)."""

    linear = True

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀy, defined by <A x, y> = <x, Aᵀ y>. Default: vector-Jacobian product (exact for linear A)."""
        with torch.enable_grad():
            x = torch.zeros(self.input_shape(y), device=y.device, dtype=y.dtype, requires_grad=True)
            (out,) = torch.autograd.grad(self.forward(x), x, grad_outputs=y)
        return out

    def input_shape(self, y: torch.Tensor) -> tuple[int, ...]:
        """Shape of x for a measurement batch y (needed by the autograd adjoint)."""
        raise NotImplementedError(f"{type(self).__name__} must define input_shape or adjoint")


def stack_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-image states (no batch dim) -> one batched state."""
    if not states or not states[0]:
        return {}
    return {k: torch.stack([s[k] for s in states]) for k in states[0]}
