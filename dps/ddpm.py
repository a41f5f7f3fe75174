r"""The discrete DDPM reverse process that DPS walks (Ho et al. 2020; Nichol & Dhariwal 2021), as pure tensors.

For β_1..β_T, α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s, ᾱ_{-1} = 1 (0-based indices t = 0 … T−1):

* x̂0 from the ε-prediction:   x̂0(x_t) = sqrt(1/ᾱ_t) x_t − sqrt(1/ᾱ_t − 1) ε̂(x_t, t)
* posterior q(x_{t−1} | x_t, x0) = N(μ̃_t, β̃_t I):
      μ̃_t = β_t sqrt(ᾱ_{t−1}) / (1 − ᾱ_t) · x0 + (1 − ᾱ_{t−1}) sqrt(α_t) / (1 − ᾱ_t) · x_t,
      β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)
* variance of p(x_{t−1} | x_t):
      learned range (ADM, ``v`` in [−1, 1]):  log σ_t² = f log β_t + (1 − f) log β̃_t^clip,  f = (v + 1)/2,
          with log β̃^clip the posterior log-variance whose t = 0 entry (log 0) is replaced by that of t = 1;
      fixed (models without learned variance): log σ_t² = log β̃_t, as the DPS reference's ``fixed_small``
          (no clipping; only ever used for t > 0 since no noise is added at t = 0).

Respacing (guided-diffusion's ``space_timesteps``): keep the original steps k_0 < k_1 < … < k_{N−1} and use
the process whose cumulative products are ᾱ at the kept steps, i.e. β'_i = 1 − ᾱ_{k_i}/ᾱ_{k_{i−1}}; the
network is still called with the original index k_i. All tables are float64; a coefficient is cast to
float32 when it meets a tensor, as in the reference.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """Original step indices kept by a respacing spec (guided-diffusion semantics), sorted ascending.

    ``section_counts``: an int N or "N" (N evenly spaced steps), "a,b,c" / [a, b, c] (split the T steps into
    equal sections, taking a, b, c evenly spaced steps from each, the first T mod len sections one step
    longer), or "ddimN" (the fixed integer stride giving exactly N steps, starting at 0).
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            if not spec[4:].isdigit() or int(spec[4:]) < 1:
                raise ValueError(f"timestep_respacing {section_counts!r}: 'ddimN' needs an integer N >= 1")
            desired = int(spec[4:])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"timestep_respacing {section_counts!r}: no integer stride gives exactly {desired} "
                             f"of {num_timesteps} steps")
        if not all(c.strip().lstrip("-").isdigit() for c in spec.split(",")):
            raise ValueError(f"timestep_respacing {section_counts!r}: need N, 'a,b,c' (integers) or 'ddimN'")
        counts = [int(c) for c in spec.split(",")]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"timestep_respacing {section_counts!r}: step counts must be positive integers")
    size_per, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"timestep_respacing {section_counts!r}: cannot take {count} steps from a section of "
                             f"{size} of the model's {num_timesteps} steps")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0  # accumulated, not j * stride: the reference's rounding of .5 cases depends on it
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


class DDPMSchedule:
    """Tables of a (possibly respaced) DDPM over float64 ``betas``; ``timesteps[i]`` is step i's original index."""

    def __init__(self, base_betas: torch.Tensor, kept: Sequence[int] | None = None) -> None:
        base_betas = base_betas.detach().double().cpu()
        if base_betas.ndim != 1 or not bool(((base_betas > 0) & (base_betas <= 1)).all()):
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        kept = list(range(len(base_betas))) if kept is None else sorted(kept)
        abar_base = torch.cumprod(1 - base_betas, 0)[kept]
        abar_prev = torch.cat([abar_base.new_ones(1), abar_base[:-1]])
        self.timesteps = torch.tensor(kept, dtype=torch.int64)
        self.betas = 1 - abar_base / abar_prev
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)
        self.alphas_cumprod_prev = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod[:-1]])
        abar, prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = abar.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - abar).sqrt()
        self.sqrt_recip_alphas_cumprod = (1 / abar).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1 / abar - 1).sqrt()
        self.posterior_variance = self.betas * (1 - prev) / (1 - abar)
        self.posterior_log_variance = self.posterior_variance.log()
        # the t = 0 entry (variance 0) is replaced by the t = 1 one; with a single step there is no t = 1
        # and no noise at t = 0 either, so β_0 stands in (never used)
        first = self.posterior_variance[1:2] if len(kept) > 1 else self.betas[:1]
        self.posterior_log_variance_clipped = torch.cat([first, self.posterior_variance[1:]]).log()
        self.posterior_mean_coef1 = self.betas * prev.sqrt() / (1 - abar)
        self.posterior_mean_coef2 = (1 - prev) * (1 - self.betas).sqrt() / (1 - abar)
        self.log_betas = self.betas.log()

    @classmethod
    def respaced(cls, base_betas: torch.Tensor, spec: int | str | Sequence[int]) -> "DDPMSchedule":
        """The schedule keeping the steps of ``space_timesteps(len(base_betas), spec)``."""
        return cls(base_betas, space_timesteps(len(base_betas), spec))

    def __len__(self) -> int:
        return len(self.betas)

    def to(self, device: torch.device | str) -> "DDPMSchedule":
        """A copy whose tables (and ``timesteps``) live on ``device``: per-step lookups then stay there."""
        moved = copy.copy(self)
        moved.__dict__.update({k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)})
        return moved

    @staticmethod
    def at(table: torch.Tensor, i: int, like: torch.Tensor) -> torch.Tensor:
        """table[i] as a float32 0-dim tensor on ``like``'s device (the reference's float64 → float32 cast)."""
        return table[i].float().to(like.device)

    def pred_xstart(self, x_t: torch.Tensor, i: int, eps: torch.Tensor) -> torch.Tensor:
        """x̂0 = sqrt(1/ᾱ_t) x_t − sqrt(1/ᾱ_t − 1) ε̂."""
        return self.at(self.sqrt_recip_alphas_cumprod, i, x_t) * x_t - self.at(self.sqrt_recipm1_alphas_cumprod,
                                                                                i, eps) * eps

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, i: int) -> torch.Tensor:
        """μ̃_t(x_t, x0), the mean of q(x_{t−1} | x_t, x0)."""
        return self.at(self.posterior_mean_coef1, i, x0) * x0 + self.at(self.posterior_mean_coef2, i, x_t) * x_t

    def log_variance(self, i: int, var_values: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """log σ_t² of p(x_{t−1} | x_t): learned range when ``var_values`` is given, else log β̃_t."""
        if var_values is None:
            return self.at(self.posterior_log_variance, i, like).expand_as(like)
        frac = (var_values + 1.0) / 2.0
        return frac * self.at(self.log_betas, i, like) + (1 - frac) * self.at(self.posterior_log_variance_clipped,
                                                                              i, like)

    def q_sample(self, x0: torch.Tensor, i: int, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε."""
        return (self.at(self.sqrt_alphas_cumprod, i, x0) * x0
                + self.at(self.sqrt_one_minus_alphas_cumprod, i, noise) * noise)

    def sigma(self, i: int) -> float:
        """The equivalent VE noise level sqrt(1/ᾱ_t − 1) of step i (x_t/sqrt(ᾱ_t) = x0 + σ ε)."""
        return float(self.sqrt_recipm1_alphas_cumprod[i])
