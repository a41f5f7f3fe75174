"""FID/KID over a run directory: ≈ 0 for identical sets, > 0 otherwise, null without the Inception weights.

The identity property holds for any feature extractor, so the tests write random Inception weights (He
initialisation, so features do not vanish through the 90-odd layers) into a temporary torch hub cache; the
real TF-FID weights come from ``download.sh``.
"""
import warnings

import pytest
import torch

from common.config.validate import validate
from common.evaluation.finish import finish_run
from common.evaluation.metrics import (
    Metrics,
    build_inception,
    fid_inception_network,
    inception_weight_path,
    set_metrics,
)
from common.results.run_dir import RunDirectory

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    home = tmp_path_factory.mktemp("torch_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        torch.manual_seed(0)
        net = fid_inception_network()
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        path = inception_weight_path()
        assert str(path).startswith(str(home))
        path.parent.mkdir(parents=True)
        torch.save(net.state_dict(), path)
        yield path


def images(seed, count=2):
    return torch.rand(count, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_fid_of_identical_sets_is_zero_and_of_other_sets_is_not(random_inception):
    a, b = images(1), images(2)
    extractor = build_inception()
    with pytest.warns(UserWarning, match="fewer than ~1000 images are biased"):
        same = set_metrics(["fid", "kid"], [a[:1], a[1:]], [a], extractor=extractor)
    with pytest.warns(UserWarning, match="biased"):
        other = set_metrics(["fid", "kid"], [a], [b.flip(-1) * 0.5], extractor=extractor)
    assert other["fid"] > 1e-3 and other["kid"] > 1e-6
    # FID: exactly the same Gaussian; KID: the unbiased MMD² estimate of identical sets is only near 0
    assert abs(same["fid"]) < 1e-6 * other["fid"] and abs(same["kid"]) < 1e-2 * other["kid"]


def test_run_directory_computes_fid_once_over_all_samples(random_inception, tmp_path):
    directory = RunDirectory(tmp_path / "run")
    gt = images(3)
    for image_id in range(2):  # the samples folder is a copy of the ground-truth folder
        directory.write_inputs(image_id, gt[image_id], gt[image_id], {}, (16, 16))
        directory.write_sample(image_id, 0, gt[image_id], {"residual": 0.0, "failed_at_step": None})
    with pytest.warns(UserWarning, match="biased"):
        summary = finish_run(directory, [], set_metric_names=["fid", "kid"])
    values = summary["set_metrics"]
    assert values["num_samples"] == 2 and values["num_references"] == 2 and values["biased_small_set"]
    assert abs(values["fid"]) < 1e-6 and values["kid"] is not None
    table = (directory.root / "eval.md").read_text()
    assert "Set metrics over 2 samples against 2 ground-truth images" in table and "are biased" in table


def test_missing_weights_give_null_with_one_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert set_metrics(["fid", "kid"], [images(1)], [images(2)]) == {"fid": None, "kid": None}
    assert len(caught) == 1 and "FID Inception weights not found" in str(caught[0].message)
    assert "download.sh fid" in str(caught[0].message)


def test_fid_and_kid_are_valid_eval_fn_list_entries():
    metrics = Metrics(["psnr", "fid", "kid"])
    assert metrics.names == ["psnr"] and metrics.set_names == ["fid", "kid"]
    config = {"batch_size": 1, "num_runs": 1, "seed": 0, "gpu": 0, "name": "x", "wandb_mode": "disabled",
              "eval_fn_list": ["psnr", "fid", "kid"]}
    assert not [p for p in validate(config) if "eval_fn_list" in p]
    with pytest.raises(ValueError, match="unknown metrics \\['fud'\\]"):
        Metrics(["fud"])
