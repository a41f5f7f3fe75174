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

from typing import Sequence

import torch

from common.models.base import DiffusionModel, sigma_like
from common.random import randn
from common.registry import MODELS


@MODELS.register("gaussian_demo")
class GaussianPrior(DiffusionModel):
    """Stationary Gaussian prior N(μ, Σ) on (C, H, W) images with a closed-form denoiser (see module doc)."""

    def __init__(self, resolution: int | Sequence[int], mean: Sequence[float], variance: Sequence[float],
                 alpha: Sequence[float], color_basis: Sequence[Sequence[float]] | None = None,
                 f0: float = 0.01, **_: object) -> None:
        h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        channels = len(mean)
        super().__init__(sample_shape=(channels, h, w))
        if not (len(variance) == len(alpha) == channels):
            raise ValueError("mean, variance and alpha must have one value per channel")
        basis = torch.eye(channels, dtype=torch.float64)
        if color_basis is not None:
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
