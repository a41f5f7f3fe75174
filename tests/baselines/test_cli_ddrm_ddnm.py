"""DDRM and DDNM through the experiment CLI on the demo (16×16, 3 steps): a run, resume, and the refusal of an
operator without an SVD."""
import numpy as np
import pytest
from PIL import Image

from common.errors import ConfigError
from common.run import job
from tests.helpers.cli import compose_config

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["data.resolution=16", "data.end_id=2", "batch_size=3", "num_runs=2", "sampler.num_steps=3",
        "eval_fn_list=[psnr,ssim]", "show_progress=false", "save_traj=false"]


def run(tmp_path, overrides):
    cfg = compose_config([*TINY, f"save_dir={tmp_path}", "name=run", *overrides])
    run_dir = tmp_path / "run"
    return job.run(cfg, run_dir), run_dir


@pytest.mark.parametrize("sampler", ["ddrm", "ddnm"])
def test_run_and_resume(tmp_path, capsys, sampler):
    """The demo run writes 4 samples in batches of 3; a resumed run redraws the one removed, alone in its batch,
    and gets the same image (per-sample generators: batch-size invariance through the whole CLI)."""
    code, run_dir = run(tmp_path, [f"sampler={sampler}"])
    assert code == 0
    names = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert names == ["00000_run0000.png", "00000_run0001.png", "00001_run0000.png", "00001_run0001.png"]
    before = np.asarray(Image.open(run_dir / "samples" / "00001_run0001.png"), dtype=np.int16)
    (run_dir / "records" / "00001_run0001.json").unlink()
    code, _ = run(tmp_path, [f"sampler={sampler}"])
    assert code == 0 and "resuming: 3 of 4" in capsys.readouterr().out
    after = np.asarray(Image.open(run_dir / "samples" / "00001_run0001.png"), dtype=np.int16)
    assert np.abs(after - before).max() <= 1  # float round-off may move a pixel by one 8-bit level


def test_ddrm_on_motion_blur_is_refused_naming_what_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"'ddrm' cannot run here: .*svd.*ddnm"):
        run(tmp_path, ["sampler=ddrm", "task=motion_blur", "task.gaussian.operator.kernel_size=9"])
