"""MkDocs hook: let mkdocstrings find ``metallmix.tools``, ``.agents`` and ``.graphs`` statically.

The installed package maps ``metallmix.tools`` to ``tools/``, ``metallmix.agents`` to
``agents/`` and so on ([tool.setuptools.package-dir] in pyproject.toml). griffe, which
mkdocstrings uses, reads sources from the file system and cannot follow that mapping, and
importing the package instead would run ``metallmix/__main__.py``. Before the build this
hook lays out the package as it is installed, as symbolic links under
``build/api-src/metallmix``, which mkdocs.yml gives griffe as its search path. Nothing is
copied and nothing is imported.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "api-src" / "metallmix"
MAPPED = ("tools", "agents", "graphs", "prompts")


# Before mkdocstrings' own on_config (priority 0): it fixes its search paths there, and a
# path that does not exist yet (a fresh clone) would be left out.
@event_priority(100)
def on_config(config: Any, **_: Any) -> Any:
    if TREE.exists():
        shutil.rmtree(TREE)
    TREE.mkdir(parents=True)
    for entry in (ROOT / "metallmix").iterdir():
        if entry.name not in ("__main__.py", "__pycache__"):
            (TREE / entry.name).symlink_to(entry)
    for name in MAPPED:
        (TREE / name).symlink_to(ROOT / name)
    return config
