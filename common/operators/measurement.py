"""Simulating measurements, y = A_s(x) + n: the experiment, the accuracy tool and the benchmark all measure here.

The operator state s (mask, kernel) of sample i is drawn from ``state_generators[i]`` (or given), the noise n of
sample i from ``noise_generators[i]``; nothing else is random, so y does not depend on the batch it is made in.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from common.operators.base import Operator, stack_states


def draw_states(operator: Operator, generators: Sequence[torch.Generator]) -> list[dict[str, torch.Tensor]]:
    """One operator state per generator (empty dicts for operators without a state)."""
    return [operator.draw_state(generator) for generator in generators]


def simulate(operator: Operator, x: torch.Tensor, states: Sequence[Mapping[str, torch.Tensor]],
             noise_generators: Sequence[torch.Generator]) -> torch.Tensor:
    """y_i = A_{s_i}(x_i) + n_i for the batch x (B, …); installs the stacked states in ``operator``."""
    operator.set_state(stack_states([dict(state) for state in states]))
    return operator.measure(x, noise_generators)
