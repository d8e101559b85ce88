"""Prompt templates, loaded as package data. Installed as ``metallmix.prompts``.

Templates are Markdown files with ``$name`` placeholders (:class:`string.Template`), so the
JSON examples inside them need no escaping.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from string import Template


@cache
def load_prompt(name: str) -> str:
    """The text of ``<name>.md`` shipped in this package."""
    return (resources.files(__name__) / f"{name}.md").read_text(encoding="utf-8")


def render_prompt(name: str, **values: object) -> str:
    """``<name>.md`` with every ``$placeholder`` filled (a missing one raises KeyError)."""
    return Template(load_prompt(name)).substitute({k: str(v) for k, v in values.items()})
