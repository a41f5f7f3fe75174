"""``python -m commands.protocol FOLDER > configs/data/<name>.sha256``: the checksum list of a folder's images
(``sha256sum`` format, sorted by name; see :mod:`common.data.id_lists` for how ``data.id_list`` uses it)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from common.data.datasets import IMAGE_SUFFIXES
from common.data.id_lists import write_list


def main(argv: Sequence[str] | None = None) -> int:
    """Print the list of FOLDER's images; exit code 2 with a usage line when FOLDER is not a folder."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m commands.protocol FOLDER > configs/data/<name>.sha256", file=sys.stderr)
        return 2
    sys.stdout.write(write_list(args[0], IMAGE_SUFFIXES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
