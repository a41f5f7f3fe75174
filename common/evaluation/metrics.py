"""Image-quality metrics on [0, 1] images (x01 = clamp((x + 1)/2, 0, 1)), per sample, through piq.

* ``psnr``  piq.psnr, data range 1                       (higher is better)
* ``ssim``  piq.ssim, data range 1                       (higher is better)
* ``lpips`` LPIPS-VGG16 exactly as the DAPS reference computes it: piq's LPIPS with ``replace_pooling=True``
            (lower is better). Its VGG16 backbone and the LPIPS layer weights live in the torch hub cache
            (``download.sh lpips`` fetches them); they are read with ``weights_only=True``. When they are
            absent, LPIPS is reported as ``None`` after one notice; nothing is downloaded during a run.
* ``lpips_alex``, ``lpips_vgg``  the original ``lpips`` package's LPIPS v0.1 (AlexNet / VGG16 backbone; what
            most other papers report; lower is better): linear layers shipped with the package, torchvision
            backbone from the torch hub cache (``download.sh lpips``), both read with ``weights_only=True``;
            ``None`` after one notice when the backbone is absent.

Set metrics, computed once per run directory over all samples against the ground-truth images:

* ``fid``  Fréchet distance ‖μ_x − μ_y‖² + Tr(Σ_x + Σ_y − 2(Σ_x Σ_y)^½) between Gaussians fitted to the
           2048-d pool features of the FID Inception network (piq's port of the TF-FID network; weights
           ``pt_inception-2015-12-05-6726825d.pth`` in the torch hub cache, fetched by ``download.sh``),
           computed by piq.FID; biased upwards on small sets (well under ~1000 images);
* ``kid``  the unbiased MMD² with the cubic polynomial kernel on the same features (piq.KID).

Without the Inception weights both are ``None`` after one notice.

Without ground truth: ``residual`` ‖A(x̂) − y‖ and ``residual_ratio`` = residual / (σ√m) (:func:`residual_ratio`).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from common.errors import ConfigError

HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "lpips": False, "lpips_alex": False, "lpips_vgg": False}
#: what each per-sample metric is (named under every table of them)
METRIC_DESCRIPTIONS = {
    "psnr": "PSNR in dB on [0, 1] images (higher is better)",
    "ssim": "SSIM (higher is better)",
    "lpips": "LPIPS-VGG as the DAPS reference computes it: piq, replace_pooling=True (lower is better)",
    "lpips_alex": "LPIPS-Alex of the lpips package, v0.1, what most papers report (lower is better)",
    "lpips_vgg": "LPIPS-VGG of the lpips package, v0.1 (lower is better)",
}
#: metrics of a whole set of samples (not per sample)
SET_METRICS = ("fid", "kid")
METRIC_NAMES = (*HIGHER_IS_BETTER, *SET_METRICS)
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
FEW_IMAGES = 1000
#: what the normalised residual (:func:`residual_ratio`) means, stated wherever it is shown
RESIDUAL_RATIO_NOTE = ("normalised residual ‖A(x̂) − y‖ / (σ√m), σ the noise std and m the number of measured "
                       "values: ≈ 1 fits the measurement to its noise (expected value), ≪ 1 overfits the noise, "
                       "≫ 1 does not fit the data")

LPIPS_FILES = {"backbone": "vgg16-397923af.pth", "layers": "lpips_weights.pt"}
LPIPS_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
#: the lpips package's variants: metric name -> (its ``net``, the torchvision backbone file it needs)
ORIGINAL_LPIPS = {"lpips_alex": ("alex", "alexnet-owt-7be5be79.pth"), "lpips_vgg": ("vgg", "vgg16-397923af.pth")}


def residual_ratio(residual: float | None, sigma: float | None, count: int) -> float | None:
    """‖A(x̂) − y‖ / (σ √m) for ``residual`` = ‖A(x̂) − y‖ over ``count`` = m measured values with Gaussian noise of
    std σ: ‖n‖ ≈ σ√m for the noise n itself, so a sample that fits the data as well as the truth does scores ≈ 1.
    None without a residual or without Gaussian noise (σ None or 0)."""
    if residual is None or not sigma or count < 1:
        return None
    return residual / (sigma * math.sqrt(count))


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


def original_lpips_paths(name: str) -> dict[str, Path]:
    """The backbone (torch hub cache, honouring TORCH_HOME) and the linear layers (v0.1, shipped inside the
    lpips package) of the lpips package's variant ``name`` (lpips_alex, lpips_vgg)."""
    import lpips

    net, backbone = ORIGINAL_LPIPS[name]
    return {"backbone": Path(torch.hub.get_dir()) / "checkpoints" / backbone,
            "layers": Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"}


def build_original_lpips(name: str) -> torch.nn.Module | None:
    r"""The lpips package's LPIPS (Zhang et al. 2018, v0.1) with the AlexNet or VGG16 backbone (``name``:
    lpips_alex, lpips_vgg), or None with a warning when the backbone weights are absent (nothing is downloaded):

        d(x, x') = Σ_l (1 / H_l W_l) Σ_{h,w} ‖ w_l ⊙ (ŷ_l(x) − ŷ_l(x'))_{hw} ‖²,

    ŷ_l the channel-normalised activations of layer l (inputs scaled to [−1, 1], then the package's fixed shift
    and scale), w_l the learned linear weights. Backbone and linear weights are read with ``weights_only=True``."""
    import lpips

    paths = original_lpips_paths(name)
    if not paths["backbone"].is_file():
        warnings.warn(f"LPIPS weights not found ({paths['backbone']}); {name} is reported as null. "
                      f"Fetch them with `bash download.sh lpips`.", stacklevel=2)
        return None
    with warnings.catch_warnings():  # the package builds its backbone with torchvision's deprecated `pretrained`
        warnings.simplefilter("ignore")
        metric = lpips.LPIPS(net=ORIGINAL_LPIPS[name][0], pretrained=False, pnet_rand=True, verbose=False)
    features = {k.split(".", 1)[1]: v for k, v in
                torch.load(paths["backbone"], map_location="cpu", weights_only=True).items()
                if k.startswith("features.")}
    # the package splits torchvision's `features` into slices that keep the layer indices: slice{k}.{i}.weight
    metric.net.load_state_dict({k: features[k.split(".", 1)[1]] for k in metric.net.state_dict()})
    layers = torch.load(paths["layers"], map_location="cpu", weights_only=True)
    missing, unexpected = metric.load_state_dict(layers, strict=False)
    if unexpected or {f"lin{k}.model.1.weight" for k in range(len(metric.chns))} & set(missing):
        raise ValueError(f"{paths['layers']} does not hold the LPIPS linear layers of {name}")
    return metric.eval()


def inception_weight_path() -> Path:
    """Where the FID Inception weights are expected (the torch hub cache, honouring TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def fid_inception_network() -> torch.nn.Module:
    """The TF-FID InceptionV3 architecture (torchvision's, with piq's FID blocks; 1008 classes), no weights."""
    import torchvision
    from piq.feature_extractors import fid_inception as fi

    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    blocks = {"Mixed_5b": fi.FIDInceptionA(192, pool_features=32), "Mixed_5c": fi.FIDInceptionA(256, pool_features=64),
              "Mixed_5d": fi.FIDInceptionA(288, pool_features=64), "Mixed_6b": fi.FIDInceptionC(768, channels_7x7=128),
              "Mixed_6c": fi.FIDInceptionC(768, channels_7x7=160), "Mixed_6d": fi.FIDInceptionC(768, channels_7x7=160),
              "Mixed_6e": fi.FIDInceptionC(768, channels_7x7=192), "Mixed_7b": fi.FIDInceptionE1(1280),
              "Mixed_7c": fi.FIDInceptionE2(2048)}
    for name, block in blocks.items():
        setattr(net, name, block)
    return net


def build_inception() -> torch.nn.Module | None:
    """piq's FID feature extractor (2048-d pool features; inputs in [0, 1], resized to 299) with the TF-FID
    weights read safely from the torch hub cache, or None with a warning when absent (nothing is downloaded)."""
    from piq.feature_extractors import fid_inception

    path = inception_weight_path()
    if not path.is_file():
        warnings.warn(f"FID Inception weights not found ({path}); fid/kid are reported as null. "
                      f"Fetch them with `bash download.sh fid`.", stacklevel=2)
        return None
    net = fid_inception_network()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    class LocalInception(fid_inception.InceptionV3):
        """piq's extractor around ``net`` (its own constructor would download the weights)."""

        @staticmethod
        def fid_inception_v3() -> torch.nn.Module:
            return net

    return LocalInception().eval()


@torch.no_grad()
def set_metrics(names: Sequence[str], samples: Iterable[torch.Tensor], references: Iterable[torch.Tensor],
                device: torch.device | str = "cpu", extractor: torch.nn.Module | None = None
                ) -> dict[str, float | None]:
    """FID / KID of all samples against all references (batches of [-1, 1] images); None without weights.

    FID compares all samples with all references. KID (piq.KID needs equal-sized sets) is the mean over
    consecutive chunks of the samples, each as large as the reference set: one chunk per run when the
    samples come run by run in the references' image order; None when the sizes do not divide.
    Warns when fewer than ~1000 images enter: both are then biased estimates (FID strongly, upwards)."""
    import piq

    names = [n for n in names if n in SET_METRICS]
    if not names:
        return {}
    extractor = extractor if extractor is not None else build_inception()
    if extractor is None:
        return {n: None for n in names}
    extractor = extractor.to(device).eval()

    def features(batches: Iterable[torch.Tensor]) -> torch.Tensor:
        return torch.cat([extractor(to_unit(b).to(device))[0].flatten(1).double().cpu() for b in batches])

    x, y = features(samples), features(references)
    if len(x) < 2 or len(y) < 2:
        return {n: None for n in names}
    if min(len(x), len(y)) < FEW_IMAGES:
        warnings.warn(f"FID/KID from {len(x)} samples and {len(y)} reference images: estimates on fewer than "
                      f"~{FEW_IMAGES} images are biased; compare only runs of the same size", stacklevel=2)
    out: dict[str, float | None] = {}
    if "fid" in names:
        out["fid"] = float(piq.FID()(x, y))
    if "kid" in names:
        if len(x) % len(y):
            warnings.warn(f"KID needs the samples in whole runs ({len(x)} samples, {len(y)} references); "
                          f"reported as null", stacklevel=2)
            out["kid"] = None
        else:
            out["kid"] = float(torch.stack([piq.KID()(chunk, y) for chunk in x.split(len(y))]).mean())
    return out


def describe_metrics(names: Sequence[str]) -> dict[str, Any]:
    """How each metric is computed (recorded with the numbers): implementation and weight files."""
    known = {
        "psnr": "piq.psnr, data_range=1 on [0,1] images",
        "ssim": "piq.ssim, data_range=1, Gaussian window min(11, odd <= size-1)",
        "lpips": {"implementation": "piq.ContentLoss LPIPS, replace_pooling=True (as the DAPS reference)",
                  "backbone": f"torchvision vgg16 ({LPIPS_FILES['backbone']})", "layers": LPIPS_FILES["layers"],
                  "weights_present": all(p.is_file() for p in lpips_weight_paths().values())},
        **{name: {"implementation": f"lpips package LPIPS v0.1, net={net} (Zhang et al. 2018; linear layers shipped "
                                    f"with the package)", "backbone": f"torchvision {backbone}",
                  "weights_present": original_lpips_paths(name)["backbone"].is_file()}
           for name, (net, backbone) in ORIGINAL_LPIPS.items() if name in names},
        "fid": {"implementation": "piq.FID on pool3 features of piq's FID InceptionV3", "weights": INCEPTION_FILE,
                "weights_present": inception_weight_path().is_file()},
        "kid": {"implementation": "piq.KID (cubic polynomial kernel) on the FID features", "weights": INCEPTION_FILE,
                "weights_present": inception_weight_path().is_file()},
    }
    return {n: known[n] for n in names}


class Metrics:
    """The metrics named in ``eval_fn_list``: per-sample ones (``names``) computed by ``__call__`` as
    {name: tensor (B,)} (LPIPS may be None), and set metrics (``set_names``: fid, kid) computed once per
    run directory by :func:`set_metrics`."""

    def __init__(self, names: Sequence[str], device: torch.device | str = "cpu") -> None:
        unknown = [n for n in names if n not in METRIC_NAMES]
        if unknown:
            raise ConfigError(f"eval_fn_list has unknown metrics {unknown}; valid: {', '.join(METRIC_NAMES)}")
        import piq
        self.device = device
        self.set_names = [n for n in names if n in SET_METRICS]
        self.names = [n for n in names if n in HIGHER_IS_BETTER]
        self._fns: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None] = {
            "psnr": lambda a, b: piq.psnr(a, b, data_range=1.0, reduction="none"),
            # the Gaussian window shrinks (odd, <= 11) for images smaller than 11 px
            "ssim": lambda a, b: piq.ssim(a, b, data_range=1.0, reduction="none",
                                          kernel_size=min(11, (min(a.shape[-2:]) - 1) // 2 * 2 + 1)),
        }
        if "lpips" in self.names:
            lpips = build_lpips()
            self._fns["lpips"] = None if lpips is None else (lambda a, b, m=lpips.to(device): m(a, b))
        for name in ORIGINAL_LPIPS:
            if name in self.names:
                metric = build_original_lpips(name)
                self._fns[name] = None if metric is None else (
                    lambda a, b, m=metric.to(device): m(a, b, normalize=True).reshape(-1))

    def describe(self) -> dict[str, Any]:
        return describe_metrics([*self.names, *self.set_names])

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
