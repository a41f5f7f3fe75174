r"""DPS conditioning methods: how the unconditional ancestral sample x'_{t−1} is pulled towards y.

With x̂0(x_t) the (clipped) Tweedie estimate, decoded to image space for latent models, and x'_{t−1} the
DDPM ancestral sample from x_t:

* ``vanilla``     x_{t−1} = x'_{t−1}                                            (unconditional sampling)
* ``ps``          x_{t−1} = x'_{t−1} − ζ ∇_{x_t} Σ_b d_b(x_t)                   (DPS, Chung et al. 2023, Alg. 1)
* ``projection``  x_{t−1} = P_{y_t}(x'_{t−1})                                   (linear operators, pixel space)
* ``mcg``         x_{t−1} = P_{y_t}(x'_{t−1} − ζ ∇_{x_t} Σ_b d_b(x_t))          (manifold-constrained gradient)

Distance d_b (per sample b, so samples never couple and results do not depend on the batch size):

* Gaussian noise:  d_b = ‖y_b − A(x̂0_b)‖₂, the plain, not squared, residual norm;
* Poisson noise:   d_b = ‖y_b − A(x̂0_b)‖₂ · mean_j 1/|y_{b,j}|, the DPS reference's weighting (its code divides
  the norm by |y| element-wise and averages).

The DPS reference takes the norm over the whole batch tensor, ‖y − A(x̂0)‖ with all samples together,
whose gradient couples the samples; the per-sample sum above is identical to it at batch size 1.

Projection onto the measurement set of the noised measurement y_t = sqrt(ᾱ_t) y + sqrt(1 − ᾱ_t) ε (the
reference noises y to the level t of the step, with a fresh ε every step):

    P_{y_t}(x) = x − A⁺(A x) + A⁺ y_t = x + A⁺(y_t − A x).

This is what the reference's super-resolution operator computes (with nearest upsampling standing in for
A⁺); its generic ``LinearOperator.project``, (I − AᵀA) y_t − A x, is not a projection and is not followed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from common.errors import SettingError
from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.registry import NOISES, OPERATORS

#: name -> (uses the ps gradient step, projects onto the measurement set)
CONDITIONING_METHODS: dict[str, tuple[bool, bool]] = {
    "vanilla": (False, False),
    "ps": (True, False),
    "projection": (False, True),
    "mcg": (True, True),
}


def is_poisson(operator: Operator) -> bool:
    """Whether the operator's noise model is the one registered as ``poisson``."""
    return "poisson" in NOISES and isinstance(operator.noise, NOISES.get("poisson"))


def measurement_distance(y: torch.Tensor, predicted: torch.Tensor, poisson: bool = False) -> torch.Tensor:
    """Per-sample d_b = ‖y_b − A(x̂0_b)‖₂, times mean_j 1/|y_{b,j}| for Poisson noise; shape (B,)."""
    norm = torch.linalg.vector_norm((y - predicted).flatten(1), dim=1)
    if poisson:
        norm = norm * y.abs().reciprocal().flatten(1).mean(1)
    return norm


def project(operator: Operator, x: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """P_{y_t}(x) = x + A⁺(y_t − A x): the nearest point (for an orthogonal A⁺A) with A x = y_t."""
    return x + operator.pinv(y_t - operator(x))


def _operators_with_pinv() -> list[str]:
    return [name for name in OPERATORS.names() if "pinv" in OPERATORS.get(name).capabilities]


@dataclass(frozen=True)
class ConditioningMethod:
    """A DPS conditioning method by name (see the module docstring); ``scale`` is ζ."""

    name: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in CONDITIONING_METHODS:
            raise SettingError("method", self.name, f"choose one of {', '.join(CONDITIONING_METHODS)}")
        if self.gradient and not (0 < self.scale < float("inf")):
            raise SettingError("scale", self.scale, f"need a finite step size > 0 for method {self.name!r}")

    @property
    def gradient(self) -> bool:
        """Whether the method takes the ps step −ζ ∇_{x_t} Σ_b d_b (then x̂0 needs a graph to x_t)."""
        return CONDITIONING_METHODS[self.name][0]

    @property
    def projection(self) -> bool:
        """Whether the method projects onto {x : A x = y_t} (then it needs the noised measurement y_t)."""
        return CONDITIONING_METHODS[self.name][1]

    def check_setup(self, model: DiffusionModel, operator: Operator) -> None:
        """Refuse model/operator combinations the method cannot run, before any network call."""
        if self.projection:
            if model.latent:
                raise SettingError("method", self.name, "'ps' or 'vanilla' on a latent model (projection methods "
                                   "project in pixel space)")
            if "pinv" not in operator.capabilities:
                raise SettingError("method", self.name, f"'ps' or 'vanilla' for {type(operator).__name__}, which has "
                                   f"no pseudo-inverse (operators with pinv: {', '.join(_operators_with_pinv())})")

    def check_measurement(self, operator: Operator, y: torch.Tensor) -> None:
        """Refuse a measurement the method's distance cannot use (before any network call)."""
        if self.gradient and is_poisson(operator) and bool((y == 0).any()):
            raise ValueError("the Poisson-weighted DPS distance divides by |y| and the measurement has exact "
                             "zeros; use Gaussian noise or a measurement without zeros")

    def apply(self, operator: Operator, x_next: torch.Tensor, gradient: torch.Tensor | None,
              y_t: torch.Tensor | None) -> torch.Tensor:
        """x_{t−1} from the ancestral sample x'_{t−1}, ∇_{x_t} Σ_b d_b (ps, mcg) and y_t (projection, mcg)."""
        if self.gradient:
            x_next = x_next - self.scale * gradient
        if self.projection:
            x_next = project(operator, x_next, y_t)
        return x_next
