"""FAISS retrieval: finds the planted neighbour, persists without pickle, rebuilds on change."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.retrieval import RetrievalIndex, VectorIndex, index_dir, load_or_build


def test_a_dataset_is_its_own_nearest_neighbour() -> None:
    records = synthetic_records(6, 8, seed=4)
    index = RetrievalIndex.build(records)
    for dataset in {r.dataset for r in records}:
        mf = next(r.meta_features for r in records if r.dataset == dataset)
        (name, sim), *_ = index.similar_datasets(mf, 3)
        assert name == dataset and sim > 0.999


def test_a_slightly_changed_dataset_finds_its_origin_and_best_runs() -> None:
    records = synthetic_records(6, 8, seed=4)
    origin = records[10]
    mf = origin.meta_features.model_copy(
        update={"n_images": int(origin.meta_features.n_images * 1.05)}
    )
    index = RetrievalIndex.build(records)
    runs = index.similar_runs(mf, k=3, per_dataset=3, n_datasets=1)
    assert {r.dataset for r in runs} == {origin.dataset}
    accs = [r.val_accuracy or 0.0 for r in runs]
    assert accs == sorted(accs, reverse=True)
    best = max(r.outcomes.val_accuracy or 0 for r in records if r.dataset == origin.dataset)
    assert accs[0] == best
    excluded = index.similar_datasets(mf, 3, exclude={origin.dataset})
    assert origin.dataset not in {d for d, _ in excluded}


def test_runs_like_prefers_the_same_configuration() -> None:
    records = synthetic_records(3, 10, seed=5)
    index = RetrievalIndex.build(records)
    target = records[7]
    hits = index.runs_like(target.meta_features, target.model, target.hyperparameters, k=1)
    assert hits[0].run_id == target.run_id


def test_index_persists_beside_the_kb_and_rebuilds_on_change(tmp_path: Path) -> None:
    records = synthetic_records(4, 6, seed=6)
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    kb.add(records[:12])
    first = load_or_build(kb)
    directory = index_dir(kb, first.kb_hash)
    assert directory == tmp_path / "kb.sqlite.retrieval"
    assert sorted(p.name for p in directory.iterdir()) == [
        "datasets.npy",
        "retrieval.json",
        "runs.npy",
    ]
    again = load_or_build(kb)
    assert again.kb_hash == first.kb_hash and len(again.run_index) == 12
    mf = records[0].meta_features
    assert again.similar_datasets(mf, 2) == first.similar_datasets(mf, 2)
    kb.add(records[12:])
    grown = load_or_build(kb)
    assert grown.kb_hash != first.kb_hash and len(grown.run_index) == len(records)


def test_vector_index_is_cosine() -> None:
    index = VectorIndex(3)
    index.add(np.array([[1.0, 0, 0], [0, 10.0, 0], [1.0, 1.0, 0]]))
    sims, ids = index.search(np.array([0, 2.0, 0]), 2)
    assert ids[0].tolist() == [1, 2]
    assert sims[0][0] == np.float32(1.0)
    assert abs(sims[0][1] - 2**-0.5) < 1e-6
