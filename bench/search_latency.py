"""Interactive search on 100k documents: load a saved index, embed one query, search (per-query latency).

A synthetic 100,000 × 384 corpus index (flat, exact, as `contrastkit search` picks below 200k) saved
and loaded through CorpusSearcher, and the default model embedding each query.

    .venv/bin/python bench/search_latency.py [--docs 100000] [--queries 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import print_table, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20)
    args = parser.parse_args()

    from contrastkit.encoder import Encoder
    from contrastkit.index import VectorIndex
    from contrastkit.search import CorpusSearcher

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.docs, 384), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(args.docs)]
    searcher = CorpusSearcher(VectorIndex.build(vectors), ids, ids, [""] * args.docs, {"model": "default"})
    with tempfile.TemporaryDirectory() as tmp:
        searcher.save(Path(tmp))
        t0 = time.perf_counter()
        loaded = CorpusSearcher.load(Path(tmp))
        load_s = time.perf_counter() - t0
    encoder = Encoder.from_pretrained("default")
    queries = [f"how do I configure package number {i} for a web server" for i in range(args.queries)]
    encode_ms, search_ms = [], []
    for q in queries:
        t0 = time.perf_counter()
        emb = encoder.encode([q])
        t1 = time.perf_counter()
        loaded.search(emb, 10)
        t2 = time.perf_counter()
        encode_ms.append((t1 - t0) * 1e3)
        search_ms.append((t2 - t1) * 1e3)
    row = {"docs": args.docs, "index": loaded.index.kind, "load_index_s": load_s,
           "encode_query_ms_median": statistics.median(encode_ms), "search_ms_median": statistics.median(search_ms),
           "total_ms_median": statistics.median(e + s for e, s in zip(encode_ms, search_ms))}
    print_table([row], list(row))
    print(f"wrote {write_results('search_latency', [row])}")


if __name__ == "__main__":
    main()
