"""Further posterior samplers, one module each (DDRM, DDNM, ΠGDM, DiffPIR, RED-diff, MMPS, PSLD, ReSample,
FPS-SMC, DCDP, HIO), registered in
``common.registry.SAMPLERS`` like :mod:`daps` and :mod:`dps`; importing the package registers them all."""
from common.registry import import_submodules

import_submodules(__name__, __path__)
