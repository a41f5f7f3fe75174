r"""The offline demo prior: a stationary Gaussian with a natural-image power spectrum, denoised in closed form.

Model. In an orthonormal colour basis U (3×3, columns = principal colour directions) the image is
x = μ + U n, where the three channels of n are independent, zero-mean, stationary (periodic) Gaussian
fields with power spectra following the 1/f^α law of natural images:

    P_c(f) = s_c (|f|² + f_0²)^(−α_c/2),   f = (f_y, f_x) in cycles per pixel (``torch.fft.fftfreq``),

with s_c set so that the per-pixel variance (1/HW) Σ_f P_c(f) equals v_c. With the orthonormal 2-D DFT F,
Cov(n_c) = F^H diag(P_c) F, so the prior covariance is Σ = (U ⊗ F^H) diag(P) (Uᵀ ⊗ F).

Denoiser. For x_σ = x + σ ε, ε ~ N(0, I) (U and F orthonormal keep ε white), Tweedie's formula gives the
Wiener filter, exact at every σ and every resolution:

    D(x_σ; σ) = E[x | x_σ] = μ + U F^H [ P / (P + σ²) ⊙ F Uᵀ (x_σ − μ) ].

The parameters (μ, U, v, α) are fitted to the natural images bundled with scikit-image by
:func:`fit_spectrum`; ``configs/model/demo.yaml`` holds the fitted values.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from common.errors import MAX_RESOLUTION, SettingError, real
from common.models.base import DiffusionModel, sigma_like
from common.random import randn
from common.registry import MODELS


def image_size(resolution: Any) -> tuple[int, int]:
    """(H, W) from ``resolution``: one side for square images or [H, W], each an integer in
    [1, :data:`~common.errors.MAX_RESOLUTION`]."""
    sides = [resolution] if isinstance(resolution, int) else resolution
    valid = f"need an integer in [1, {MAX_RESOLUTION}] (square images) or two of them [H, W]"
    if isinstance(sides, (str, bytes)) or not isinstance(sides, Sequence) or len(sides) not in (1, 2) or \
            any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= MAX_RESOLUTION for s in sides):
        raise SettingError("resolution", resolution, valid)
    return (sides[0], sides[-1])


def reals(key: str, values: Any, length: int | None = None, *, positive: bool = False) -> list[float]:
    """``values`` as a non-empty list of finite floats (of ``length`` entries, > 0 where ``positive``), else
    :class:`~common.errors.SettingError` naming ``key``."""
    what = f"{length or 'one or more'} finite numbers{' > 0' if positive else ''}"
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values or \
            (length is not None and len(values) != length):
        raise SettingError(key, values, f"need {what} (one per channel)")
    try:
        return [real(key, v, 0.0 if positive else None, low_open=positive) for v in values]
    except SettingError:
        raise SettingError(key, values, f"need {what}") from None


@MODELS.register("gaussian_demo")
class GaussianPrior(DiffusionModel):
    """Stationary Gaussian prior N(μ, Σ) on (C, H, W) images with a closed-form denoiser (see module doc)."""

    #: ``gaussian`` (the default): sampler settings for an exact score; the ADM groups run too
    task_groups = ("gaussian", "pixel", "pixel_hmc")

    def __init__(self, resolution: int | Sequence[int], mean: Sequence[float], variance: Sequence[float],
                 alpha: Sequence[float], color_basis: Sequence[Sequence[float]] | None = None,
                 f0: float = 0.01) -> None:
        h, w = image_size(resolution)
        mean = reals("mean", mean)
        channels = len(mean)
        variance = reals("variance", variance, channels, positive=True)  # v_c > 0, else P_c is not a spectrum
        alpha = reals("alpha", alpha, channels)
        # 0 < f0 keeps P_c(0) = s_c f0^(-α_c) finite; f0 <= 1 cycle/pixel (|f| <= 0.71: beyond, P_c is flat)
        f0 = real("f0", f0, 0.0, 1.0, low_open=True)
        super().__init__(sample_shape=(channels, h, w))
        basis = torch.eye(channels, dtype=torch.float64)
        if color_basis is not None:
            rows = color_basis if isinstance(color_basis, (list, tuple)) else ()
            if [len(row) if isinstance(row, (list, tuple)) else -1 for row in rows] != [channels] * channels:
                raise SettingError("color_basis", color_basis, f"need a {channels}x{channels} matrix (one row per "
                                   f"channel)")
            for row in color_basis:
                reals("color_basis", row, channels)
            # nearest orthonormal matrix (polar factor), so rounded config values stay exactly orthonormal
            u, _, vh = torch.linalg.svd(torch.tensor(color_basis, dtype=torch.float64))
            basis = u @ vh
        fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
        fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
        radial = fy ** 2 + fx ** 2 + f0 ** 2
        alpha_t = torch.tensor(alpha, dtype=torch.float64)[:, None, None]
        spectrum = radial[None] ** (-alpha_t / 2)
        spectrum = spectrum * (torch.tensor(variance, dtype=torch.float64)[:, None, None]
                               / spectrum.mean(dim=(1, 2), keepdim=True))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(channels, 1, 1))
        self.register_buffer("basis", basis.float())
        self.register_buffer("spectrum", spectrum.float())

    # ------------------------------------------------------------------ transforms
    def _to_white(self, x: torch.Tensor) -> torch.Tensor:
        """F Uᵀ (x − μ): decorrelated colour channels in the (complex) orthonormal Fourier domain."""
        n = torch.einsum("dc,bdhw->bchw", self.basis, x - self.mean)
        return torch.fft.fft2(n, norm="ortho")

    def _from_white(self, n_hat: torch.Tensor) -> torch.Tensor:
        """μ + U F^H n̂ (inverse of :meth:`_to_white`)."""
        n = torch.fft.ifft2(n_hat, norm="ortho").real
        return torch.einsum("dc,bchw->bdhw", self.basis, n) + self.mean

    # ------------------------------------------------------------------ model interface
    def tweedie(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Wiener filter D(x; σ) = μ + U F^H [P/(P+σ²) ⊙ F Uᵀ(x − μ)]."""
        x = x.float()
        s2 = sigma_like(sigma, x) ** 2
        gain = self.spectrum / (self.spectrum + s2)
        return self._from_white(gain * self._to_white(x))

    def sample(self, generators: Sequence[torch.Generator], sigma: float = 0.0) -> torch.Tensor:
        """Draws from the prior (plus N(0, σ²) noise when ``sigma`` > 0), one per generator."""
        white = randn(self.sample_shape, generators, device=self.mean.device)
        x = self._from_white(self.spectrum.sqrt() * torch.fft.fft2(white, norm="ortho"))
        return x if sigma == 0 else x + sigma * randn(self.sample_shape, generators, device=x.device)

    def dense_covariance(self) -> torch.Tensor:
        """Σ as a dense (D, D) float64 matrix, D = C·H·W (for tests and exact posteriors on small images)."""
        c, h, w = self.sample_shape
        eye = torch.eye(c * h * w, dtype=torch.float64, device=self.mean.device).reshape(-1, c, h, w)
        n_hat = torch.fft.fft2(torch.einsum("dc,bdhw->bchw", self.basis.double(), eye), norm="ortho")
        cols = torch.fft.ifft2(self.spectrum.double() * n_hat, norm="ortho").real
        return torch.einsum("dc,bchw->bdhw", self.basis.double(), cols).reshape(c * h * w, c * h * w)


def fit_spectrum(images: torch.Tensor, f0: float = 0.01) -> dict[str, list]:
    """Fit (μ, U, v, α) of :class:`GaussianPrior` to images (N, 3, H, W) in [-1, 1].

    μ: per-channel mean; U: eigenvectors of the 3×3 colour covariance; v: variance along each; α: slope of a
    least-squares line through log P̂(f) vs log(|f|² + f0²)/2 on the radially binned periodogram.
    """
    n, c, h, w = images.shape
    x = images.double()
    mean = x.mean(dim=(0, 2, 3))
    centred = x - mean[None, :, None, None]
    cov = torch.einsum("nchw,ndhw->cd", centred, centred) / (n * h * w)
    evals, evecs = torch.linalg.eigh(cov)
    order = evals.argsort(descending=True)
    basis = evecs[:, order]
    white = torch.einsum("dc,ndhw->nchw", basis, centred)
    power = torch.fft.fft2(white, norm="ortho").abs().pow(2).mean(0)
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    logr = 0.5 * (fy ** 2 + fx ** 2 + f0 ** 2).log()
    keep = (fy ** 2 + fx ** 2) > 0
    alphas = []
    for ch in range(c):
        a = torch.stack([logr[keep], torch.ones_like(logr[keep])], 1)
        sol = torch.linalg.lstsq(a, power[ch][keep].log()[:, None]).solution
        alphas.append(float(-sol[0]))
    variance = white.pow(2).mean(dim=(0, 2, 3))
    return {"mean": mean.tolist(), "color_basis": basis.tolist(), "variance": variance.tolist(), "alpha": alphas}
