"""The CLI's help names values the way users read them (metallmix/cli/help_format.py).

Flags show no value, choices show their values in brackets, arguments are named in capitals
without braces; the parameters still parse as before. The Studio form (graphs' ``Context``)
has every setting the README names.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from metallmix.cli import main


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    return re.sub(r"\x1b\[[0-9;]*m", "", out)


@pytest.mark.parametrize(
    "argv",
    [
        ("recommend",),
        ("demo",),
        ("features",),
        ("kb", "info"),
        ("kb", "import-quicktune"),
        ("meta", "shortlist"),
        ("meta", "predict"),
        ("validate",),
        ("search",),
        ("bench", "lodo"),
        ("llm", "fetch"),
    ],
)
def test_no_type_placeholders_in_help(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    text = _help(capsys, *argv)
    assert "<bool>" not in text
    assert not re.search(r"<(bool|int|float|str|path|file|\w+ range)>", text), text
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage


def test_recommend_help_names_argument_and_choices(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "recommend")
    assert "Usage: metallmix recommend [OPTIONS] DATA" in text
    assert re.search(r"--compute\s+\[cpu\|gpu\|auto\]", text)
    assert re.search(r"--json\s+Print one JSON", text)  # a flag: no value after it
    assert re.search(r"--seed\s+INTEGER", text)
    assert re.search(r"--kb\s+PATH", text)


def test_flag_pair_shows_both_forms(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "meta", "predict")
    assert re.search(r"--pretrained\s+--scratch", text)


def test_compute_rejects_an_unknown_regime(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "x.npz", "--compute", "tpu"]) == 2
    assert "'tpu' is not one of 'cpu', 'gpu', 'auto'" in capsys.readouterr().err


def test_studio_context_has_every_setting_the_readme_names() -> None:
    from langgraph.runtime import Runtime

    from metallmix.graphs.configuration import Context, context_of

    names = {f.name for f in dataclasses.fields(Context)}
    assert {"llm", "kb", "seed", "n_candidates", "space", "compute", "choose", "track"} <= names
    # the form's values reach the nodes as sent (Studio's empty fields as None)
    cfg = context_of(Runtime(context=Context(compute="gpu", space="")))
    assert cfg.compute == "gpu" and cfg.space is None
