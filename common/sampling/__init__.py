"""The sampler kit: the seam every sampler implements (:mod:`.seam`), the variance-preserving view of a prior
(:mod:`.vp`), Gaussian-moment guidance (:mod:`.guidance`) and model-call
counting (:mod:`.counting`). The seam's names are importable from here: ``from common.sampling import SampleResult``."""
from common.sampling.seam import (
                                  DIVERGENCE_BOUND,
                                  Callback,
                                  DivergenceTracker,
                                  Sampler,
                                  SampleResult,
                                  build_sampler,
                                  check_combination,
                                  check_settings,
                                  first_step_finite,
                                  runs_on,
                                  unsupported,
)

__all__ = ["DIVERGENCE_BOUND", "Callback", "DivergenceTracker", "SampleResult", "Sampler", "build_sampler",
           "check_combination", "check_settings", "first_step_finite", "runs_on",
           "unsupported"]
