"""Diffusion Posterior Sampling (Chung et al., ICLR 2023): the DDPM ancestral loop lives in :mod:`dps.sampler`,
the reverse-process tables and respacing in :mod:`dps.ddpm`, the conditioning methods in :mod:`dps.conditioning`."""
from dps.sampler import DPS  # noqa: F401  (registers dps, latent_dps)
