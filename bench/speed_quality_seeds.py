"""How much of the speed bench's nDCG gap is the training seed? vs_sentence_transformers' evaluated settings, over seeds.

bench/vs_sentence_transformers.py trains each tool once per setting (seed 0) and reports test
nDCG@10 beside pairs/s; at batch 32 on Cranfield (512 pairs, one epoch: 15-16 steps) both models
move little from the base, so a gap of a few thousandths may be the seed's. This trains both tools
on the very same pairs (for Cranfield, the bench's seed-0 sample of 512) with several training
seeds (batch order, dropout masks) and evaluates each model by the same code (contrastkit.evaluate)
on the data set's test queries. Setting 0: Cranfield batch 32 (about 3 minutes a seed for both
tools); setting 3: debian-packages batch 64 on 4,000 pairs (about 16 minutes a seed).

    .venv/bin/python bench/speed_quality_seeds.py [--setting 0] [--seeds 0 1 2 3] [--max-seq-length 128] [--attention-dropout 0]
        [--tools ours st] [--refill-epochs]   # ours with refill_epochs: as many steps as sentence-transformers
        [--bf16]                              # both tools under bf16 autocast (each tool's flag), as the speed bench
        [--out speed_quality_seeds]

`--attention-dropout model` keeps the model's own attention dropout for ours (0.1 for MiniLM), as
sentence-transformers always does and as the speed bench does.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import vs_sentence_transformers as vs
from _common import SHARED, print_table, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", type=int, choices=[0, 3], default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--attention-dropout", type=lambda v: None if v == "model" else float(v), default=0.0,
                        help="ours' dropout on attention probabilities, or 'model' for the model's own")
    parser.add_argument("--tools", nargs="+", choices=["ours", "st"], default=["ours", "st"])
    parser.add_argument("--refill-epochs", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="both tools with bf16 autocast")
    parser.add_argument("--out", default="speed_quality_seeds")
    args = parser.parse_args()

    from contrastkit.data import load_beir
    from contrastkit.encoder import Encoder
    from contrastkit.evaluate import evaluate_retrieval

    setting = vs.SETTINGS[args.setting]
    sample = vs.training_pairs(setting)  # seed 0's sample: the data stay fixed, only the training seed moves
    test = load_beir(SHARED / setting["data"], "test")
    rows = []
    for seed in args.seeds:
        for tool in args.tools:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "model"
                if tool == "ours":
                    pairs, _ = vs.train_ours(setting, args.max_seq_length, out, args.attention_dropout,
                                             refill_epochs=args.refill_epochs, seed=seed, pairs=sample,
                                             bf16=args.bf16)
                else:
                    pairs, _ = vs.train_st(setting, args.max_seq_length, out, seed=seed, pairs=sample,
                                           bf16=args.bf16)
                metrics = evaluate_retrieval(Encoder.from_pretrained(out, max_seq_length=256), test,
                                             show_progress=False).metrics
            rows.append({"seed": seed, "tool": tool, "steps": pairs // setting["batch"], "ndcg@10": metrics["ndcg@10"]})
            print(rows[-1], flush=True)
    summary = []
    for tool in args.tools:
        values = [r["ndcg@10"] for r in rows if r["tool"] == tool]
        summary.append({"tool": tool, "mean": statistics.mean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "min": min(values), "max": max(values)})
    print_table(rows, ["seed", "tool", "steps", "ndcg@10"])
    print_table(summary, ["tool", "mean", "stdev", "min", "max"])
    meta = {**vs.META, "setting": setting["setting"], "max_seq_length": args.max_seq_length,
            "ours_attention_dropout": "model's" if args.attention_dropout is None else args.attention_dropout,
            "ours_refill_epochs": args.refill_epochs, "precision": "bf16" if args.bf16 else "fp32",
            "seeds": args.seeds, "summary": summary,
            "data": setting["data"], "note": "training seeds vary; the training pairs are the same for every run"}
    print(f"wrote {write_results(args.out, rows, meta)}")


if __name__ == "__main__":
    main()
