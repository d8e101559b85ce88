"""Images stored one per file (PNG, JPEG, BMP, TIFF, DICOM), shared by ImageFolder and CSV.

PIL opens files lazily, so size and mode come from the header alone; DICOM headers are read
with ``stop_before_pixels``. Decoding failures become :class:`ImageReadError` so the split can
skip and count them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from metallmix.errors import DatasetError
from metallmix.tools.datasets.base import (
    ImageHeader,
    ImageReadError,
    ImageSource,
    normalize_image,
)

PIL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IMAGE_SUFFIXES = PIL_SUFFIXES | DICOM_SUFFIXES

_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _pydicom() -> Any:
    """pydicom, or a clear instruction when the ``dicom`` extra is not installed."""
    try:
        import pydicom  # optional extra: only DICOM files need it
    except ImportError as exc:
        raise DatasetError(
            "DICOM files found but pydicom is not installed; "
            "install the extra: pip install 'metallmix[dicom]'"
        ) from exc
    return pydicom


def _pil_header(path: Path) -> ImageHeader:
    with Image.open(path) as img:
        width, height = img.size
        channels = 1 if img.mode in _GREY_MODES else 3
    return ImageHeader(height, width, channels)


def _pil_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()  # raises on truncated data, unlike the lazy open
        if img.mode in ("1", "L", "LA", "P", "RGB", "RGBA"):
            target = "L" if img.mode in ("1", "L", "LA") else "RGB"
            return np.asarray(img.convert(target))
        return normalize_image(np.asarray(img))


def _dicom_header(path: Path) -> ImageHeader:
    ds = _pydicom().dcmread(path, stop_before_pixels=True)
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    return ImageHeader(rows, cols, 1 if samples == 1 else 3)


def _dicom_pixels(path: Path) -> np.ndarray:
    """Pixel data in modality units (rescale slope/intercept), middle frame of a volume,
    MONOCHROME1 inverted so that bright always means dense. pydicom 3 already returns YBR
    colour data as RGB."""
    ds = _pydicom().dcmread(path)
    array = ds.pixel_array
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        array = array[array.shape[0] // 2]
    if samples == 1:
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        if slope != 1 or intercept != 0:
            array = array.astype(np.float64) * slope + intercept
        if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            array = array.max() - array
    return normalize_image(array)


class FileImages(ImageSource):
    """A list of image files; the index is the position in the list."""

    def __init__(self, paths: Sequence[Path], origins: Sequence[str] | None = None) -> None:
        self.paths = list(paths)
        self.origins = list(origins) if origins is not None else None
        if any(is_dicom(p) for p in self.paths):
            _pydicom()  # fail at load time, not halfway through a pass

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self, index: int) -> str:
        where = str(self.paths[index])
        return f"{self.origins[index]} ({where})" if self.origins else where

    def _read(self, index: int, what: str) -> ImageHeader | np.ndarray | ImageReadError:
        path = self.paths[index]
        dicom = is_dicom(path)
        if dicom and not has_dicom_preamble(path):
            return ImageReadError(
                f"{self.describe(index)}: not a DICOM file (no 'DICM' marker at byte 128)"
            )
        if not dicom and path.suffix == "":
            return ImageReadError(
                f"{self.describe(index)}: no image suffix and no DICOM marker; not an image"
            )
        try:
            with warnings.catch_warnings():
                # pydicom warns on every oddity of a damaged file; the skip report says enough
                warnings.simplefilter("ignore", UserWarning)
                if what == "header":
                    return _dicom_header(path) if dicom else _pil_header(path)
                return _dicom_pixels(path) if dicom else _pil_pixels(path)
        except DatasetError:
            raise
        except (OSError, UnidentifiedImageError, ValueError, AttributeError, SyntaxError) as exc:
            return ImageReadError(f"{self.describe(index)}: unreadable image ({exc})")
        except Exception as exc:  # pydicom raises assorted types on damaged files
            if dicom:
                return ImageReadError(f"{self.describe(index)}: unreadable DICOM ({exc})")
            raise

    def iter_headers(
        self, indices: Sequence[int]
    ) -> Iterator[tuple[int, ImageHeader | ImageReadError]]:
        for index in indices:
            result = self._read(int(index), "header")
            assert not isinstance(result, np.ndarray)
            yield int(index), result

    def iter_pixels(
        self, indices: Sequence[int]
    ) -> Iterator[tuple[int, np.ndarray | ImageReadError]]:
        for index in indices:
            result = self._read(int(index), "pixels")
            assert not isinstance(result, ImageHeader)
            yield int(index), result


def class_sort_key(name: str) -> tuple[int, int | str]:
    """Numeric class names sort numerically (2 before 10), others alphabetically."""
    return (0, int(name)) if name.isdigit() else (1, name)


def has_dicom_preamble(path: Path) -> bool:
    """True for a file with the DICOM ``DICM`` marker at byte 128 (scanners omit suffixes)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom(path: Path) -> bool:
    """Whether ``path`` is decoded with pydicom: a DICOM suffix, or no suffix and the DICOM
    preamble (a suffix-less file of any other kind, ``/etc/passwd``, never reaches pydicom)."""
    suffix = path.suffix.lower()
    return suffix in DICOM_SUFFIXES or (suffix == "" and has_dicom_preamble(path))


def is_image_file(path: Path) -> bool:
    """A file this package can decode, judged by suffix (or DICOM preamble without one)."""
    if path.name.startswith(".") or not path.is_file():
        return False
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    return suffix == "" and has_dicom_preamble(path)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden entries skipped), in a stable order."""
    found = [
        p
        for p in folder.rglob("*")
        if not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and is_image_file(p)
    ]
    return sorted(found)
