"""Every command in the README runs when copied.

The test extracts the README's fenced ``bash`` and ``python`` blocks and runs each one from
the repository root, in document order, in one shared throw-away workspace
(``METALLMIX_HOME`` and ``MLFLOW_TRACKING_URI`` point into a temporary folder, so later
blocks see what earlier ones wrote, as a reader going down the page would, and nothing
touches the user's files). A bash block runs under ``bash -euo pipefail`` with this
interpreter's ``bin/`` first on ``PATH``; a python block runs with this interpreter.

Marker convention: an HTML comment on the line right above a fence decides how the block
is run (HTML comments do not show on GitHub or PyPI):

- no marker: a fast block; it runs in every test run, CI included;
- ``<!-- readme-test: slow (reason) -->``: it runs, marked ``slow`` and ``real`` (it uses a
  real component such as the local LLM), so CI's full run executes it and a quick
  ``-m 'not slow'`` run leaves it out;
- ``<!-- readme-test: skip (reason) -->``: never run here, with the reason as the skip
  message: installing the environment (``make test`` is what runs this file), starting a
  server that does not return, or a training budget of many minutes.

A marker without a reason, an unknown marker or a language other than bash/python/text is a
failure, so the convention cannot rot. Blocks that name ``../shared/`` skip with the reason
when the shared data is absent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from metallmix import config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*readme-test:\s*(\w+)\s*(?:\((.+)\))?\s*-->\s*$")
RUNNABLE = {"bash", "python"}
ALLOWED = RUNNABLE | {"text"}
# Seconds per block. A slow block runs the local LLM in fresh processes (cold start each time):
# ~20 s per command on an idle 2-core machine, several minutes each at load 15-20.
TIMEOUT_S = {"fast": 300, "slow": 1700}


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    mode: str  # fast | slow | skip
    reason: str


def readme_blocks(text: str) -> list[Block]:
    """The README's fenced blocks with their run mode (see the module docstring)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, language = i, m.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = MARKER.match(lines[start - 1]) if start else None
        mode, reason = ("fast", "") if marker is None else (marker.group(1), marker.group(2))
        blocks.append(
            Block(start + 1, language, "\n".join(lines[start + 1 : end]), mode, reason or "")
        )
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def test_readme_is_short_and_blocks_are_well_marked() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 220
    assert BLOCKS, "no fenced blocks found"
    for block in BLOCKS:
        where = f"README.md line {block.line}"
        assert block.language in ALLOWED, f"{where}: fence language {block.language!r}"
        assert block.mode in ("fast", "slow", "skip"), f"{where}: marker {block.mode!r}"
        if block.mode != "fast":
            assert block.reason.strip(), f"{where}: a {block.mode} marker needs a (reason)"
    # The two set-up commands come first, in this order.
    assert BLOCKS[0].code.split("\n")[0].startswith("make demo")
    assert BLOCKS[0].code.split("\n")[1].startswith("make test")
    assert any(b.mode == "fast" and b.language in RUNNABLE for b in BLOCKS), "nothing runs in CI"
    # Every marker annotates a fence: a marker left above prose would silently do nothing.
    lines = text.splitlines()
    for n, line in enumerate(lines[:-1]):
        if MARKER.match(line):
            assert FENCE.match(lines[n + 1]), f"README.md line {n + 1}: marker not above a fence"


def test_readme_image_and_links_exist() -> None:
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to missing {target}"


@pytest.fixture(scope="module")
def reader_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One workspace for the whole page: later blocks see what earlier blocks wrote."""
    tmp = tmp_path_factory.mktemp("readme")
    env = dict(os.environ)
    env["METALLMIX_HOME"] = str(tmp / "home")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
    env.pop("METALLMIX_KB", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "100"
    return env


def _params() -> list[object]:
    out: list[object] = []
    for block in BLOCKS:
        if block.language not in RUNNABLE:
            continue
        marks: list[pytest.MarkDecorator] = []
        if block.mode == "skip":
            marks.append(pytest.mark.skip(reason=f"README: {block.reason}"))
        elif block.mode == "slow":
            marks += [pytest.mark.slow, pytest.mark.real, pytest.mark.timeout(1800)]
        out.append(pytest.param(block, marks=marks, id=f"line{block.line}-{block.language}"))
    return out


@pytest.mark.parametrize("block", _params())
def test_readme_block_runs(block: Block, reader_env: dict[str, str]) -> None:
    if "../shared/" in block.code and not config.shared_data_dir().is_dir():
        pytest.skip(f"shared data not found at {config.shared_data_dir()}")
    if block.language == "bash":
        argv = ["bash", "-euo", "pipefail", "-c", block.code]
    else:
        argv = [sys.executable, "-c", block.code]
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env=reader_env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S[block.mode],
    )
    assert done.returncode == 0, (
        f"README.md line {block.line} ({block.language}) exited {done.returncode}\n"
        f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-3000:]}"
    )
