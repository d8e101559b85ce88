"""FAISS retrieval of the past experiments most similar to a new dataset.

A dataset is embedded as its standardised meta-features (log scales for counts, one-hot
modality, a constant bias so an "average" dataset is not a zero vector), L2-normalised so
FAISS's inner product is the cosine similarity. Runs are embedded as their dataset's vector
plus a down-weighted description of the configuration, so "runs like this one" also works.

The index is saved as its raw vectors (``.npy``, read with ``allow_pickle=False``) and a
JSON sidecar: no FAISS reader (which trusts its input) and no unpickler ever sees a file on
disk; the exact ``IndexFlatIP`` is rebuilt from the vectors in memory (milliseconds). A saved
index is used only for the KB content it was built from: the sidecar's KB hash, run ids
and datasets must equal the KB's own, and the vectors of every dataset and of a sample of
runs are recomputed from the KB's records and must match, so a planted folder can neither
run code nor steer retrieval unnoticed. It is rebuilt whenever the KB content hash changes.
It lives beside a writable SQLite KB (``<kb>.sqlite.retrieval/``) and in the cache otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict

from metallmix import config
from metallmix.atomic import atomic_dir
from metallmix.errors import KnowledgeBaseError
from metallmix.tools.kb.records import Hyperparameters, RunRecord
from metallmix.tools.kb.store import KnowledgeBase, SQLiteKnowledgeBase, kb_content_hash
from metallmix.tools.meta.contracts import SimilarRun
from metallmix.tools.meta.encoding import model_arch, model_params_m, scale_meta_feature
from metallmix.tools.metafeatures import MetaFeatures

RETRIEVAL_VERSION = 2  # 1: FAISS binaries (never read now)
INDEX_FILES = ("datasets.npy", "runs.npy")  # each checked against the sidecar sha256
SPOT_CHECK_RUNS = 64  # run vectors recomputed from the KB when a saved index is loaded
_DATASET_FEATURES = [
    "n_images",
    "n_classes",
    "imbalance_ratio",
    "normalized_entropy",
    "resolution_h",
    "resolution_w",
    "channels",
    "class_size_mean",
    "class_size_std",
    "images_per_class",
    "min_class_fraction",
    "pixel_mean",
    "pixel_std",
]
CONFIG_WEIGHT = 0.5
MODALITY_WEIGHT = 1.5


def _raw_vector(mf: MetaFeatures) -> np.ndarray:
    values = mf.numeric()
    return np.asarray(
        [scale_meta_feature(name, values.get(name, math.nan)) for name in _DATASET_FEATURES],
        dtype=float,
    )


def config_vector(model: str, hp: Hyperparameters, pretrained: bool) -> np.ndarray:
    """A small numeric description of a configuration (scales roughly comparable)."""

    def log10(v: float | None, floor: float) -> float:
        return math.log10(max(v, floor)) if v is not None else math.nan

    params = model_params_m(model)
    vec = [
        log10(hp.lr, 1e-7) + 3.0,
        log10(hp.weight_decay, 1e-8) / 3.0 + 1.5,
        math.log2(hp.batch_size) - 6.0 if hp.batch_size else math.nan,
        (hp.epochs - 10) / 10.0 if hp.epochs else math.nan,
        math.log2(hp.image_size) - 6.0 if hp.image_size else math.nan,
        (hp.label_smoothing or 0.0) * 5,
        (hp.dropout or 0.0) * 3,
        math.log10(params) - 1.0 if not math.isnan(params) else math.nan,
        model_arch(model),
        1.0 if pretrained else 0.0,
    ]
    return np.nan_to_num(np.asarray(vec, dtype=float), nan=0.0)


class DatasetScaler(BaseModel):
    """Standardisation fitted on one vector per KB dataset (big datasets do not dominate)."""

    model_config = ConfigDict(extra="forbid")

    mean: list[float]
    std: list[float]
    modalities: list[str]

    @classmethod
    def fit(cls, metas: Sequence[MetaFeatures]) -> DatasetScaler:
        raw = np.vstack([_raw_vector(m) for m in metas]) if metas else np.zeros((0, 13))
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(raw, axis=0) if len(raw) else np.zeros(raw.shape[1])
            std = np.nanstd(raw, axis=0) if len(raw) else np.ones(raw.shape[1])
        mean = np.nan_to_num(mean, nan=0.0)
        std = np.where(np.isfinite(std) & (std > 1e-9), std, 1.0)
        modalities = sorted({m.modality for m in metas})
        return cls(mean=mean.tolist(), std=std.tolist(), modalities=modalities)

    def embed(self, mf: MetaFeatures) -> np.ndarray:
        z = (_raw_vector(mf) - np.asarray(self.mean)) / np.asarray(self.std)
        z = np.nan_to_num(z, nan=0.0)
        onehot = np.zeros(len(self.modalities) + 1)
        idx = self.modalities.index(mf.modality) if mf.modality in self.modalities else -1
        onehot[idx] = MODALITY_WEIGHT
        return np.concatenate([z, onehot, [1.0]])


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


class VectorIndex:
    """Exact cosine search (``IndexFlatIP`` over L2-normalised vectors)."""

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexFlatIP(dim)

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(_normalise(vectors))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = max(0, min(k, self.index.ntotal))
        if k == 0:
            return np.zeros((len(queries), 0)), np.zeros((len(queries), 0), dtype=np.int64)
        sims, ids = self.index.search(_normalise(np.atleast_2d(queries)), k)
        return sims, ids

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def vectors(self) -> np.ndarray:
        """The stored (normalised) vectors, one row per entry."""
        n = int(self.index.ntotal)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self.index.reconstruct_n(0, n), dtype=np.float32)


class RetrievalIndex:
    """Dataset- and run-level indexes over one KB snapshot."""

    def __init__(
        self,
        scaler: DatasetScaler,
        datasets: list[str],
        dataset_index: VectorIndex,
        run_ids: list[str],
        run_index: VectorIndex,
        kb_hash: str,
    ) -> None:
        self.scaler = scaler
        self.datasets = datasets
        self.dataset_index = dataset_index
        self.run_ids = run_ids
        self.run_index = run_index
        self.kb_hash = kb_hash
        self._records: dict[str, RunRecord] = {}

    @classmethod
    def build(cls, records: Sequence[RunRecord], kb_hash: str | None = None) -> RetrievalIndex:
        if not records:
            raise KnowledgeBaseError(
                "cannot build a retrieval index over an empty knowledge base; import runs first"
            )
        by_dataset: dict[str, MetaFeatures] = {}
        for r in records:
            by_dataset.setdefault(r.dataset, r.meta_features)
        datasets = sorted(by_dataset)
        scaler = DatasetScaler.fit([by_dataset[d] for d in datasets])
        dvecs = np.vstack([scaler.embed(by_dataset[d]) for d in datasets])
        dindex = VectorIndex(dvecs.shape[1])
        dindex.add(dvecs)
        ordered = sorted(records, key=lambda r: r.run_id)
        rvecs = np.vstack([run_vector(scaler, r) for r in ordered])
        rindex = VectorIndex(rvecs.shape[1])
        rindex.add(rvecs)
        index = cls(
            scaler,
            datasets,
            dindex,
            [r.run_id for r in ordered],
            rindex,
            kb_hash or kb_content_hash(records),
        )
        index.attach(records)
        return index

    def attach(self, records: Sequence[RunRecord]) -> None:
        """Keep the records in memory to turn hits into :class:`SimilarRun`."""
        self._records = {r.run_id: r for r in records}

    # ------------------------------------------------------------- queries
    def similar_datasets(
        self, mf: MetaFeatures, k: int = 5, *, exclude: set[str] | None = None
    ) -> list[tuple[str, float]]:
        """The ``k`` most similar KB datasets and their cosine similarity."""
        excluded = exclude or set()
        want = min(len(self.datasets), k + len(excluded))
        sims, ids = self.dataset_index.search(self.scaler.embed(mf)[None, :], want)
        out = [
            (self.datasets[int(i)], float(s))
            for s, i in zip(sims[0], ids[0], strict=True)
            if i >= 0 and self.datasets[int(i)] not in excluded
        ]
        return out[:k]

    def similar_runs(
        self,
        mf: MetaFeatures,
        k: int = 10,
        *,
        per_dataset: int = 3,
        n_datasets: int = 3,
        exclude: set[str] | None = None,
    ) -> list[SimilarRun]:
        """The best runs (by validation accuracy) on the most similar datasets."""
        excluded = exclude or set()
        out: list[SimilarRun] = []
        for dataset, sim in self.similar_datasets(mf, n_datasets, exclude=excluded):
            runs = [
                r
                for r in self._records.values()
                if r.dataset == dataset
                and r.status == "ok"
                and r.outcomes.val_accuracy is not None
                and r.dataset_group not in excluded
            ]
            runs.sort(key=lambda r: (-(r.outcomes.val_accuracy or 0.0), r.run_id))
            out.extend(_similar(r, sim) for r in runs[:per_dataset])
        return out[:k]

    def runs_like(
        self,
        mf: MetaFeatures,
        model: str,
        hp: Hyperparameters,
        k: int = 10,
        *,
        pretrained: bool = False,
    ) -> list[SimilarRun]:
        """Past runs nearest to a (dataset, configuration) pair."""
        query = np.concatenate(
            [self.scaler.embed(mf), CONFIG_WEIGHT * config_vector(model, hp, pretrained)]
        )
        sims, ids = self.run_index.search(query[None, :], k)
        return [
            _similar(self._records[self.run_ids[int(i)]], float(s))
            for s, i in zip(sims[0], ids[0], strict=True)
            if i >= 0 and self.run_ids[int(i)] in self._records
        ]

    # ------------------------------------------------------------- persistence
    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            for name, index in zip(INDEX_FILES, (self.dataset_index, self.run_index), strict=True):
                np.save(tmp / name, index.vectors(), allow_pickle=False)
            sidecar = {
                "format": "metallmix-retrieval",
                "version": RETRIEVAL_VERSION,
                "kb_hash": self.kb_hash,
                "sha256": {
                    name: hashlib.sha256((tmp / name).read_bytes()).hexdigest()
                    for name in INDEX_FILES
                },
                "scaler": self.scaler.model_dump(),
                "datasets": self.datasets,
                "run_ids": self.run_ids,
            }
            (tmp / "retrieval.json").write_text(json.dumps(sidecar))
        return directory

    @classmethod
    def load(cls, directory: Path) -> RetrievalIndex:
        """Load a saved index: each ``.npy`` file's bytes are checked against the sidecar's
        sha256, then parsed by numpy without pickles; FAISS only gets vectors in memory.
        Check it against the KB with :meth:`verify_against` before use."""
        directory = Path(directory)
        try:
            sidecar = json.loads((directory / "retrieval.json").read_text())
            if sidecar.get("version") != RETRIEVAL_VERSION:
                raise KnowledgeBaseError(f"retrieval index {directory} has another version")
            expected = sidecar.get("sha256")
            if not isinstance(expected, dict):
                raise KnowledgeBaseError(
                    f"retrieval index {directory} has no file hashes; delete it to rebuild"
                )
            loaded = []
            for name in INDEX_FILES:
                blob = (directory / name).read_bytes()
                if hashlib.sha256(blob).hexdigest() != expected.get(name):
                    raise KnowledgeBaseError(
                        f"retrieval index file {directory / name} does not match the sha256 in "
                        "its sidecar (changed or damaged); delete the folder to rebuild"
                    )
                vectors = np.load(io.BytesIO(blob), allow_pickle=False)
                if vectors.ndim != 2 or vectors.dtype != np.float32:
                    raise KnowledgeBaseError(
                        f"retrieval index file {directory / name} is not a float32 matrix"
                    )
                vector_index = VectorIndex(int(vectors.shape[1]))
                vector_index.index.add(vectors)  # saved normalised: added as they are
                loaded.append(vector_index)
            dindex, rindex = loaded
            index = cls(
                DatasetScaler.model_validate(sidecar["scaler"]),
                [str(d) for d in sidecar["datasets"]],
                dindex,
                [str(r) for r in sidecar["run_ids"]],
                rindex,
                str(sidecar["kb_hash"]),
            )
        except (OSError, ValueError, RuntimeError, AttributeError, KeyError, TypeError) as exc:
            raise KnowledgeBaseError(
                f"cannot read the retrieval index in {directory}: {exc}; delete it to rebuild"
            ) from exc
        if len(index.datasets) != len(dindex) or len(index.run_ids) != len(rindex):
            raise KnowledgeBaseError(
                f"retrieval index {directory} names other rows than it holds; delete it"
            )
        return index

    def verify_against(self, records: Sequence[RunRecord], kb_hash: str) -> None:
        """Raise :class:`KnowledgeBaseError` unless this saved index is the one the KB's own
        content gives: same content hash, run ids, datasets, and the same vectors for every
        dataset and for a sample of runs (recomputed from the records, not read from disk)."""
        by_id = {r.run_id: r for r in records}
        datasets = sorted({r.dataset for r in records})
        if self.kb_hash != kb_hash or self.run_ids != sorted(by_id) or self.datasets != datasets:
            raise KnowledgeBaseError("the saved retrieval index was built from other KB content")
        stored = self.dataset_index.vectors()
        first: dict[str, MetaFeatures] = {}
        for r in records:
            first.setdefault(r.dataset, r.meta_features)
        fresh = _normalise(np.vstack([self.scaler.embed(first[d]) for d in datasets]))
        if not np.allclose(stored, fresh, atol=1e-5):
            raise KnowledgeBaseError("the saved retrieval index's dataset vectors differ")
        if not self.run_ids:
            return
        rng = np.random.default_rng(int(hashlib.sha256(kb_hash.encode()).hexdigest()[:8], 16))
        picks = rng.choice(
            len(self.run_ids), min(SPOT_CHECK_RUNS, len(self.run_ids)), replace=False
        )
        runs = self.run_index.vectors()
        for i in sorted(int(p) for p in picks):
            want = _normalise(run_vector(self.scaler, by_id[self.run_ids[i]])[None, :])[0]
            if not np.allclose(runs[i], want, atol=1e-5):
                raise KnowledgeBaseError("the saved retrieval index's run vectors differ")


def run_vector(scaler: DatasetScaler, record: RunRecord) -> np.ndarray:
    return np.concatenate(
        [
            scaler.embed(record.meta_features),
            CONFIG_WEIGHT * config_vector(record.model, record.hyperparameters, record.pretrained),
        ]
    )


def _similar(record: RunRecord, similarity: float) -> SimilarRun:
    return SimilarRun(
        run_id=record.run_id,
        dataset=record.dataset,
        similarity=round(similarity, 4),
        model=record.model,
        hyperparameters=record.hyperparameters,
        val_accuracy=record.outcomes.val_accuracy,
        test_accuracy=record.outcomes.test_accuracy,
        train_seconds=record.outcomes.train_seconds,
        val_balanced_accuracy=getattr(record.outcomes, "val_balanced_accuracy", None),
    )


def index_dir(kb: KnowledgeBase, kb_hash: str, cache: Path | None = None) -> Path:
    """Beside a writable SQLite KB, else in the cache (keyed by content hash); in ``cache``
    when one is given."""
    if cache is not None:
        return cache / "retrieval" / kb_hash
    if isinstance(kb, SQLiteKnowledgeBase) and not kb.read_only:
        parent = kb.path.parent
        if os.access(parent, os.W_OK):
            return kb.path.with_name(kb.path.name + ".retrieval")
    return config.cache_dir() / "retrieval" / kb_hash


def load_or_build(
    kb: KnowledgeBase,
    records: list[RunRecord] | None = None,
    kb_hash: str | None = None,
    cache: Path | None = None,
) -> RetrievalIndex:
    """The index for the KB's current content, rebuilt (and saved) only when it changed
    (``records`` and ``kb_hash``: that content and its hash, when already read; ``cache``:
    the folder to keep it in instead of the default, see :func:`index_dir`)."""
    records = records if records is not None else list(kb.iter_records())
    kb_hash = kb_hash or kb_content_hash(records)
    directory = index_dir(kb, kb_hash, cache)
    if (directory / "retrieval.json").is_file():
        try:
            index = RetrievalIndex.load(directory)
            index.verify_against(records, kb_hash)
            index.attach(records)
            return index
        except KnowledgeBaseError:
            pass
    index = RetrievalIndex.build(records, kb_hash)
    with contextlib.suppress(OSError):  # a read-only location only costs a rebuild
        index.save(directory)
    return index
