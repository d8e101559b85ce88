"""Quick-Tune archive download on local files only (file:// URLs, paths): never the network."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from test_kb_quicktune import write_layout

from metallmix.cli import main
from metallmix.errors import ImportFormatError, KnowledgeBaseError
from metallmix.tools.kb.download import download_quicktune
from metallmix.tools.kb.store import SQLiteKnowledgeBase


def make_zip(tmp_path: Path, name: str = "qt_metadataset.zip") -> Path:
    tree = tmp_path / "src"
    write_layout(tree / "qt_metadataset" / "tiny")
    archive = tmp_path / name
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(tree).as_posix())
    return archive


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_from_file_url_with_checksum(tmp_path: Path) -> None:
    archive = make_zip(tmp_path)
    dest = tmp_path / "dest"
    result = download_quicktune("tiny", dest, archive.as_uri(), sha(archive))
    assert result.path == dest / "tiny" and not result.reused
    assert result.sha256 == sha(archive) and result.bytes == archive.stat().st_size
    assert (dest / "tiny" / "table.csv").is_file()
    assert [p.name for p in dest.iterdir()] == ["tiny"]  # temp folders cleaned up
    again = download_quicktune("tiny", dest, archive.as_uri())
    assert again.reused and again.path == result.path


def test_download_from_tar_path(tmp_path: Path) -> None:
    tree = tmp_path / "src"
    write_layout(tree / "tiny")
    archive = tmp_path / "qt.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tree / "tiny", arcname="tiny")
    result = download_quicktune("tiny", tmp_path / "dest", str(archive))
    assert (result.path / "curves" / "perf.json").is_file()


def test_bad_checksum_leaves_nothing(tmp_path: Path) -> None:
    archive = make_zip(tmp_path)
    dest = tmp_path / "dest"
    with pytest.raises(KnowledgeBaseError, match="does not match the expected 00ff"):
        download_quicktune("tiny", dest, archive.as_uri(), "00ff")
    assert list(dest.iterdir()) == []


def test_errors(tmp_path: Path) -> None:
    archive = make_zip(tmp_path)
    with pytest.raises(ImportFormatError, match=r"no Quick-Tune version 'extended'.*tiny"):
        download_quicktune("extended", tmp_path / "d1", archive.as_uri())
    with pytest.raises(KnowledgeBaseError, match="does not exist"):
        download_quicktune("tiny", tmp_path / "d2", str(tmp_path / "nope.zip"))
    # Refused connection on the loopback interface: how "offline" looks, without a network.
    with pytest.raises(KnowledgeBaseError, match=r"cannot download .*offline.*--url file://"):
        download_quicktune("tiny", tmp_path / "d3", "http://127.0.0.1:9/qt_metadataset.zip")
    (tmp_path / "plain.zip").write_text("not an archive")
    with pytest.raises(ImportFormatError, match="neither a zip nor a tar"):
        download_quicktune("tiny", tmp_path / "d4", str(tmp_path / "plain.zip"))
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(ImportFormatError, match="would unpack outside"):
        download_quicktune("tiny", tmp_path / "d5", str(evil))
    assert not (tmp_path / "escape.txt").exists()


def test_damaged_layout_is_not_installed(tmp_path: Path) -> None:
    tree = tmp_path / "src"
    root = write_layout(tree / "tiny")
    (root / "curves" / "perf.json").write_text("{broken")
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(tree).as_posix())
    dest = tmp_path / "dest"
    with pytest.raises(ImportFormatError, match=r"perf\.json is not valid JSON"):
        download_quicktune("tiny", dest, str(archive))
    assert list(dest.iterdir()) == []


def test_cli_download_and_import(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    archive = make_zip(tmp_path)
    kb = tmp_path / "kb.sqlite"
    args = ["kb", "download-quicktune", "--version", "tiny", "--dest", str(tmp_path / "dest")]
    assert main([*args, "--url", archive.as_uri(), "--import", "--kb", str(kb), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reused"] is False and summary["sha256"] == sha(archive)
    assert summary["inserted"] == 3
    assert len(SQLiteKnowledgeBase(kb)) == 3
    assert main([*args, "--url", "http://127.0.0.1:9/x.zip", "--force"]) == 2
    assert "error: cannot download" in capsys.readouterr().err


def test_tar_with_link_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("tiny/table.csv")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(ImportFormatError, match="link or device"):
        download_quicktune("tiny", tmp_path / "dest", str(archive))
