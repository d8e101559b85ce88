"""Run mypy over the package as it is installed (``metallmix.*``), not the raw folders.

The code folders (tools/, agents/, graphs/, prompts/) map to ``metallmix.*`` subpackages
through setuptools' package-dir, which mypy cannot follow; so this mirrors the mapping in
a throw-away tree of symlinks and checks that.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPING = {"tools": "tools", "agents": "agents", "graphs": "graphs", "prompts": "prompts"}


def main() -> int:
    tree = ROOT / "build" / "typecheck"
    shutil.rmtree(tree, ignore_errors=True)
    package = tree / "metallmix"
    package.mkdir(parents=True)
    for item in (ROOT / "metallmix").iterdir():
        if item.name in MAPPING or item.name == "__pycache__":
            continue
        (package / item.name).symlink_to(item)
    for sub, folder in MAPPING.items():
        (package / sub).symlink_to(ROOT / folder)
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "-p",
        "metallmix",
    ]
    return subprocess.call(cmd, cwd=tree)


if __name__ == "__main__":
    sys.exit(main())
