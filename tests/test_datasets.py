"""Loaders on small files the tests make: npz, ImageFolder (flat and split), CSV, DICOM."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metallmix.errors import DatasetError
from metallmix.tools.datasets import Dataset, Split, load_dataset, stratified_sample


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def grey_images(n: int, h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def make_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (7, 9)) -> dict:
    """PNG ImageFolder; returns {class: [arrays]} to compare decoded pixels against."""
    rng = np.random.default_rng(1)
    saved: dict[str, list[np.ndarray]] = {}
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, size, dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"img{i:03d}.png")
            saved.setdefault(cls, []).append(arr)
    return saved


# --- npz -------------------------------------------------------------------------------------


def test_npz_with_flat_labels_and_sidecar(tmp_path: Path) -> None:
    train, val, test = grey_images(12), grey_images(4, seed=1), grey_images(5, seed=2)
    y_train = np.array([0, 1, 2] * 4)
    path = save_npz(
        tmp_path / "toy.npz",
        train_images=train,
        train_labels=y_train,
        val_images=val,
        val_labels=np.array([0, 1, 2, 0]),
        test_images=test,
        test_labels=np.array([2, 2, 1, 0, 1]),
    )
    sidecar = {
        "modality": "chest X-ray",
        "class_names": ["a", "b", "c"],
        "source": {"repo": "org/repo", "commit": "abc123", "path": "data/toy.npz"},
    }
    (tmp_path / "toy.json").write_text(json.dumps(sidecar))

    ds = load_dataset(path)

    assert isinstance(ds, Dataset)
    assert ds.name == "toy" and ds.format == "npz"
    assert ds.class_names == ["a", "b", "c"] and ds.n_classes == 3
    assert ds.modality == "chest X-ray"
    assert ds.source_info["repo"] == "org/repo"
    assert ds.source_info["commit"] == "abc123"
    assert ds.source_info["file"] == "data/toy.npz"
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 12, "val": 4, "test": 5}
    split = ds.split("train")
    assert isinstance(split, Split)
    assert split.labels.dtype == np.int64
    np.testing.assert_array_equal(split.labels, y_train)
    images = list(split.iter_images())
    assert len(images) == 12
    for got, want in zip(images, train, strict=True):
        np.testing.assert_array_equal(got, want)
    assert list(split.image_sizes()) == [(6, 5)] * 12
    np.testing.assert_array_equal(next(ds.split("test").iter_images()), test[0])
    assert load_dataset(path, modality="CT").modality == "CT"


def test_npz_with_column_labels_and_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    labels = np.array([[0], [1]] * 5)
    path = save_npz(tmp_path / "rgb.npz", train_images=train, train_labels=labels)

    ds = load_dataset(path, val_fraction=0.0, test_fraction=0.0)

    assert ds.class_names == ["0", "1"]
    assert ds.modality == "unknown"
    np.testing.assert_array_equal(ds.split("train").labels, labels[:, 0])
    x, y = ds.split("train").load_arrays()
    assert x.shape == (10, 4, 4, 3) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, train)
    np.testing.assert_array_equal(y, labels[:, 0])


def test_npz_without_val_test_is_split_stratified_and_seeded(tmp_path: Path) -> None:
    labels = np.array([0] * 40 + [1] * 20)
    path = save_npz(tmp_path / "t.npz", train_images=grey_images(60), train_labels=labels)

    ds = load_dataset(path, seed=7, val_fraction=0.1, test_fraction=0.2)

    sizes = {k: len(v) for k, v in ds.splits.items()}
    assert sizes == {"train": 42, "val": 6, "test": 12}
    assert np.bincount(ds.split("test").labels).tolist() == [8, 4]
    assert np.bincount(ds.split("val").labels).tolist() == [4, 2]
    parts = [set(ds.split(s).indices.tolist()) for s in ("train", "val", "test")]
    assert set().union(*parts) == set(range(60))
    assert sum(len(p) for p in parts) == 60
    again = load_dataset(path, seed=7)
    np.testing.assert_array_equal(again.split("test").indices, ds.split("test").indices)
    other = load_dataset(path, seed=8)
    assert set(other.split("test").indices.tolist()) != parts[2]


def test_load_arrays_resizes_converts_and_subsamples(tmp_path: Path) -> None:
    labels = np.array([0] * 30 + [1] * 10)
    path = save_npz(tmp_path / "t.npz", train_images=grey_images(40), train_labels=labels)
    split = load_dataset(path, val_fraction=0, test_fraction=0).split("train")

    x, y = split.load_arrays(size=12, channels=3, limit=8, seed=1)

    assert x.shape == (8, 12, 12, 3) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [6, 2]
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grey repeated into RGB
    x2, y2 = split.load_arrays(size=12, channels=3, limit=8, seed=1)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = split.load_arrays(channels=1)
    assert x3.shape == (40, 6, 5, 1)


def test_stratified_sample_keeps_every_class() -> None:
    labels = np.array([0] * 97 + [1] * 2 + [2] * 1)
    picked = stratified_sample(labels, 10, seed=0)
    assert len(picked) == 10 and len(set(picked.tolist())) == 10
    assert sorted(set(labels[picked].tolist())) == [0, 1, 2]


def test_subset_reindexes_classes_and_limits_train(tmp_path: Path) -> None:
    labels = np.array([0, 1, 2, 3] * 10)
    path = save_npz(
        tmp_path / "four.npz",
        train_images=grey_images(40),
        train_labels=labels,
        test_images=grey_images(8, seed=4),
        test_labels=np.array([0, 1, 2, 3] * 2),
    )
    ds = load_dataset(path, val_fraction=0)

    sub = ds.subset(classes=[3, 1], train_limit=6, seed=2)

    assert sub.class_names == ["3", "1"]
    assert len(sub.split("train")) == 6
    assert np.bincount(sub.split("train").labels).tolist() == [3, 3]
    assert sorted(sub.split("test").labels.tolist()) == [0, 0, 1, 1]
    original = dict(zip(ds.split("test").indices.tolist(), ds.split("test").labels, strict=True))
    for idx, lab in zip(sub.split("test").indices, sub.split("test").labels, strict=True):
        assert {3: 0, 1: 1}[int(original[int(idx)])] == lab
    assert sub.name != ds.name and "four" in sub.name
    assert ds.subset(name="mine").name == "mine"
    with pytest.raises(DatasetError, match="out of range"):
        ds.subset(classes=[0, 9])
    with pytest.raises(DatasetError, match="at least two classes"):
        ds.subset(classes=[1])


# --- ImageFolder ------------------------------------------------------------------------------


def test_image_folder_flat_is_split_and_decodes_exactly(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    saved = make_folder(root, {"normal": 10, "pneumonia": 5})

    ds = load_dataset(root, seed=3)

    assert ds.format == "folder" and ds.name == "flat"
    assert ds.class_names == ["normal", "pneumonia"]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 11, "val": 1, "test": 3}
    assert sorted(np.bincount(ds.split("test").labels).tolist()) == [1, 2]
    assert list(ds.split("train").image_sizes()) == [(7, 9)] * 11
    all_saved = {arr.tobytes() for arrs in saved.values() for arr in arrs}
    for _, image, label in ds.split("train").iter_labeled():
        assert image.tobytes() in all_saved
        cls = ds.class_names[label]
        assert any(np.array_equal(image, a) for a in saved[cls])


def test_image_folder_with_split_subtrees(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    make_folder(root / "train", {"a": 4, "b": 3})
    make_folder(root / "val", {"a": 1, "b": 1})
    make_folder(root / "test", {"a": 2, "b": 2})

    ds = load_dataset(root)

    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 7, "val": 2, "test": 4}
    assert np.bincount(ds.split("train").labels).tolist() == [4, 3]
    assert all(
        "train" in str(ds.split("train").source.describe(int(i))) for i in ds.split("train").indices
    )


def test_image_folder_with_train_and_test_only_carves_val(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    make_folder(root / "train", {"a": 10, "b": 10})
    make_folder(root / "test", {"a": 2, "b": 2})

    ds = load_dataset(root, val_fraction=0.2)

    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 16, "val": 4, "test": 4}


def test_image_folder_reads_jpg_bmp_tiff_and_rgb(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    (root / "x").mkdir(parents=True)
    (root / "y").mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "x" / "a.jpg")
    Image.fromarray(rgb).save(root / "x" / "b.bmp")
    Image.fromarray(rgb[:, :, 0]).save(root / "y" / "c.tiff")
    Image.fromarray(rgb[:, :, 0]).save(root / "y" / "d.tif")

    ds = load_dataset(root, val_fraction=0, test_fraction=0)
    split = ds.split("train")

    assert sorted(split.image_sizes()) == [(8, 6)] * 4
    assert sorted(h.channels for h in split.iter_headers()) == [1, 1, 3, 3]
    x, _ = split.load_arrays(channels=3)
    assert x.shape == (4, 8, 6, 3)


def test_mixed_sizes_need_a_size(tmp_path: Path) -> None:
    root = tmp_path / "sizes"
    make_folder(root, {"a": 2}, size=(5, 5))
    make_folder(root, {"b": 2}, size=(8, 4))
    split = load_dataset(root, val_fraction=0, test_fraction=0).split("train")

    with pytest.raises(DatasetError, match="pass size="):
        split.load_arrays()
    x, _ = split.load_arrays(size=6)
    assert x.shape == (4, 6, 6, 1)


def test_truncated_images_are_skipped_then_fatal(tmp_path: Path) -> None:
    root = tmp_path / "broken"
    make_folder(root, {"a": 20, "b": 20})
    png = root / "a" / "img000.png"
    png.write_bytes(png.read_bytes()[:40])  # header survives, pixel data does not

    split = load_dataset(root, val_fraction=0, test_fraction=0).split("train")
    images = list(split.iter_images())
    assert len(images) == 39
    assert len(split.skipped) == 1 and "img000.png" in split.skipped[0]
    x, y = split.load_arrays()
    assert len(x) == len(y) == 39

    for i in range(1, 4):
        bad = root / "b" / f"img{i:03d}.png"
        bad.write_bytes(b"not an image at all")
    split = load_dataset(root, val_fraction=0, test_fraction=0).split("train")
    with pytest.raises(DatasetError, match=r"unreadable \(more than 5%\)"):
        list(split.iter_images())
    tolerant = load_dataset(root, val_fraction=0, test_fraction=0, max_bad_fraction=0.2)
    assert len(list(tolerant.split("train").iter_images())) == 36


# --- CSV manifest ----------------------------------------------------------------------------


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_manifest_with_split_column(tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs", {"benign": 4, "malignant": 4})
    rows = []
    for cls in ("benign", "malignant"):
        for i in range(4):
            split = "train" if i < 2 else ("val" if i == 2 else "test")
            rows.append([f"imgs/{cls}/img{i:03d}.png", cls, split])
    path = write_csv(tmp_path / "manifest.csv", ["path", "label", "split"], rows)

    ds = load_dataset(path)

    assert ds.format == "csv" and ds.name == "manifest"
    assert ds.class_names == ["benign", "malignant"]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert list(ds.split("val").image_sizes()) == [(7, 9), (7, 9)]


def test_csv_manifest_without_split_column(tmp_path: Path) -> None:
    make_folder(tmp_path / "imgs", {"0": 10, "1": 10})
    rows = [[f"imgs/{c}/img{i:03d}.png", c] for c in ("0", "1") for i in range(10)]
    path = write_csv(tmp_path / "m.csv", ["path", "label"], rows)

    ds = load_dataset(path, seed=1)

    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 14, "val": 2, "test": 4}
    assert len(list(ds.split("train").iter_images())) == 14


# --- DICOM -----------------------------------------------------------------------------------


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> None:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    assert pydicom is not None
    ds.save_as(path, enforce_file_format=True)


def test_dicom_inside_image_folder(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    root = tmp_path / "dcm"
    ramp = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 30  # 0..3570, 12-bit
    for cls in ("effusion", "normal"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            write_dicom(root / cls / f"{i}.dcm", ramp)
    write_dicom(root / "normal" / "IM0001", ramp, photometric="MONOCHROME1")  # no suffix

    ds = load_dataset(root, val_fraction=0, test_fraction=0)
    split = ds.split("train")

    assert ds.class_names == ["effusion", "normal"]
    assert len(split) == 7
    assert list(split.image_sizes()) == [(12, 10)] * 7
    images = list(split.iter_images())
    assert len(images) == 7
    expected = np.rint(ramp.astype(np.float64) * 255.0 / ramp.max()).astype(np.uint8)
    np.testing.assert_array_equal(images[0], expected)  # min-max stretched 12-bit
    inverted = [img for img in images if img[0, 0] == 255]
    assert len(inverted) == 1 and inverted[0][-1, -1] == 0  # MONOCHROME1 flipped


def test_dicom_without_pydicom_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pydicom")
    root = tmp_path / "dcm"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        write_dicom(root / cls / "1.dcm", np.zeros((4, 4), dtype=np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)

    with pytest.raises(DatasetError, match=r"pydicom is not installed.*metallmix\[dicom\]"):
        load_dataset(root)


def test_damaged_dicom_is_skipped_and_counted(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    root = tmp_path / "dcm"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(15):
            write_dicom(root / cls / f"{i}.dcm", np.full((4, 4), i, dtype=np.uint16))
    (root / "a" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")

    split = load_dataset(root, val_fraction=0, test_fraction=0).split("train")

    assert len(split) == 31
    assert len(list(split.image_sizes())) == 30
    assert len(split.skipped) == 1 and "broken.dcm" in split.skipped[0]


def test_sixteen_bit_png_is_stretched_to_uint8(tmp_path: Path) -> None:
    root = tmp_path / "png16"
    deep = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 1000).astype(np.uint16)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(deep).save(root / cls / "x.png")

    split = load_dataset(root, val_fraction=0, test_fraction=0).split("train")
    image = next(split.iter_images())

    assert image.dtype == np.uint8 and image.shape == (4, 5)
    assert (image.min(), image.max()) == (0, 255)
    assert next(split.iter_headers()).channels == 1


def test_sidecar_inside_folder_sets_modality(tmp_path: Path) -> None:
    make_folder(tmp_path / "ds", {"a": 2, "b": 2})
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps({"modality": "OCT"}))
    assert load_dataset(tmp_path / "ds").modality == "OCT"
    (tmp_path / "ds.json").write_text(json.dumps({"modality": "fundus"}))
    assert load_dataset(tmp_path / "ds").modality == "fundus"


def test_npz_images_stream_without_loading_the_array(tmp_path: Path) -> None:
    import tracemalloc

    n, side = 4000, 64  # 16 MiB of pixels, compressing to almost nothing
    path = save_npz(
        tmp_path / "big.npz",
        train_images=np.zeros((n, side, side), np.uint8),
        train_labels=np.arange(n) % 2,
    )
    split = load_dataset(path, val_fraction=0, test_fraction=0).split("train")

    tracemalloc.start()
    try:
        seen = sum(1 for _ in split.iter_images())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert seen == n
    assert peak < (n * side * side) / 4  # a few chunks, never the whole array
