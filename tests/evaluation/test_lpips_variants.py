"""lpips_alex / lpips_vgg (the lpips package's LPIPS v0.1) against the formula computed by hand, and the
"weights missing: one notice, null" behaviour."""
from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

from common.evaluation.metrics import (
    ORIGINAL_LPIPS,
    Metrics,
    build_original_lpips,
    describe_metrics,
    original_lpips_paths,
)

#: torchvision feature indices whose ReLU outputs the package compares (relu1..relu5)
TAPS = {"lpips_alex": (1, 4, 7, 9, 11), "lpips_vgg": (3, 8, 15, 22, 29)}
SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


def backbone(name: str) -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torchvision.models.alexnet() if name == "lpips_alex" else torchvision.models.vgg16()
    return net.features.eval()


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def save_backbone(name: str) -> torch.nn.Sequential:
    """Random backbone weights stored where the metric looks (only the `features` part: all it reads)."""
    features = backbone(name)
    path = original_lpips_paths(name)["backbone"]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return features


def by_hand(name: str, features: torch.nn.Sequential, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_l mean_hw Σ_c w_lc (ŷ_l(a) − ŷ_l(b))², ŷ unit-normalised over channels; inputs 2x − 1, shifted, scaled."""
    layers = torch.load(original_lpips_paths(name)["layers"], map_location="cpu", weights_only=True)

    def taps(x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], ((2 * x - 1) - SHIFT) / SCALE
        for i, module in enumerate(features[:max(TAPS[name]) + 1]):
            h = module(h)
            if i in TAPS[name]:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = torch.zeros(a.shape[0])
    for k, (fa, fb) in enumerate(zip(taps(a), taps(b))):
        weight = layers[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total += (weight * (fa - fb) ** 2).sum(1).mean((1, 2))
    return total


@pytest.mark.parametrize("name", ["lpips_alex", pytest.param("lpips_vgg", marks=pytest.mark.slow)])
def test_matches_the_formula_and_is_zero_on_equal_images(torch_home, name):
    features = save_backbone(name)
    generator = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 32, 32, generator=generator), torch.rand(2, 3, 32, 32, generator=generator)
    metric = Metrics([name])
    with torch.no_grad():
        values = metric(a * 2 - 1, b * 2 - 1)[name]
        expected = by_hand(name, features, a, b)
        same = metric(a * 2 - 1, a * 2 - 1)[name]
    assert values.shape == (2,) and torch.allclose(values, expected, rtol=1e-4, atol=1e-6)
    assert torch.all(values > 0) and torch.allclose(same, torch.zeros(2), atol=1e-6)
    described = describe_metrics([name])[name]
    assert described["weights_present"] and ORIGINAL_LPIPS[name][0] in described["implementation"]


@pytest.mark.parametrize("name", sorted(ORIGINAL_LPIPS))
def test_missing_backbone_gives_one_notice_and_null(torch_home, name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metric = Metrics(["psnr", name])
        values = metric(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))
    notices = [str(w.message) for w in caught if "LPIPS weights not found" in str(w.message)]
    assert len(notices) == 1 and name in notices[0] and "download.sh lpips" in notices[0]
    assert values[name] is None and values["psnr"] is not None
    with pytest.warns(UserWarning, match="LPIPS weights not found"):
        assert build_original_lpips(name) is None


def test_backbone_file_is_read_with_weights_only(torch_home):
    """A pickled object that is not plain tensors is refused (weights_only=True)."""
    path = original_lpips_paths("lpips_alex")["backbone"]
    path.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.nn.Conv2d(3, 64, 11)}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        build_original_lpips("lpips_alex")
