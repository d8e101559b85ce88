"""Benchmark: should retrieval use a text index (LangChain FAISS over summaries) or numbers?

Both answer "which training dataset is most similar to the held-out one?" inside the same
leave-one-dataset-out folds; the held-out dataset then gets that dataset's best
configuration (nearest evaluated one) and we score its normalised regret. The text index
embeds readable dataset summaries with an offline hashing embedding (scikit-learn, no model
download; numbers are bucketed into words so they can match). The numeric index is the one
the product uses (standardised meta-features, cosine). Dataset names are not in the text,
so neither side can match by name. Prints both and writes bench/results/. Not a test.
The text index is langchain-community's FAISS store: ``pip install 'metallmix[langchain]'``.

    python bench/text_vs_numeric_retrieval.py --kb ../shared/data/quicktune/extended
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings
from sklearn.feature_extraction.text import HashingVectorizer

from metallmix.benchmarks.lodo import (
    _map_to_heldout,
    folds,
    load_kb_records,
    nearest_dataset_best,
    regret_and_rank,
)
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.metafeatures import MetaFeatures

warnings.filterwarnings("ignore", category=DeprecationWarning)


class HashingEmbeddings(Embeddings):
    """Offline bag-of-words embedding: hashed unigrams and bigrams, L2-normalised."""

    def __init__(self, n_features: int = 1024) -> None:
        self.vectorizer = HashingVectorizer(
            n_features=n_features, alternate_sign=False, ngram_range=(1, 2), norm="l2"
        )

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.vectorizer.transform(texts).toarray().tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def _bucket(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{name}_unknown"
    return f"{name}_e{round(math.log2(max(value, 1e-9)))}"


def summary(mf: MetaFeatures) -> str:
    """A readable description; numbers also as log2 buckets so that near values share words."""
    return " ".join(
        [
            f"{mf.modality} images, {mf.n_images} training images, {mf.n_classes} classes,",
            f"{mf.resolution_h:.0f}x{mf.resolution_w:.0f} pixels, {mf.channels} channels.",
            _bucket("images", mf.n_images),
            _bucket("classes", mf.n_classes),
            _bucket("perclass", mf.images_per_class),
            _bucket("resolution", mf.resolution_h),
            _bucket("imbalance", mf.imbalance_ratio),
            f"channels_{mf.channels}",
            f"modality_{mf.modality.replace(' ', '_')}",
        ]
    )


def text_nearest_best(train: list[RunRecord], test: list[RunRecord]) -> RunRecord:
    from langchain_community.vectorstores import FAISS

    metas: dict[str, MetaFeatures] = {}
    for r in train:
        metas.setdefault(r.dataset, r.meta_features)
    names = sorted(metas)
    store = FAISS.from_texts(
        [summary(metas[n]) for n in names],
        HashingEmbeddings(),
        metadatas=[{"dataset": n} for n in names],
    )
    (doc, _score), *_ = store.similarity_search_with_score(summary(test[0].meta_features), k=1)
    nearest = doc.metadata["dataset"]
    runs = [r for r in train if r.dataset == nearest and r.outcomes.val_accuracy is not None]
    return max(runs, key=lambda r: (r.outcomes.val_accuracy or 0.0, r.run_id))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kb", default="../shared/data/quicktune/extended")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    records, label = load_kb_records(args.kb)
    usable = [r for r in records if r.status == "ok" and r.outcomes.val_accuracy is not None]
    regrets: dict[str, dict[str, float]] = {}
    for _group, train, test_all in folds(usable):
        for dataset in sorted({r.dataset for r in test_all}):
            test = sorted((r for r in test_all if r.dataset == dataset), key=lambda r: r.run_id)
            if len(test) < 3:
                continue
            true = np.array([r.outcomes.val_accuracy for r in test], dtype=float)
            numeric = _map_to_heldout(nearest_dataset_best(train, test), test)
            text = _map_to_heldout(text_nearest_best(train, test), test)
            regrets[dataset] = {
                "numeric": regret_and_rank(true, numeric)[0],
                "text": regret_and_rank(true, text)[0],
            }
    mean = {k: float(np.mean([v[k] for v in regrets.values()])) for k in ("numeric", "text")}
    wins = {
        "numeric": sum(v["numeric"] < v["text"] for v in regrets.values()),
        "text": sum(v["text"] < v["numeric"] for v in regrets.values()),
    }
    verdict = "keep the text index" if mean["text"] < mean["numeric"] else "numeric index only"
    print(
        f"{label}: nearest-dataset-best regret over {len(regrets)} held-out datasets: "
        f"numeric {mean['numeric']:.3f}, text {mean['text']:.3f} (per-dataset wins: numeric "
        f"{wins['numeric']}, text {wins['text']}, ties {len(regrets) - sum(wins.values())})"
        f" -> {verdict}"
    )
    name = Path(str(args.kb).rstrip("/")).stem or "kb"
    out = Path(args.out or f"bench/results/text_vs_numeric_{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "kb": label,
                "mean_regret": mean,
                "wins": wins,
                "verdict": verdict,
                "per_dataset": regrets,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
