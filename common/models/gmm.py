r"""A Gaussian-mixture prior with a closed-form denoiser at every σ (an exact test bed for posterior samplers).

Model. K components, each a stationary Gaussian of :mod:`common.models.gaussian` around its own mean image:

    p(x) = Σ_k w_k N(x; μ_k, Σ_k),   Σ_k = (U ⊗ T^H) diag(P_k) (Uᵀ ⊗ T),

with a shared orthonormal colour basis U, the shared orthonormal 2-D transform T of the ``boundary`` condition
(the DFT for ``periodic``, the DCT-II for ``reflect``) and per-component 1/f^α power spectra
P_k (variance v_k, slope α_k per colour channel). A mean μ_k is one value per channel or a full (C, H, W)
image, so components may differ only in a region (what a box-inpainting measurement cannot see).

Denoiser. For x_σ = x + σ ε every component stays Gaussian, N(μ_k, Σ_k + σ²I), so Tweedie's formula gives

    D(x; σ) = E[x | x_σ = x] = Σ_k r_k(x, σ) m_k(x, σ),
    m_k(x, σ) = μ_k + Σ_k (Σ_k + σ²I)⁻¹ (x − μ_k)            (each component's Wiener filter),
    r_k(x, σ) = softmax_k [ log w_k + log N(x; μ_k, Σ_k + σ²I) ],
    log N(x; μ_k, Σ_k + σ²I) = −½ Σ_f |n̂_{k,f}|² / (P_{k,f} + σ²) − ½ Σ_f log(P_{k,f} + σ²) − (D/2) log 2π,

with n̂_k = T Uᵀ (x − μ_k) (for the DFT the quadratic form is real because P_k(f) = P_k(−f)). Exact at every σ.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch

from common.config.keys import check_keys
from common.errors import SettingError, real
from common.models.base import DiffusionModel, sigma_like
from common.models.gaussian import GaussianPrior, image_size, reals, squared_magnitude
from common.registry import MODELS

COMPONENT_KEYS = ("weight", "mean", "variance", "alpha")


def _mean_image(mean: Any, shape: tuple[int, int, int], index: int) -> torch.Tensor:
    """A component mean as a (C, H, W) float32 tensor: C values (constant per channel) or a full image."""
    c, h, w = shape
    key, valid = f"components[{index}].mean", f"need {c} finite values (one per channel) or a full image of shape {shape}"
    try:
        value = torch.as_tensor(mean, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):  # strings, ragged lists: not numbers
        raise SettingError(key, mean, valid) from None
    if not bool(torch.isfinite(value).all()) or (value.numel() != c and tuple(value.shape) != shape):
        raise SettingError(key, mean if value.numel() <= 16 else f"<shape {tuple(value.shape)}>", valid)
    return value.reshape(c, 1, 1).expand(c, h, w).clone() if value.numel() == c else value


@MODELS.register("gmm")
class GaussianMixturePrior(DiffusionModel):
    """p(x) = Σ_k w_k N(μ_k, Σ_k) on (C, H, W) images, Σ_k stationary (see the module docstring)."""

    #: ``gaussian`` (the default): sampler settings for an exact score; the ADM groups run too
    task_groups = ("gaussian", "pixel", "pixel_hmc")

    def __init__(self, resolution: int | Sequence[int], components: Sequence[Mapping[str, Any]],
                 color_basis: Sequence[Sequence[float]] | None = None, f0: float = 0.01,
                 boundary: str = "periodic") -> None:
        h, w = image_size(resolution)
        if isinstance(components, (str, bytes)) or not isinstance(components, Sequence) or not components:
            raise SettingError("components", components, "need a list of one or more components (each with weight, "
                               "mean, variance, alpha)")
        for i, comp in enumerate(components):
            if not isinstance(comp, Mapping):
                raise SettingError(f"components[{i}]", comp, f"need a mapping with the keys {', '.join(COMPONENT_KEYS)}")
            check_keys(comp, COMPONENT_KEYS, f"components[{i}]", required=COMPONENT_KEYS)
        weights = torch.tensor([real(f"components[{i}].weight", c["weight"], 0.0, low_open=True)
                                for i, c in enumerate(components)], dtype=torch.float64)
        if not math.isfinite(float(weights.sum())):
            raise SettingError("components", [c["weight"] for c in components], "need weights with a finite sum")
        channels = len(reals("components[0].variance", components[0]["variance"]))
        super().__init__(sample_shape=(channels, h, w))
        # each component's covariance is a zero-mean GaussianPrior; its mean is held here, as an image
        covariances = []
        for i, c in enumerate(components):
            try:
                covariances.append(GaussianPrior((h, w), mean=[0.0] * channels, variance=c["variance"],
                                                 alpha=c["alpha"], color_basis=color_basis, f0=f0,
                                                 boundary=boundary))
            except SettingError as err:  # the shared settings keep their key; a component's get its index
                raise (err if err.key in ("color_basis", "f0", "boundary") else err.at(f"components[{i}]")) from None
        self.covariances = torch.nn.ModuleList(covariances)
        self.register_buffer("means", torch.stack(
            [_mean_image(c["mean"], self.sample_shape, i) for i, c in enumerate(components)]))
        self.register_buffer("log_weights", (weights / weights.sum()).log().float())

    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights w_k (normalised), float64."""
        return self.log_weights.double().exp()

    def _logits_and_filtered(self, x: torch.Tensor, sigma: float | torch.Tensor
                             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits log w_k + log N(x; μ_k, Σ_k + σ²I) up to a shared constant, (B, K) float64, and the
        whitened Wiener outputs P_k/(P_k + σ²) ⊙ n̂_k. U and T are shared, so one transform of x
        serves every component: n̂_k = T Uᵀ x − T Uᵀ μ_k."""
        x = x.float()
        s2 = sigma_like(sigma, x).reshape(-1, 1, 1, 1) ** 2
        to_white = self.covariances[0]._to_white            # T Uᵀ (·): zero-mean components, shared U and T
        white_x, white_means = to_white(x), to_white(self.means)
        logits, filtered = [], []
        for white_mean, cov in zip(white_means, self.covariances):
            white = white_x - white_mean
            var = cov.spectrum + s2
            quad = (squared_magnitude(white) / var).flatten(1).double().sum(1)
            logits.append(-0.5 * quad - 0.5 * var.double().log().flatten(1).sum(1))
            filtered.append(cov.spectrum / var * white)
        return torch.stack(logits, 1) + self.log_weights.double(), filtered

    def responsibilities(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """r_k(x, σ) ∝ w_k N(x; μ_k, Σ_k + σ²I), shape (B, K), float64."""
        return torch.softmax(self._logits_and_filtered(x, sigma)[0], dim=1)

    def tweedie(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """D(x; σ) = Σ_k r_k μ_k + U T^H [Σ_k r_k P_k/(P_k + σ²) ⊙ n̂_k] (one inverse transform for all k)."""
        logits, filtered = self._logits_and_filtered(x, sigma)
        resp = torch.softmax(logits, dim=1).float()
        mean = torch.einsum("bk,kchw->bchw", resp, self.means)
        combined = sum(resp[:, k].reshape(-1, 1, 1, 1) * f for k, f in enumerate(filtered))
        return mean + self.covariances[0]._from_white(combined)

    def sample(self, generators: Sequence[torch.Generator], sigma: float = 0.0) -> torch.Tensor:
        """Draws from the mixture (plus N(0, σ²) noise when ``sigma`` > 0): a component k ~ w, then N(μ_k, Σ_k)."""
        out = []
        for g in generators:
            k = int(torch.multinomial(self.weights.to(g.device), 1, generator=g))
            out.append(self.means[k] + self.covariances[k].sample([g], sigma=sigma)[0].to(self.means.device))
        return torch.stack(out)

    def gaussian_components(self) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
        """[(w_k, μ_k flattened (D,), Σ_k dense (D, D))] in float64, for exact posteriors on small images."""
        return [(float(w), mean.double().reshape(-1), cov.dense_covariance())
                for w, mean, cov in zip(self.weights, self.means, self.covariances)]
