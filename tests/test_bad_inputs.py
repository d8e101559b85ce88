"""The bad-input probe (issue 11), kept as a table-driven suite so every edge stays fixed.

Each case runs a command the way a new user would get it wrong and checks three things:
the exit code (2 for usage errors, non-zero otherwise), that the output ends in one
specific line of error (no traceback), and that every store the command should not have
written is byte-identical afterwards (file hashes and folder listings before and after).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from metallmix.cli import main


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def snapshot(paths: list[Path]) -> dict[str, object]:
    """Bytes of each file and the listing of each folder (to catch new -wal/-shm files)."""
    out: dict[str, object] = {}
    for path in paths:
        if path.is_dir():
            out[str(path)] = sorted((str(p.relative_to(path)), _digest(p)) for p in path.rglob("*"))
        else:
            out[str(path)] = (path.exists(), _digest(path))
    return out


@dataclass
class Outcome:
    """What one CLI call left behind."""

    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        lines = [line for line in self.err.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    code = main(argv)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_clean_error(result: Outcome, code: int | None, *needles: str) -> None:
    """Non-zero (or exactly ``code``), no traceback, one last line naming the problem."""
    assert "Traceback" not in result.err + result.out, result.err
    if code is None:
        assert result.code != 0, (result.code, result.err)
    else:
        assert result.code == code, (result.code, result.err)
    line = result.last_line
    assert line.lower().startswith("error:"), result.err
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)


# --- 1. usage errors: click's usage message and exit 2 -----------------------------------


@dataclass(frozen=True)
class UsageCase:
    argv: list[str]
    needle: str


USAGE_CASES = {
    "unknown option": UsageCase(["kb", "info", "--bogus"], "No such option: --bogus"),
    "unknown command": UsageCase(["kb", "bogus"], "No such command 'bogus'"),
    "unknown verb": UsageCase(["trian"], "No such command 'trian'"),
    "missing argument": UsageCase(["kb", "import-csv"], "Missing argument"),
    "seed not an int": UsageCase(["features", "x.npz", "--seed", "abc"], "'--seed'"),
    "recommend seed": UsageCase(["recommend", "x.npz", "--seed", "abc"], "'--seed'"),
}


@pytest.mark.parametrize("case", USAGE_CASES.values(), ids=list(USAGE_CASES))
def test_usage_error_is_click_usage_and_exit_2(
    case: UsageCase, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_cli(case.argv, capsys)
    assert_clean_error(result, 2, case.needle)
    assert result.err.startswith("Usage: metallmix")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    result = run_cli(["--version"], capsys)
    assert result.code == 0
    assert result.out.strip() == f"metallmix {version('metallmix')}"
