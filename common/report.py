"""Deprecated spelling of :mod:`commands.report` (the cross-run report moved out of the library); kept for one
release: ``python -m common.report ...`` runs ``python -m commands.report ...``."""
from __future__ import annotations

import sys

from commands.report import main

if __name__ == "__main__":
    sys.exit(main())
