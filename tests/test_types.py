"""``metallmix.types``: every public result type importable from one public module.

Why: the types users annotate with lived in three layers (``agents/schemas.py``,
``tools/meta/contracts.py``, ``metallmix/verify.py``). This checks each name of
``metallmix.types.__all__`` is the very class its defining module holds, that the module
stays lazy (importing it loads none of them), and that the docs import from it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import metallmix.types as types
from metallmix.agents.schemas import Recommendation
from metallmix.tools.meta.contracts import Shortlist

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_to_its_definition() -> None:
    assert types.Recommendation is Recommendation and types.Shortlist is Shortlist
    for name in types.__all__:
        cls = getattr(types, name)
        assert isinstance(cls, type) and cls.__name__ == name
    assert issubclass(types.VerifiedRecommendation, types.Recommendation)


def test_importing_the_module_loads_no_type() -> None:
    code = (
        "import sys, metallmix.types; "
        "print('metallmix.verify' in sys.modules, 'pydantic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_the_user_docs_import_types_from_the_public_module() -> None:
    internal = ("metallmix.agents.schemas import", "metallmix.tools.meta.contracts import")
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    offending = [p.name for p in pages if any(s in p.read_text() for s in internal)]
    assert not offending, offending
    assert "from metallmix.types import" in (ROOT / "docs" / "guide" / "recommend.md").read_text()
