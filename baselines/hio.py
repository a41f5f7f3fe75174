r"""HIO: Fienup's hybrid input–output algorithm for Fourier phase retrieval (J. R. Fienup, "Phase retrieval
algorithms: a comparison", Applied Optics 21(15), 1982, eqs. 36–37 (HIO) and 11 (error reduction)), the classical,
non-learned row of the DAPS paper's Table 1. It calls no network: the prior is the object-domain constraint only.

The measurement is the operator's (capability ``fourier_magnitude``, :mod:`common.operators.phase_retrieval`):
y = |F P x₀₁| + n with x₀₁ = x/2 + ½ ∈ [0, 1], P zero padding by p pixels per side to N = n + 2p, F the centred
orthonormal DFT. Per sample and channel, on the N × N grid g, with the support S = the central n × n block:

    g_0 = U[0, 1) on S, 0 elsewhere                                 (one random start per restart)
    for k = 0 … K − 1:
        G  = F g_k,   G' = max(y, 0) · G/|G|                        (keep the phase, impose the measured magnitude)
        g' = Re F⁻¹ G'
        Γ  = {pixels in S with 0 ≤ g' ≤ 1}                          (support and the [0, 1] range of the image)
        HIO (k < K − E):   g_{k+1} = g' on Γ,   g_k − β g' off Γ
        ER  (last E):      g_{k+1} = g' on Γ,   0 off Γ             (error reduction: settles the HIO iterate)
    ĝ = clip(g_K, 0, 1) on S, 0 elsewhere;  x = 2 ĝ|_S − 1

R restarts run in parallel; each sample keeps, per channel (the channels are independent problems), the restart with
the smallest ‖ |F ĝ| − y ‖ (no ground truth used). Ambiguities that the magnitude cannot resolve remain: a translation
inside the padded grid (ruled out by the support when it is tight), the conjugate flip g(−r), and, per channel, their
combinations. Model calls: 0.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from common.errors import positive_int, real
from common.models.base import DiffusionModel
from common.operators.base import Operator
from common.random import rand
from common.registry import SAMPLERS
from common.sampling import Callback, DivergenceTracker, SampleResult


def centred_fft(g: torch.Tensor) -> torch.Tensor:
    """F g: the operator's centred orthonormal 2-D DFT over the last two axes."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(g, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


def centred_ifft(spectrum: torch.Tensor) -> torch.Tensor:
    """F⁻¹ of :func:`centred_fft`."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)), norm="ortho"),
                              dim=(-2, -1))


def support_mask(side: int, pad: int, device: torch.device | str) -> torch.Tensor:
    """The (N, N) bool support S: the central side × side block of the padded grid."""
    mask = torch.zeros(side + 2 * pad, side + 2 * pad, dtype=torch.bool, device=device)
    mask[pad:pad + side, pad:pad + side] = True
    return mask


def hio_iterations(g: torch.Tensor, magnitude: torch.Tensor, support: torch.Tensor, hio_steps: int, er_steps: int,
                   beta: float) -> torch.Tensor:
    """``hio_steps`` HIO then ``er_steps`` error-reduction iterations (module docstring) on padded grids g (…, N, N)
    against the measured magnitude (broadcastable); returns the last iterate."""
    magnitude = magnitude.clamp_min(0)
    for k in range(hio_steps + er_steps):
        spectrum = centred_fft(g.to(torch.complex64 if g.dtype == torch.float32 else torch.complex128))
        phase = torch.where(spectrum.abs() > 0, spectrum / spectrum.abs().clamp_min(1e-30), 1)
        g_new = centred_ifft(magnitude * phase).real
        ok = support & (g_new >= 0) & (g_new <= 1)
        g = torch.where(ok, g_new, g - beta * g_new if k < hio_steps else torch.zeros_like(g_new))
    return g


@SAMPLERS.register("hio")
class HIO:
    """HIO (module docstring): ``num_steps`` HIO iterations, then ``er_steps`` error-reduction iterations, feedback
    β (``beta``), ``restarts`` R random starts per sample."""

    requires: ClassVar[frozenset[str]] = frozenset({"fourier_magnitude"})
    spaces: ClassVar[frozenset[str]] = frozenset({"pixel"})

    def __init__(self, num_steps: int = 1000, er_steps: int = 100, beta: float = 0.9, restarts: int = 4) -> None:
        self.num_steps = positive_int("num_steps", num_steps)
        self.er_steps = positive_int("er_steps", er_steps, minimum=0)
        self.beta = real("beta", beta, 0, 1, low_open=True)
        self.restarts = positive_int("restarts", restarts, maximum=1000)

    model_calls: ClassVar[int] = 0

    @torch.no_grad()
    def sample(self, model: DiffusionModel, operator: Operator, y: torch.Tensor, *,
               generators: Sequence[torch.Generator], callback: Callback | None = None) -> SampleResult:
        """One reconstruction per generator (its restarts' starts drawn from it)."""
        channels, side = model.sample_shape[0], model.sample_shape[-1]
        pad = operator.pad
        support = support_mask(side, pad, y.device)
        grid = side + 2 * pad
        tracker = DivergenceTracker(len(generators))
        start = rand((self.restarts, channels, grid, grid), generators, device=y.device)
        g = torch.where(support, start, 0.0)                                       # (B, R, C, N, N)
        magnitude = y.float()[:, None]
        g = hio_iterations(g, magnitude, support, self.num_steps, self.er_steps, self.beta)
        g = torch.where(support, g.clamp(0, 1), 0.0)
        misfit = (centred_fft(g.to(torch.complex64)).abs() - magnitude).flatten(3).norm(dim=3)   # (B, R, C)
        best = misfit.argmin(dim=1)                                                               # (B, C)
        index = best[:, None, :, None, None].expand(-1, 1, -1, grid, grid)
        chosen = g.gather(1, index)[:, 0, :, pad:pad + side, pad:pad + side]
        x = tracker.check(2 * chosen - 1, 0)
        if callback is not None:
            callback({"step": 0, "num_steps": 1, "finite": tracker.finite, "decode": model.decode, "x_t": x,
                      "x0hat": x, "residual": misfit.gather(1, best[:, None])[:, 0].norm(dim=1)})
        return tracker.result(x)
