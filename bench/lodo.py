"""Leave-one-dataset-out benchmark; same as ``metallmix bench lodo`` (see its --help).

python bench/lodo.py --kb ../shared/data/quicktune/extended --seed 0 --name lodo_quicktune_seed0
python bench/lodo.py --kb metallmix/data/kb.sqlite --seed 0 --name lodo_kb_seed0
python bench/lodo_seeds.py bench/results/lodo_quicktune_seed{0,1,2}.json  # 3-seed table
"""

from __future__ import annotations

import sys

from metallmix.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "lodo", *sys.argv[1:]]))
