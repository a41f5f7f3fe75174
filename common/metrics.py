"""Image-quality metrics on [0, 1] images (x01 = clamp((x + 1)/2, 0, 1)), per sample, through piq.

* ``psnr``  piq.psnr, data range 1                       (higher is better)
* ``ssim``  piq.ssim, data range 1                       (higher is better)
* ``lpips`` LPIPS-VGG16 exactly as the DAPS reference computes it: piq's LPIPS with ``replace_pooling=True``
            (lower is better). Its VGG16 backbone and the LPIPS layer weights live in the torch hub cache
            (``download.sh lpips`` fetches them); they are read with ``weights_only=True``. When they are
            absent, LPIPS is reported as ``None`` after one notice; nothing is downloaded during a run.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False}
METRIC_NAMES = tuple(HIGHER_IS_BETTER)

LPIPS_FILES = {"backbone": "vgg16-397923af.pth", "layers": "lpips_weights.pt"}
LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return (x.float() * 0.5 + 0.5).clamp(0, 1)


def lpips_weight_paths() -> dict[str, Path]:
    """Where the LPIPS backbone and layer weights are expected (the torch hub cache, honouring TORCH_HOME)."""
    root = Path(torch.hub.get_dir()) / "checkpoints"
    return {k: root / v for k, v in LPIPS_FILES.items()}


def build_lpips() -> torch.nn.Module | None:
    """piq's LPIPS(replace_pooling=True) built from safely loaded local weights, or None (with a warning)."""
    import piq
    import torchvision
    from piq.perceptual import VGG16_LAYERS

    paths = lpips_weight_paths()
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        warnings.warn(f"LPIPS weights not found ({', '.join(missing)}); lpips is reported as null. "
                      f"Fetch them with `bash download.sh lpips`.", stacklevel=2)
        return None
    vgg = torchvision.models.vgg16()
    vgg.load_state_dict(torch.load(paths["backbone"], map_location="cpu", weights_only=True))
    layer_weights = torch.load(paths["layers"], map_location="cpu", weights_only=True)
    metric = piq.ContentLoss(feature_extractor=vgg.features, layers=[VGG16_LAYERS[n] for n in LPIPS_LAYERS],
                             weights=list(layer_weights), replace_pooling=True, distance="mse", reduction="none",
                             normalize_features=True)
    return metric.eval()


class Metrics:
    """The metrics named in ``eval_fn_list``, computed per sample: {name: tensor (B,)} (LPIPS may be None)."""

    def __init__(self, names: Sequence[str], device: torch.device | str = "cpu") -> None:
        unknown = [n for n in names if n not in HIGHER_IS_BETTER]
        if unknown:
            raise ValueError(f"eval_fn_list has unknown metrics {unknown}; valid: {', '.join(METRIC_NAMES)}")
        import piq
        self.names = list(names)
        self._fns: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None] = {
            "psnr": lambda a, b: piq.psnr(a, b, data_range=1.0, reduction="none"),
            # the Gaussian window shrinks (odd, <= 11) for images smaller than 11 px
            "ssim": lambda a, b: piq.ssim(a, b, data_range=1.0, reduction="none",
                                          kernel_size=min(11, (min(a.shape[-2:]) - 1) // 2 * 2 + 1)),
        }
        if "lpips" in self.names:
            lpips = build_lpips()
            self._fns["lpips"] = None if lpips is None else (lambda a, b, m=lpips.to(device): m(a, b))

    @property
    def main(self) -> str:
        """The first metric (shown on the progress bar and used for the best-of-runs column)."""
        return self.names[0]

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, reference: torch.Tensor,
                 names: Sequence[str] | None = None) -> dict[str, torch.Tensor | None]:
        """Per-sample metrics of images in [-1, 1]; NaN samples give NaN."""
        a, b = to_unit(torch.nan_to_num(sample)), to_unit(reference)
        bad = ~torch.isfinite(sample).flatten(1).all(1)
        out: dict[str, torch.Tensor | None] = {}
        for name in names or self.names:
            fn = self._fns[name]
            value = None if fn is None else fn(a, b).float().reshape(-1)
            out[name] = None if value is None else torch.where(bad.to(value.device), float("nan"), value).cpu()
        return out
