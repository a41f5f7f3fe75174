r"""The offline demo prior: a stationary Gaussian with a natural-image power spectrum, denoised in closed form.

Model. In an orthonormal colour basis U (3×3, columns = principal colour directions) the image is
x = μ + U n, where the three channels of n are independent, zero-mean, stationary Gaussian fields, diagonal in
an orthonormal 2-D transform T with power spectra following the 1/f^α law of natural images:

    P_c(f) = s_c (|f|² + f_0²)^(−α_c/2),   f = (f_y, f_x) in cycles per pixel,

with s_c set so that the per-pixel variance (1/HW) Σ_f P_c(f) equals v_c. Cov(n_c) = T^H diag(P_c) T, so the
prior covariance is Σ = (U ⊗ T^H) diag(P) (Uᵀ ⊗ T). The boundary condition picks T:

- ``periodic``: T = F, the orthonormal 2-D DFT (``torch.fft.fft2``), f = ``torch.fft.fftfreq``: the field wraps
  around, so the left edge is correlated with the right one;
- ``reflect``: T = the orthonormal 2-D DCT-II, f_k = k/(2n): the covariance of the field's even (mirror)
  extension, so edges are not tied to the opposite side. Photographs are not periodic; at 64 px the wrap-around
  costs the periodic prior's posterior mean up to 1 dB on the demo images (measured in ``configs/model/demo.yaml``).

Denoiser. For x_σ = x + σ ε, ε ~ N(0, I) (U and T orthonormal keep ε white), Tweedie's formula gives the
Wiener filter, exact at every σ and every resolution:

    D(x_σ; σ) = E[x | x_σ] = μ + U T^H [ P / (P + σ²) ⊙ T Uᵀ (x_σ − μ) ].

The parameters (μ, U, v, α) are fitted to the natural images bundled with scikit-image by
:func:`fit_spectrum`; ``configs/model/demo.yaml`` holds the fitted values.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from common.errors import MAX_RESOLUTION, SettingError, one_of, real
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


#: boundary conditions of the stationary field (module docstring)
BOUNDARIES = ("periodic", "reflect")


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix C (n×n, float64): (C v)_k = c_k Σ_i v_i cos(π k (i + ½)/n), C Cᵀ = I."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    matrix = torch.cos(torch.pi * k * (i + 0.5) / n) * (2 / n) ** 0.5
    matrix[0] /= 2 ** 0.5
    return matrix


def frequencies(n: int, boundary: str) -> torch.Tensor:
    """Frequencies (cycles per pixel, float64) of the n basis functions along one axis of T."""
    return torch.fft.fftfreq(n, dtype=torch.float64) if boundary == "periodic" else \
        torch.arange(n, dtype=torch.float64) / (2 * n)


def squared_magnitude(n_hat: torch.Tensor) -> torch.Tensor:
    """|n̂|² of transform coefficients, complex (periodic) or real (reflect)."""
    return n_hat.real ** 2 + n_hat.imag ** 2 if n_hat.is_complex() else n_hat ** 2


@MODELS.register("gaussian_demo")
class GaussianPrior(DiffusionModel):
    """Stationary Gaussian prior N(μ, Σ) on (C, H, W) images with a closed-form denoiser (see module doc)."""

    #: ``gaussian`` (the default): sampler settings for an exact score; the ADM groups run too
    task_groups = ("gaussian", "pixel", "pixel_hmc")

    def __init__(self, resolution: int | Sequence[int], mean: Sequence[float], variance: Sequence[float],
                 alpha: Sequence[float], color_basis: Sequence[Sequence[float]] | None = None,
                 f0: float = 0.01, boundary: str = "periodic") -> None:
        h, w = image_size(resolution)
        self.boundary = one_of("boundary", boundary, BOUNDARIES)
        # the channel count is the one variance and alpha agree on (else mean's): the odd one out is named
        sizes = [len(v) if isinstance(v, Sequence) and not isinstance(v, (str, bytes)) else None
                 for v in (variance, alpha)]
        mean = reals("mean", mean, sizes[0] if sizes[0] == sizes[1] and sizes[0] else None)
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
            # nearest orthonormal matrix (polar factor), so rounded config values stay exactly orthonormal; a
            # singular matrix (repeated or zero rows) has no unique one: its channels would not span the colours
            u, singular, vh = torch.linalg.svd(torch.tensor(color_basis, dtype=torch.float64))
            if not singular[-1] > 1e-6 * singular[0]:
                raise SettingError("color_basis", color_basis, f"need an invertible {channels}x{channels} matrix "
                                   f"(linearly independent rows, e.g. the fitted eigenvectors); this one is singular")
            basis = u @ vh
        radial = frequencies(h, boundary)[:, None] ** 2 + frequencies(w, boundary)[None, :] ** 2 + f0 ** 2
        alpha_t = torch.tensor(alpha, dtype=torch.float64)[:, None, None]
        spectrum = radial[None] ** (-alpha_t / 2)
        spectrum = spectrum * (torch.tensor(variance, dtype=torch.float64)[:, None, None]
                               / spectrum.mean(dim=(1, 2), keepdim=True))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(channels, 1, 1))
        self.register_buffer("basis", basis.float())
        self.register_buffer("spectrum", spectrum.float())
        if boundary == "reflect":
            self.register_buffer("dct_h", dct_matrix(h).float())
            self.register_buffer("dct_w", dct_matrix(w).float())

    # ------------------------------------------------------------------ transforms
    def _transform(self, n: torch.Tensor) -> torch.Tensor:
        """T n over the last two axes: the orthonormal DFT (complex) or DCT-II (real)."""
        if self.boundary == "periodic":
            return torch.fft.fft2(n, norm="ortho")
        return self.dct_h.to(n.dtype) @ n @ self.dct_w.to(n.dtype).T

    def _inverse(self, n_hat: torch.Tensor) -> torch.Tensor:
        """T^H n̂ (real part), the inverse of :meth:`_transform`."""
        if self.boundary == "periodic":
            return torch.fft.ifft2(n_hat, norm="ortho").real
        return self.dct_h.to(n_hat.dtype).T @ n_hat @ self.dct_w.to(n_hat.dtype)

    def _to_white(self, x: torch.Tensor) -> torch.Tensor:
        """T Uᵀ (x − μ): decorrelated colour channels in the orthonormal transform domain."""
        return self._transform(torch.einsum("dc,bdhw->bchw", self.basis, x - self.mean))

    def _from_white(self, n_hat: torch.Tensor) -> torch.Tensor:
        """μ + U T^H n̂ (inverse of :meth:`_to_white`)."""
        return torch.einsum("dc,bchw->bdhw", self.basis, self._inverse(n_hat)) + self.mean

    # ------------------------------------------------------------------ model interface
    def tweedie(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Wiener filter D(x; σ) = μ + U T^H [P/(P+σ²) ⊙ T Uᵀ(x − μ)]."""
        x = x.float()
        s2 = sigma_like(sigma, x) ** 2
        gain = self.spectrum / (self.spectrum + s2)
        return self._from_white(gain * self._to_white(x))

    def sample(self, generators: Sequence[torch.Generator], sigma: float = 0.0) -> torch.Tensor:
        """Draws from the prior (plus N(0, σ²) noise when ``sigma`` > 0), one per generator."""
        white = randn(self.sample_shape, generators, device=self.mean.device)
        x = self._from_white(self.spectrum.sqrt() * self._transform(white))
        return x if sigma == 0 else x + sigma * randn(self.sample_shape, generators, device=x.device)

    def dense_covariance(self) -> torch.Tensor:
        """Σ as a dense (D, D) float64 matrix, D = C·H·W (for tests and exact posteriors on small images)."""
        c, h, w = self.sample_shape
        eye = torch.eye(c * h * w, dtype=torch.float64, device=self.mean.device).reshape(-1, c, h, w)
        n_hat = self._transform(torch.einsum("dc,bdhw->bchw", self.basis.double(), eye))
        cols = self._inverse(self.spectrum.double() * n_hat)
        return torch.einsum("dc,bchw->bdhw", self.basis.double(), cols).reshape(c * h * w, c * h * w)


def fit_spectrum(images: torch.Tensor, f0: float = 0.01, boundary: str = "periodic") -> dict[str, list]:
    """Fit (μ, U, v, α) of :class:`GaussianPrior` with ``boundary`` to images (N, 3, H, W) in [-1, 1].

    μ: per-channel mean; U: eigenvectors of the 3×3 colour covariance; v: variance along each; α: slope of a
    least-squares line through log P̂(f) vs log(|f|² + f0²)/2 over all non-zero frequencies, P̂ the periodogram
    |T Uᵀ(x − μ)|² averaged over the images (T of the boundary condition, module docstring).
    """
    boundary = one_of("boundary", boundary, BOUNDARIES)
    n, c, h, w = images.shape
    x = images.double()
    mean = x.mean(dim=(0, 2, 3))
    centred = x - mean[None, :, None, None]
    cov = torch.einsum("nchw,ndhw->cd", centred, centred) / (n * h * w)
    evals, evecs = torch.linalg.eigh(cov)
    order = evals.argsort(descending=True)
    basis = evecs[:, order]
    white = torch.einsum("dc,ndhw->nchw", basis, centred)
    coefficients = torch.fft.fft2(white, norm="ortho") if boundary == "periodic" else \
        dct_matrix(h) @ white @ dct_matrix(w).T
    power = squared_magnitude(coefficients).mean(0)
    fy, fx = frequencies(h, boundary)[:, None], frequencies(w, boundary)[None, :]
    logr = 0.5 * (fy ** 2 + fx ** 2 + f0 ** 2).log()
    keep = (fy ** 2 + fx ** 2) > 0
    alphas = []
    for ch in range(c):
        a = torch.stack([logr[keep], torch.ones_like(logr[keep])], 1)
        sol = torch.linalg.lstsq(a, power[ch][keep].log()[:, None]).solution
        alphas.append(float(-sol[0]))
    variance = white.pow(2).mean(dim=(0, 2, 3))
    return {"mean": mean.tolist(), "color_basis": basis.tolist(), "variance": variance.tolist(), "alpha": alphas}
