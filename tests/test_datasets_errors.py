"""Every kind of bad dataset gets a DatasetError naming the file/row and the fix."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metallmix.errors import DatasetError, MetaLLMiXError
from metallmix.tools.datasets import load_dataset


def images(n: int) -> np.ndarray:
    return np.zeros((n, 4, 4), dtype=np.uint8)


def npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), 9, dtype=np.uint8)).save(path)
    return path


def manifest(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_dataset_error_is_a_user_error() -> None:
    assert issubclass(DatasetError, MetaLLMiXError)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nothere\.npz: no such file or directory"):
        load_dataset(tmp_path / "nothere.npz")


def test_unsupported_format(tmp_path: Path) -> None:
    path = tmp_path / "data.h5"
    path.write_bytes(b"\x89HDF")
    with pytest.raises(DatasetError, match=r"unsupported dataset format '\.h5'.*\.npz"):
        load_dataset(path)


def test_json_is_not_a_dataset(tmp_path: Path) -> None:
    path = tmp_path / "card.json"
    path.write_text("{}")
    with pytest.raises(DatasetError, match="holds no images"):
        load_dataset(path)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset(tmp_path / "empty")


def test_empty_npz(tmp_path: Path) -> None:
    path = npz(
        tmp_path / "e.npz",
        train_images=np.zeros((0, 4, 4), np.uint8),
        train_labels=np.zeros(0, np.int64),
    )
    with pytest.raises(DatasetError, match="no training images"):
        load_dataset(path)


def test_one_class_only(tmp_path: Path) -> None:
    for i in range(3):
        png(tmp_path / "one" / "cats" / f"{i}.png")
    with pytest.raises(DatasetError, match=r"one class only \('cats'\).*at least two"):
        load_dataset(tmp_path / "one")
    path = npz(tmp_path / "one.npz", train_images=images(5), train_labels=np.zeros(5, int))
    with pytest.raises(DatasetError, match="one class only"):
        load_dataset(path)


def test_image_outside_class_folder(tmp_path: Path) -> None:
    png(tmp_path / "d" / "a" / "1.png")
    png(tmp_path / "d" / "b" / "1.png")
    png(tmp_path / "d" / "stray.png")
    with pytest.raises(DatasetError, match=r"stray\.png: image lies directly in"):
        load_dataset(tmp_path / "d")


def test_split_folders_without_train(tmp_path: Path) -> None:
    png(tmp_path / "d" / "val" / "a" / "1.png")
    png(tmp_path / "d" / "test" / "b" / "1.png")
    with pytest.raises(DatasetError, match="no train/ folder"):
        load_dataset(tmp_path / "d")


def test_class_only_in_test_folder(tmp_path: Path) -> None:
    png(tmp_path / "d" / "train" / "a" / "1.png")
    png(tmp_path / "d" / "train" / "b" / "1.png")
    png(tmp_path / "d" / "test" / "c" / "1.png")
    with pytest.raises(DatasetError, match=r"class 'c' has images in test/ but none in train/"):
        load_dataset(tmp_path / "d")


def test_negative_labels(tmp_path: Path) -> None:
    path = npz(tmp_path / "n.npz", train_images=images(3), train_labels=np.array([0, -1, 1]))
    with pytest.raises(DatasetError, match=r"'train_labels'\[1\] = -1 is negative"):
        load_dataset(path)


def test_labels_out_of_range_of_sidecar_classes(tmp_path: Path) -> None:
    path = npz(tmp_path / "r.npz", train_images=images(3), train_labels=np.array([0, 1, 2]))
    (tmp_path / "r.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    with pytest.raises(DatasetError, match=r"'train_labels'\[2\] = 2 is out of range.*2 classes"):
        load_dataset(path)


def test_multilabel_targets(tmp_path: Path) -> None:
    path = npz(tmp_path / "m.npz", train_images=images(3), train_labels=np.ones((3, 2), int))
    with pytest.raises(DatasetError, match=r"shape \(3, 2\).*multi-label"):
        load_dataset(path)


def test_non_integer_labels(tmp_path: Path) -> None:
    path = npz(tmp_path / "f.npz", train_images=images(2), train_labels=np.array([0.5, 1.0]))
    with pytest.raises(DatasetError, match="integer class indices"):
        load_dataset(path)


def test_mismatched_array_lengths(tmp_path: Path) -> None:
    path = npz(tmp_path / "l.npz", train_images=images(4), train_labels=np.array([0, 1, 0]))
    with pytest.raises(DatasetError, match="3 labels but 'train_images' has 4 images"):
        load_dataset(path)


def test_missing_npz_keys(tmp_path: Path) -> None:
    path = npz(tmp_path / "k.npz", x=images(2), y=np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"missing key 'train_images'.*found \['x', 'y'\]"):
        load_dataset(path)
    path = npz(
        tmp_path / "k2.npz",
        train_images=images(2),
        train_labels=np.array([0, 1]),
        val_images=images(2),
    )
    with pytest.raises(DatasetError, match="missing key 'val_labels'"):
        load_dataset(path)


def test_bad_image_array_shape(tmp_path: Path) -> None:
    path = npz(tmp_path / "s.npz", train_images=np.zeros((2, 4)), train_labels=np.array([0, 1]))
    with pytest.raises(DatasetError, match=r"has shape \(2, 4\); expected N x H x W"):
        load_dataset(path)


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is no archive")
    with pytest.raises(DatasetError, match=r"junk\.npz: not a \.npz archive \(18 bytes, not a"):
        load_dataset(path)


def test_zero_byte_npz_is_an_input_error_not_an_interrupt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # numpy raises EOFError on an empty file, which click turns into Abort: it read as Ctrl-C
    # (exit 130) before the loader checked the file was a zip.
    from metallmix.cli import main

    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty\.npz: not a \.npz archive \(an empty file\)"):
        load_dataset(path)
    assert main(["features", str(path)]) == 2
    assert "an empty file" in capsys.readouterr().err.strip().splitlines()[-1]


def test_an_eof_error_is_a_failure_not_a_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from metallmix.cli import main

    def eof(*args: object, **kwargs: object) -> None:
        raise EOFError("No data left in file")

    monkeypatch.setattr("metallmix.cli.features.load_dataset", eof)
    assert main(["features", str(tmp_path / "x.npz")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "error: unexpected end of file (No data left in file)"


def test_nan_pixel_rows_are_skipped_then_fatal(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
    data[3, 2, 2] = np.nan
    path = npz(tmp_path / "n.npz", train_images=data, train_labels=np.array([0, 1] * 20))
    split = load_dataset(path, val_fraction=0, test_fraction=0).split("train")
    assert len(list(split.iter_images())) == 39  # never cast to a black image
    assert len(split.skipped) == 1 and "[3]: 1 NaN or infinite" in split.skipped[0]
    data[:10, 0, 0] = np.inf
    path = npz(tmp_path / "n.npz", train_images=data, train_labels=np.array([0, 1] * 20))
    split = load_dataset(path, val_fraction=0, test_fraction=0).split("train")
    with pytest.raises(DatasetError, match=r"unreadable \(more than 5%\).*nan_to_num"):
        list(split.iter_images())


def test_truncated_npz_member(tmp_path: Path) -> None:
    labels = np.array([0, 1] * 50)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (100, 32, 32), dtype=np.uint8)
    path = tmp_path / "t.npz"
    np.savez(path, train_images=data, train_labels=labels)  # stored, not compressed
    raw = bytearray(path.read_bytes())
    start = raw.find(b"train_images.npy")
    raw[start + 60_000 : start + 60_200] = b"\0" * 200  # corrupt pixels: CRC fails
    path.write_bytes(bytes(raw))
    ds = load_dataset(path, val_fraction=0, test_fraction=0)
    with pytest.raises(DatasetError, match=r"t\.npz: 'train_images' cannot be read.*damaged"):
        list(ds.split("train").iter_images())


def test_csv_missing_column(tmp_path: Path) -> None:
    path = manifest(tmp_path / "m.csv", ["file", "label"], [["a.png", "x"]])
    with pytest.raises(DatasetError, match=r"missing column\(s\) path.*path,label\[,split\]"):
        load_dataset(path)


def test_csv_unknown_column(tmp_path: Path) -> None:
    path = manifest(tmp_path / "m.csv", ["path", "label", "patient"], [["a.png", "x", "p1"]])
    with pytest.raises(DatasetError, match=r"unknown column\(s\) patient"):
        load_dataset(path)


def test_csv_missing_file_names_the_row(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    path = manifest(tmp_path / "m.csv", ["path", "label"], [["a.png", "x"], ["b.png", "y"]])
    with pytest.raises(DatasetError, match=r"m\.csv, line 3: image file 'b\.png' not found"):
        load_dataset(path)


def test_csv_empty_label_and_bad_split(tmp_path: Path) -> None:
    png(tmp_path / "a.png")
    path = manifest(tmp_path / "m.csv", ["path", "label"], [["a.png", ""]])
    with pytest.raises(DatasetError, match=r"line 2: empty label"):
        load_dataset(path)
    path = manifest(tmp_path / "s.csv", ["path", "label", "split"], [["a.png", "x", "dev"]])
    with pytest.raises(DatasetError, match=r"line 2: split 'dev' is not one of train, val, test"):
        load_dataset(path)


def test_csv_empty(tmp_path: Path) -> None:
    path = manifest(tmp_path / "m.csv", ["path", "label"], [])
    with pytest.raises(DatasetError, match="lists no images"):
        load_dataset(path)


def test_bad_sidecar_json(tmp_path: Path) -> None:
    path = npz(tmp_path / "b.npz", train_images=images(2), train_labels=np.array([0, 1]))
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"b\.json: sidecar JSON cannot be read"):
        load_dataset(path)


def test_bad_fractions(tmp_path: Path) -> None:
    path = npz(tmp_path / "f.npz", train_images=images(4), train_labels=np.array([0, 1] * 2))
    with pytest.raises(DatasetError, match="must be below 1"):
        load_dataset(path, val_fraction=0.5, test_fraction=0.5)
