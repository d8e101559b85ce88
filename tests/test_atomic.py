"""The one atomic-write helper: a failed write leaves the old file and no temp file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from metallmix.atomic import atomic_dir, atomic_path, write_bytes, write_text


def test_write_text_replaces_whole_files_with_plain_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    assert write_text(target, "one") == target
    write_text(target, "two")
    assert target.read_text() == "two"
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~_umask()
    write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target, suffix=".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_atomic_dir_replaces_a_folder_or_leaves_it(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    with atomic_dir(folder) as tmp:
        (tmp / "a.json").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(folder) as tmp:
        (tmp / "b.json").write_text("2")
        raise RuntimeError("crash")
    assert [p.name for p in folder.iterdir()] == ["a.json"]
    with atomic_dir(folder) as tmp:
        (tmp / "c.json").write_text("3")
    assert [p.name for p in folder.iterdir()] == ["c.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_recorded_files_round_trip_and_refuse_what_we_did_not_write(tmp_path: Path) -> None:
    """What :func:`write_recorded` wrote reads back; a file beside it that we did not
    write, a folder others can write into, or a file another user owns is refused."""
    from metallmix.atomic import read_recorded, write_recorded

    folder = tmp_path / "state"
    ours = write_recorded(folder / "a.bin", b"ours")
    write_recorded(folder / "b.bin", b"also ours")  # the manifest keeps both entries
    assert read_recorded(ours) == (b"ours", None)
    assert read_recorded(folder / "b.bin") == (b"also ours", None)
    assert os.stat(ours).st_mode & 0o777 == 0o600
    (folder / "c.bin").write_bytes(b"planted")
    data, why = read_recorded(folder / "c.bin")
    assert data is None and "not in" in str(why)
    folder.chmod(0o777)
    data, why = read_recorded(ours)
    assert data is None and "writable by group or others" in str(why)
    folder.chmod(0o700)
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root: the other-owner case runs as root")
    os.chown(ours, 12345, -1)
    data, why = read_recorded(ours)
    assert data is None and "owned by uid 12345" in str(why)
