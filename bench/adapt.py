"""Self-supervised domain adaptation, measured: test nDCG@10 before / after adapting on the corpus alone.

    .venv/bin/python bench/adapt.py                       # both data sets, every strategy (> 1 h on 2 cores)
    .venv/bin/python bench/adapt.py --datasets cranfield --strategies crop dropout

For each data set the base model is evaluated once; then, for each strategy, a fresh copy of the base
model is adapted on pairs made from the corpus documents only (no query of any split is read for
training) and evaluated with the same settings on the test queries. Each finished run is appended to
bench/results/adapt.jsonl at once (partial results survive an interruption; a run already there is
skipped), and bench/results/adapt.json is rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from _common import RESULTS, SHARED, machine, print_table

from contrastkit.adapt import ADAPT_METRICS, AdaptConfig, evaluate_at, run_adapt  # noqa: E402
from contrastkit.data import load_beir  # noqa: E402
from contrastkit.data.selfsup import STRATEGIES, read_documents  # noqa: E402
from contrastkit.encoder import Encoder  # noqa: E402
from contrastkit.evaluate.retrieval import RetrievalResult  # noqa: E402

# The same short training budget on both: 10 steps of 64 pairs (640 documents' pairs seen; debian-packages
# draws them from a seeded sample of 2,000 of its 15,000 documents). No gradient caching here: at
# batch 64 it is not needed for memory, and it gives the same gradients (tests/train/test_grad_cache.py)
# for a third more compute. Why so short: 2 cores shared by four jobs ran a step of 64 in ~90 s and
# one debian-packages evaluation in ~30 min; the recipe's defaults (`contrastkit adapt`) are longer.
BUDGET = {"cranfield": dict(max_docs=None, max_steps=10, mini_batch_size=None),
          "debian-packages": dict(max_docs=2000, max_steps=10, mini_batch_size=None)}
COLUMNS = ["dataset", "strategy", "pairs", "steps", "ndcg@10_before", "ndcg@10_after", "delta", "wins", "losses",
           "sign_p", "train_s"]


def finished(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


def record(log: Path, row: dict) -> None:
    with log.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    rows = finished(log)
    (RESULTS / "adapt.json").write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows, COLUMNS)


def base_result(name: str, config: AdaptConfig, test) -> tuple[RetrievalResult, float]:
    """The base model on the test split: measured once, kept in bench/results/adapt_base_<name>.json."""
    path = RESULTS / f"adapt_base_{name}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        return RetrievalResult(saved["metrics"], saved["per_query"], run={}), saved["seconds"]
    started = time.perf_counter()
    base = evaluate_at(Encoder.from_pretrained(config.model), test, config.eval_max_seq_length, False)
    seconds = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps({**base.to_dict(), "seconds": seconds, "model": config.model,
                                "eval_max_seq_length": config.eval_max_seq_length}) + "\n")
    return base, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(BUDGET))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/contrastkit-adapt-bench"))
    parser.add_argument("--log", type=Path, default=RESULTS / "adapt.jsonl")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a crowded machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "adapt.meta.json").write_text(json.dumps(machine(), indent=2) + "\n")
    for name in args.datasets:
        folder = SHARED / name
        done = {row["strategy"] for row in finished(args.log) if row["dataset"] == name}
        todo = [s for s in args.strategies if s not in done]
        if not todo:
            continue
        has_titles = any(doc.title for doc in read_documents(folder))
        test = load_beir(folder, "test")
        base_config = AdaptConfig(corpus=str(folder), seed=0, show_progress=False, eval_max_seq_length=256,
                                  **BUDGET[name])
        base, base_s = base_result(name, base_config, test)
        print(f"{name}: base nDCG@10 {base.metrics['ndcg@10']:.3f} ({base_s} s)", file=sys.stderr, flush=True)
        for strategy in todo:
            row = {"dataset": name, "strategy": strategy, "base_eval_s": base_s}
            if strategy == "title-body" and not has_titles:
                record(args.log, {**row, "skipped": "the corpus has no titles"})
                continue
            config = AdaptConfig(**{**vars(base_config), "strategy": strategy,
                                    "output_dir": str(args.runs_dir / f"{name}-{strategy}"), "eval_data": str(folder)})
            out = run_adapt(config, echo=lambda line: print(line, file=sys.stderr, flush=True), before=base)
            change = out["ndcg@10_change"]
            row.update(documents=out["documents"], pairs=out["pairs"], steps=out["steps"], batch=config.batch_size,
                       mini_batch=config.mini_batch_size, max_seq_length=config.max_seq_length,
                       eval_max_seq_length=config.eval_max_seq_length, lr=config.lr, temperature=config.temperature,
                       **{f"{m}_before": out["metrics"]["before"][m] for m in ADAPT_METRICS},
                       **{f"{m}_after": out["metrics"]["after"][m] for m in ADAPT_METRICS},
                       delta=change["delta"], wins=change["wins"], losses=change["losses"],
                       sign_p=change["sign_test_p"], train_s=out["timings"]["train_s"],
                       eval_after_s=out["timings"]["evaluate_after_s"], queries=base.num_queries,
                       date=machine()["date"])
            record(args.log, row)


if __name__ == "__main__":
    main()
