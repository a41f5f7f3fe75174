"""``python -m commands.benchmark`` runs end to end on tiny CPU models and its counts are right (timings are never
asserted: they depend on the machine)."""
from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from commands import benchmark
from commands.benchmark import FlopCounter, default_out, parse_variant, peak_tflops
from common.sampling import build_sampler

SAMPLERS = ("edm_daps", "latent_edm_daps", "dps")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "table.csv"
    rows = benchmark.main(["--quick", "--device", "cpu", "--batch-sizes", "1,2", "--peak-tflops", "1", "--out",
                           str(out), "--samplers", ",".join(SAMPLERS)])
    return rows, out


@pytest.mark.slow  # the quick_run fixture: ~10 s of CPU (three samplers, two batch sizes)
def test_quick_run_writes_one_row_per_sampler_and_batch(quick_run):
    rows, out = quick_run
    with out.open() as handle:
        written = list(csv.DictReader(handle))
    assert [(r["sampler"], r["batch"]) for r in written] == [(s, b) for s in SAMPLERS for b in ("1", "2")]
    for row in written:
        assert row["status"] == "ok" and row["size"] == "tiny" and row["precision"] == "fp32"
        assert row["device"].startswith("CPU") and row["torch"] == torch.__version__ and row["git_commit"]
        for key in ("s_per_image", "s_per_image_min", "s_per_image_max", "nfe_per_s", "gflop_per_image",
                    "peak_mem_gb"):
            assert math.isfinite(float(row[key])) and float(row[key]) > 0, key
        assert float(row["s_per_image_min"]) <= float(row["s_per_image"]) <= float(row["s_per_image_max"])
        # bound = FLOP / peak (1 TFLOP/s given), fraction = bound / measured
        bound = float(row["gflop_per_image"]) / 1e3
        assert float(row["bound_s_per_image"]) == pytest.approx(bound)
        assert float(row["fraction_of_bound"]) == pytest.approx(bound / float(row["s_per_image"]))
    markdown = out.with_suffix(".md").read_text()
    assert "| sampler |" in markdown and "| dps |" in markdown and written[0]["device"] in markdown


@pytest.mark.slow
def test_counts_follow_the_full_schedules(quick_run):
    """DAPS-1K: 200 × 5 denoiser calls; LatentDAPS-100: 50 × 2, plus one decoder pass per HMC step (24);
    DPS-1000: one network call per step."""
    rows, _ = quick_run
    by_sampler = {r["sampler"]: r for r in rows}
    assert by_sampler["edm_daps"]["steps_full"] == 200
    assert by_sampler["edm_daps"]["nfe_per_image"] == 1000 and by_sampler["edm_daps"]["decoder_evals_per_image"] == 0
    assert by_sampler["latent_edm_daps"]["nfe_per_image"] == 100
    assert by_sampler["latent_edm_daps"]["decoder_evals_per_image"] == 50 * 24
    assert by_sampler["dps"]["nfe_per_image"] == 1000 and by_sampler["dps"]["steps_full"] == 1000


def test_dps_step_costs_about_two_forward_passes():
    """The backward pass to the input of a frozen network costs one more forward (no weight gradients)."""
    case = benchmark.make_case("dps", "tiny")
    model = benchmark.build_model(**benchmark.model_config(case, "tiny", "fp32"))
    x = torch.zeros(1, *model.sample_shape)
    with FlopCounter() as counter:
        model.ddpm_output(x, torch.tensor([500]))
    forward = counter.flops
    cpu = torch.device("cpu")
    prof = benchmark.profile(build_sampler(case.config["sampler"]), model, benchmark.make_problem(case, model, 1, cpu),
                             cpu)
    assert 1.9 < prof.flops_step / forward < 2.1
    assert prof.nfe_step == 1 and prof.nfe_fixed == 0 and prof.steps_full == 1000


def test_flop_counter_matches_closed_forms():
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    w = torch.randn(4, 8, 3, 3)
    with FlopCounter() as counter:
        out = F.conv2d(x, w, padding=1)
    conv = 2 * 2 * 4 * 16 * 16 * 8 * 3 * 3  # 2 · B · C_out · H · W · C_in · k²
    assert counter.flops == conv
    with FlopCounter() as counter:
        torch.autograd.grad(out.sum(), x)  # input gradient only: a transposed convolution of the same size
    assert counter.flops == conv
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    with FlopCounter() as counter:
        a @ b
    assert counter.flops == 2 * 5 * 7 * 3


def test_peaks_and_variants():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA H200", "fp32") == 494.0
    assert peak_tflops("CPU Intel(R) Xeon(R)", "fp32") is None
    assert parse_variant("bf16+channels_last+compile") == {"precision": "bf16", "channels_last": True,
                                                           "compile": True}
    with pytest.raises(ValueError, match=r"variant 'bf16\+cudagraphs'"):
        parse_variant("bf16+cudagraphs")
    with pytest.raises(ValueError, match="unknown samplers"):
        benchmark.main(["--samplers", "ddim", "--device", "cpu"])


@pytest.mark.parametrize("device, stem", [
    ("CPU Intel(R) Xeon(R) Processor (2 threads)", "CPU_Intel_R_Xeon_R_Processor"),
    ("NVIDIA H100 80GB HBM3", "NVIDIA_H100_80GB_HBM3"),
])
def test_default_file_name_has_no_spaces_or_parentheses(device, stem):
    out = default_out({"device": device, "git_commit": "0123abcd"})
    assert out.name == f"{stem}-0123abcd.csv" and out.parent.name == "benchmark"


# ------------------------------------------------------------------------------------------------ operator rows
def test_operator_rows(tmp_path, monkeypatch):
    """--operators: one row per task, method, size and batch, grouped with down_sampling first; the ratio is against
    its row of the same size and batch; skipped tasks are listed."""
    monkeypatch.setattr(benchmark, "REPEAT_SECONDS", 0.01)
    out = tmp_path / "ops.csv"
    rows = benchmark.main(["--operators", "--device", "cpu", "--tasks", "hdr,gaussian_blur,motion_blur,down_sampling",
                           "--methods", "fast,direct", "--resolutions", "16,64", "--batch-sizes", "1,2",
                           "--repeats", "2", "--out", str(out)])
    # down_sampling first, then the order given; 61-px blurs do not fit 16-px images
    expected = [(task, method, size, batch) for size, names in
                ((16, ("down_sampling", "hdr")), (64, ("down_sampling", "hdr", "gaussian_blur", "motion_blur")))
                for batch in (1, 2) for task in names
                for method in (("fast", "direct") if task.endswith("blur") else ("",))]
    assert [(r["task"], r["method"], r["resolution"], r["batch"]) for r in rows] == expected
    with out.open() as handle:
        written = list(csv.DictReader(handle))
    assert [(r["task"], r["method"], int(r["resolution"]), int(r["batch"])) for r in written] == expected
    assert all(r["device"].startswith("CPU") and r["load_average"] and r["status"] == "ok" for r in written)
    by_key = {(r["task"], r["method"], r["resolution"], r["batch"]): r for r in rows}
    for row in rows:
        assert row["status"] == "ok" and row["repeats"] == 2 and row["calls_per_repeat"] >= 1
        assert row["ms_per_call_min"] <= row["ms_per_call"] <= row["ms_per_call_max"]
        assert row["ms_per_image"] == pytest.approx(row["ms_per_call"] / row["batch"])
        baseline = by_key[("down_sampling", "", row["resolution"], row["batch"])]
        assert row["ratio_to_baseline"] == pytest.approx(row["ms_per_call"] / baseline["ms_per_call"])
        assert math.isfinite(row["peak_mem_gb"]) and row["peak_mem_gb"] > 0
    markdown = out.with_suffix(".md").read_text()
    assert "| task | method | px | batch |" in markdown and "× down_sampling" in markdown
    assert "load average" in markdown and "Skipped" in markdown and "gaussian_blur: operator.kernel_size=61" in markdown


def test_operator_options_are_checked():
    with pytest.raises(ValueError, match=r"unknown tasks or methods \['blur', 'dense'\]"):
        benchmark.main(["--operators", "--device", "cpu", "--tasks", "blur", "--methods", "dense"])


def test_cpu_peak_memory_is_the_rows_own():
    """After a reset the CPU figure forgets an earlier, larger peak (the running maximum would not)."""
    cpu = torch.device("cpu")
    if not benchmark.reset_peak_memory(cpu):
        pytest.skip("the peak RSS cannot be reset here (/proc/self/clear_refs)")
    big = torch.ones(2 ** 26)                       # 256 MiB, touched
    del big
    before, _ = benchmark.peak_memory_gb(cpu, True)
    assert benchmark.reset_peak_memory(cpu)
    after, kind = benchmark.peak_memory_gb(cpu, True)
    assert after < before - 0.2 and "in the row" in kind
