"""Benchmark: top-10 retrieval over a 1,000,000-row synthetic experiment index (FAISS).

Exact cosine search (IndexFlatIP over L2-normalised vectors, what the KB index uses) and,
for comparison, an IVF index (approximate) with its recall@10 against the exact result.
Prints build rows/s and per-query latency. Not a test.

    python bench/retrieval_1m.py [--rows 1000000] [--dim 32] [--queries 200]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import faiss
import numpy as np

from metallmix.tools.meta.retrieval import VectorIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32, help="KB run vectors have ~28 dims")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/retrieval_1m.json")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)

    flat = VectorIndex(args.dim)
    t = time.perf_counter()
    flat.add(data)
    build_flat = time.perf_counter() - t
    # single queries on one thread (how the recommender queries); batches on --threads
    faiss.omp_set_num_threads(1)
    t = time.perf_counter()
    for q in queries:
        flat.search(q[None, :], 10)
    single_flat = (time.perf_counter() - t) / args.queries
    faiss.omp_set_num_threads(args.threads)
    t = time.perf_counter()
    _, exact = flat.search(queries, 10)
    batch_flat = (time.perf_counter() - t) / args.queries

    nlist = 1024
    quantizer = faiss.IndexFlatIP(args.dim)
    ivf = faiss.IndexIVFFlat(quantizer, args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
    normed = data / np.linalg.norm(data, axis=1, keepdims=True)
    t = time.perf_counter()
    ivf.train(normed[rng.choice(args.rows, size=min(args.rows, 50 * nlist), replace=False)])
    ivf.add(normed)
    build_ivf = time.perf_counter() - t
    ivf.nprobe = 16
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    faiss.omp_set_num_threads(1)
    t = time.perf_counter()
    for q in qn:
        ivf.search(q[None, :], 10)
    single_ivf = (time.perf_counter() - t) / args.queries
    faiss.omp_set_num_threads(args.threads)
    _, approx = ivf.search(qn, 10)
    recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)]))

    result = {
        "rows": args.rows,
        "dim": args.dim,
        "threads": args.threads,
        "flat_build_rows_per_second": round(args.rows / build_flat),
        "flat_top10_ms_single_query": round(single_flat * 1000, 2),
        "flat_top10_ms_per_query_batched": round(batch_flat * 1000, 2),
        "ivf_build_seconds": round(build_ivf, 2),
        "ivf_top10_ms_single_query": round(single_ivf * 1000, 3),
        "ivf_recall_at_10": round(recall, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
    }
    print(
        f"{args.rows:,} rows x {args.dim} dims, {args.threads} threads: exact (IndexFlatIP) "
        f"build {result['flat_build_rows_per_second']:,} rows/s, top-10 "
        f"{result['flat_top10_ms_single_query']} ms per single query, "
        f"{result['flat_top10_ms_per_query_batched']} ms per query batched; "
        f"IVF1024 nprobe16 build {build_ivf:.1f} s, top-10 "
        f"{result['ivf_top10_ms_single_query']} ms, recall@10 {recall:.3f} "
        f"(load average {result['load_average_1min']} on "
        f"{result['cpu_count']} CPUs)"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
