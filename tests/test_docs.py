"""The documentation follows the code and the results.

- the benchmark pages and the README's results table are what ``bench/make_pages.py``
  writes from ``bench/results/*.json`` (rerun it after a benchmark);
- the CLI reference is what ``scripts/make_cli_reference.py`` writes from ``--help``;
- ``mkdocs build --strict`` passes (a broken link, a missing page or an API object that
  mkdocstrings cannot find fails it); offline, into a temporary folder.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_benchmark_pages_match_results() -> None:
    done = _run("bench/make_pages.py", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_cli_reference_matches_help() -> None:
    done = _run("scripts/make_cli_reference.py", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (the 'docs' extra)")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for page in ("guide/recommend", "guide/knowledge-bases", "benchmarks/compare", "reference/api"):
        assert (tmp_path / page / "index.html").is_file(), page
    api = (tmp_path / "reference" / "api" / "index.html").read_text()
    assert "recommend" in api and "Recommendation" in api
