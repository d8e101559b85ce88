"""Leave-one-dataset-out benchmark; same as ``metallmix bench lodo`` (see its --help).

python bench/lodo.py --kb ../shared/data/quicktune/extended  # bench/results/lodo_quicktune.*
python bench/lodo.py --kb metallmix/data/kb.sqlite  # bench/results/lodo_kb.*
"""

from __future__ import annotations

import sys

from metallmix.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "lodo", *sys.argv[1:]]))
