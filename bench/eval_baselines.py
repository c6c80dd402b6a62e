"""Baseline retrieval figures: the default model and BM25 on the test splits of the real data.

    .venv/bin/python bench/eval_baselines.py            # both data sets, ~10 min on 2 cores
    .venv/bin/python bench/eval_baselines.py --datasets cranfield

Prints one table and writes bench/results/eval_baselines.json, with the READMEs' independent
reference figures (sentence-transformers / bm25s + pytrec_eval) beside ours.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contrastkit.data.beir import load_beir, pairs_from_beir  # noqa: E402
from contrastkit.encoder import Encoder  # noqa: E402
from contrastkit.evaluate import (bm25_retrieval, embedding_health, evaluate_retrieval,  # noqa: E402
                                  format_table)

MODEL = "all-MiniLM-L6-v2"
# From ../shared/data/<name>/README.md; "mrr@100" is their "MRR" (recip_rank over the top 100).
REFERENCE = {
    "cranfield": {
        MODEL: {"ndcg@10": 0.403, "recall@100": 0.785, "mrr@100": 0.553},
        "bm25": {"ndcg@10": 0.361, "recall@100": 0.723, "mrr@100": 0.506},
    },
    "debian-packages": {
        MODEL: {"ndcg@10": 0.750, "recall@100": 0.961, "mrr@100": 0.714},
        "bm25": {"ndcg@10": 0.770, "recall@100": 0.938, "mrr@100": 0.743},
    },
}
COLUMNS = ["ndcg@10", "recall@100", "mrr@10", "mrr@100", "map@10", "recall@10", "precision@10",
           "accuracy@1"]


def health(encoder: Encoder, dataset, batch_size: int) -> dict:
    """Embedding-space health of the split's (query, relevant document) pairs."""
    pairs = pairs_from_beir(dataset)
    anchors = encoder.encode([p.anchor for p in pairs], batch_size=batch_size)
    positives = encoder.encode([p.positive for p in pairs], batch_size=batch_size)
    report = embedding_health(anchors, positives, groups=[p.anchor_id for p in pairs]).to_dict()
    print("  health: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in report.items()), file=sys.stderr, flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--datasets", nargs="+", default=list(REFERENCE))
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "eval_baselines.json")
    args = parser.parse_args()

    encoder = Encoder.from_pretrained("default", max_seq_length=args.max_seq_length)
    results: dict[str, dict] = {}
    rows: dict[str, dict[str, float]] = {}
    for name in args.datasets:
        dataset = load_beir(args.data_root / name, split="test")
        results[name] = {}
        for system in (MODEL, "bm25"):
            start = time.perf_counter()
            if system == "bm25":
                result = bm25_retrieval(dataset)
            else:
                result = evaluate_retrieval(encoder, dataset, batch_size=args.batch_size,
                                            show_progress=False)
            seconds = time.perf_counter() - start
            reference = REFERENCE.get(name, {}).get(system, {})
            results[name][system] = {
                "metrics": result.metrics, "num_queries": result.num_queries,
                "seconds": round(seconds, 1), "reference": reference,
                "delta_vs_reference": {m: result.metrics[m] - v for m, v in reference.items()},
            }
            if system == MODEL:
                results[name][system]["health"] = health(encoder, dataset, args.batch_size)
            rows[f"{name} / {system}"] = result.metrics
            rows[f"{name} / {system} (reference)"] = reference
            print(f"{name} / {system}: {result.num_queries} queries, {len(dataset.corpus)} docs, "
                  f"{seconds:.1f} s", file=sys.stderr, flush=True)

    table = format_table(rows, COLUMNS)
    print(table)
    payload = {
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": __import__("torch").__version__},
        "model": MODEL, "max_seq_length": args.max_seq_length, "split": "test",
        "document": 'title + " " + text', "bm25": "bm25s, Lucene, k1 1.5, b 0.75, English stop words",
        "results": results, "table": table,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
