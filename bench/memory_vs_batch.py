"""Peak RSS of one gradient-cached training step vs batch size (each size in its own process).

Default model, max_seq_length 128, mini-batch 32, real debian-packages pairs. Goal: the peak at
batch 4096 is at most 1.25x the peak at batch 64 (memory independent of batch size). Precision: the
trainer's default (`bf16: null`: bf16 autocast where the hardware multiplies bf16, else fp32), or
fp32 / bf16 forced; each row says which one ran.

    .venv/bin/python bench/memory_vs_batch.py [--batches 64 256 1024 4096] [--mini-batch 32]
        [--precision default|fp32|bf16] [--out memory_vs_batch]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import peak_rss_gb, print_table, run_child, write_results


PRECISIONS = {"default": None, "fp32": False, "bf16": True}  # → TrainConfig.bf16


def one_step(batch: int, mini_batch: int, seq: int, precision: str = "default") -> dict:
    from _common import debian_pairs

    from contrastkit.encoder import Encoder
    from contrastkit.train import TrainConfig, Trainer

    pairs = debian_pairs(batch)
    encoder = Encoder.from_pretrained("default", max_seq_length=seq)
    config = TrainConfig(data="-", output_dir="/tmp/contrastkit-bench-memory", batch_size=batch,
                         mini_batch_size=mini_batch, max_steps=1, show_progress=False, warmup_ratio=0.0,
                         bf16=PRECISIONS[precision])
    trainer = Trainer(config, encoder, pairs)
    baseline = peak_rss_gb()
    encoder.train()
    t0 = time.perf_counter()
    trainer.compute_gradients(trainer._batches(0)[0])
    trainer.optimizer.step()
    seconds = time.perf_counter() - t0
    return {"batch": batch, "mini_batch": mini_batch, "max_seq_length": seq, "precision": trainer.precision,
            "peak_rss_gb": peak_rss_gb(),
            "rss_before_step_gb": baseline, "step_seconds": seconds, "pairs_per_s": batch / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--mini-batch", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="default",
                        help="the trainer's default (bf16 where the hardware has it), or fp32 / bf16 forced")
    parser.add_argument("--out", default="memory_vs_batch", help="results name in bench/results/")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_step(args.child, args.mini_batch, args.max_seq_length, args.precision)))
        return
    rows = []
    for batch in args.batches:
        rows.append(run_child(__file__, ["--child", str(batch), "--mini-batch", str(args.mini_batch),
                                         "--max-seq-length", str(args.max_seq_length),
                                         "--precision", args.precision]))
        print(f"batch {batch}: peak {rows[-1]['peak_rss_gb']:.3f} GB", flush=True)
    base = rows[0]["peak_rss_gb"]
    for r in rows:
        r["ratio_to_smallest"] = r["peak_rss_gb"] / base
    print_table(rows, ["batch", "mini_batch", "precision", "peak_rss_gb", "ratio_to_smallest", "step_seconds",
                       "pairs_per_s"])
    print(f"wrote {write_results(args.out, rows)}")


if __name__ == "__main__":
    main()
