"""Missing weights stop at once with the fetch line and the override that points at a copy elsewhere; Stable
Diffusion without a local copy does not wait for the hub (offline mode, or a hub that cannot be reached)."""
from __future__ import annotations

import time

import huggingface_hub.constants
import pytest

from common.models import build_model, stable_diffusion
from common.models.checkpoints import CheckpointError
from common.operators import build_operator


def test_missing_ddpm_checkpoint_names_download_and_override(tmp_path):
    missing = tmp_path / "ffhq256.pt"
    with pytest.raises(CheckpointError) as err:
        build_model("ddpm", resolution=256, checkpoint=str(missing), model_config={"image_size": 256})
    message = str(err.value)
    assert str(missing) in message and "bash download.sh models" in message and "model.checkpoint=PATH" in message


def test_missing_blur_network_names_download_and_override(tmp_path):
    with pytest.raises(CheckpointError) as err:
        build_operator("nonlinear_blur", resolution=64, checkpoint=str(tmp_path / "GOPRO_wVAE.pth"))
    assert "download.sh models" in str(err.value) and "task.<task_group>.operator.checkpoint=PATH" in str(err.value)


@pytest.mark.parametrize("offline", [True, False])
def test_stable_diffusion_without_local_copy_fails_at_once(monkeypatch, tmp_path, offline):
    """HF_HUB_OFFLINE=1, or online mode with the hub unreachable: an empty cache is reported within seconds."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        probes = []
        monkeypatch.setattr(stable_diffusion, "hub_reachable", lambda: probes.append(1) or False)
    start = time.monotonic()
    with pytest.raises(CheckpointError) as err:
        build_model("stable_diffusion", model_id="nobody/no-such-model", precision="fp32")
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "hf download nobody/no-such-model" in message and "model.model_id=PATH" in message
    assert ("HF_HUB_OFFLINE is set" if offline else "cannot be reached") in message
    assert "unet/config.json" in message
    if not offline:
        assert probes == [1]


def test_hub_probe_is_false_for_a_closed_port(monkeypatch):
    """Nothing listens on port 9 of the loopback address: the probe says unreachable, without waiting."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    assert stable_diffusion.hub_reachable(timeout=1.0) is False
    assert time.monotonic() - start < 2
