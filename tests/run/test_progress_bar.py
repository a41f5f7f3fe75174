"""One progress bar per run: the steps of every batch count towards one total (so the ETA is the run's), the
postfix names the batch, and the bar closes after the run's last step."""
from __future__ import annotations

import torch

from common.run.progress import Progress, RunBar


def test_one_bar_counts_the_steps_of_every_batch():
    bar = RunBar(3, "rank 1/2")
    seen = []
    for _ in range(3):
        progress = Progress(2, bar=bar)
        for step in range(4):
            progress({"step": step, "num_steps": 4, "residual": torch.tensor([0.5, 1.5])})
            seen.append((bar._bar.n, bar._bar.total, bar.batch))
    assert [n for n, _, _ in seen] == list(range(1, 13)) and {total for _, total, _ in seen} == {12}
    assert [batch for _, _, batch in seen] == [1] * 4 + [2] * 4 + [3] * 4
    assert bar._bar.desc.startswith("rank 1/2") and bar._bar.postfix == "batch=3/3, residual=1"
    assert bar._bar.disable  # closed after the run's last step


def test_no_bar_when_none_is_given():
    progress = Progress(1)
    progress({"step": 0, "num_steps": 1, "residual": torch.tensor([1.0])})  # nothing to update, no error
