"""Quality on debian-packages: our demo chain (mined hard negatives) against sentence-transformers' MNRL.

Both train on the first 4,000 pairs of ../shared/data/debian-packages/train_pairs.jsonl with the data
set README's recipe: batch 64, one epoch, lr 2e-5, τ 0.05 (scale 20), 128 tokens, no-duplicates
batches, fp32. Ours adds what the demo adds: one hard negative per pair, mined by the base model
among the 4,000 positives (ranks 3-50, relative margin 0.05), and fused attention. Both models are
evaluated by the same code (contrastkit.evaluate, 256 tokens) on the 1,000 test queries over 15,000
documents, and compared query by query (sign test).

    .venv/bin/python bench/debian_quality_vs_st.py             # ~25 min on 2 cores: both trainings
    .venv/bin/python bench/debian_quality_vs_st.py --ours DIR  # reuse a finished demo run's model/
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import SHARED, debian_pairs, print_table, write_results
from vs_sentence_transformers import SETTINGS, train_st

PAIRS = 4000
METRICS = ["ndcg@10", "recall@10", "mrr@10", "recall@100"]


def train_ours(out: Path) -> tuple[Path, dict]:
    from contrastkit.data import write_pairs
    from contrastkit.demo import DemoConfig, run_demo

    pairs = write_pairs(debian_pairs(PAIRS), out / "pairs.jsonl")
    result = run_demo(DemoConfig(data=str(SHARED / "debian-packages"), pairs=str(pairs), epochs=1,
                                 train_max_seq_length=128, batch_size=64, mini_batch_size=None, lr=2e-5,
                                 output_dir=str(out / "demo")))
    return out / "demo" / "model", result["timings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ours", help="a model folder from a finished demo run with this recipe")
    args = parser.parse_args()

    from contrastkit.data import load_beir
    from contrastkit.encoder import Encoder
    from contrastkit.evaluate import compare_results, evaluate_retrieval

    test = load_beir(SHARED / "debian-packages", "test")
    setting = next(s for s in SETTINGS if s["data"] == "debian-packages" and s.get("pairs") == PAIRS)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours_timings = None
        if args.ours:
            ours_dir = Path(args.ours)
            results_file = ours_dir.parent / "demo_results.json"
            if results_file.is_file():
                ours_timings = json.loads(results_file.read_text())["timings"]
        else:
            ours_dir, ours_timings = train_ours(tmp)
        _, st_seconds = train_st(setting, 128, tmp / "st")
        evaluated = {}
        for name, folder in (("contrastkit (demo chain, 1 mined negative)", ours_dir),
                             ("sentence-transformers MNRL", tmp / "st")):
            t0 = time.perf_counter()
            evaluated[name] = evaluate_retrieval(Encoder.from_pretrained(folder, max_seq_length=256), test,
                                                 show_progress=False)
            print(name, {m: round(evaluated[name].metrics[m], 4) for m in METRICS},
                  f"(evaluated in {time.perf_counter() - t0:.0f} s)", flush=True)
    (ours_name, ours), (st_name, st) = evaluated.items()
    change = compare_results(st, ours, METRICS)
    rows = [{"system": n, **{m: r.metrics[m] for m in METRICS}} for n, r in evaluated.items()]
    rows.append({"system": "ours − ST (sign test p)",
                 **{m: f"{change[m]['delta']:+.4f} ({change[m]['wins']} better, {change[m]['losses']} worse, "
                       f"p={change[m]['sign_test_p']:.2g})" for m in METRICS}})
    print_table(rows, ["system", *METRICS])
    meta = {"pairs": PAIRS, "recipe": "batch 64, 1 epoch, lr 2e-5, scale 20, 128 tokens, fp32, no duplicates",
            "ours_timings_s": ours_timings, "st_train_s": st_seconds,
            "comparison": {m: {k: v for k, v in change[m].items() if k not in ("top_wins", "top_losses")}
                           for m in METRICS}}
    print(f"wrote {write_results('debian_quality_vs_st', rows, meta)}")


if __name__ == "__main__":
    main()
