"""Training throughput with and without length bucketing, fp32 and bf16, on real variable-length pairs.

Baseline: the whole batch padded to its longest text in one forward pass (what a plain loop does).
Ours: the batch cut into chunks of 8/16/32 texts sorted by token length, each padded to its own
longest text. Default model, batch 64, max_seq_length 128, debian-packages train pairs.

    .venv/bin/python bench/throughput.py [--steps 4] [--batch 64]
"""

from __future__ import annotations

import argparse
import time

from _common import debian_pairs, print_table, write_results


def padding_share(trainer, batch: list[int], chunk: int | None) -> float:
    from contrastkit.train.grad_cache import length_sorted_chunks

    real = padded = 0
    for group in trainer._groups(batch):
        lengths = trainer._token_length(group)
        for c in length_sorted_chunks(lengths, chunk):
            longest = max(lengths[i] for i in c)
            real += sum(lengths[i] for i in c)
            padded += longest * len(c)
    return 1 - real / padded


def measure(encoder, pairs, batch_size: int, chunk: int | None, bf16: bool, steps: int, seq: int) -> dict:
    from contrastkit.train import TrainConfig, Trainer

    config = TrainConfig(data="-", output_dir="/tmp/contrastkit-bench-throughput", batch_size=batch_size,
                         chunk_size=chunk, bf16=bf16, max_steps=steps + 1, show_progress=False, warmup_ratio=0.0)
    trainer = Trainer(config, encoder, pairs)
    encoder.train()
    batches = trainer._batches(0)
    trainer.compute_gradients(batches[0])  # warm-up step, not timed
    trainer.optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for b in batches[1:steps + 1]:
        trainer.compute_gradients(b)
        trainer._optimizer_step(__import__("torch").tensor(0.0))
    seconds = time.perf_counter() - t0
    pad = sum(padding_share(trainer, b, chunk) for b in batches[1:steps + 1]) / steps
    return {"chunk": chunk or "none (one padded pass)", "precision": "bf16" if bf16 else "fp32",
            "pairs_per_s": steps * batch_size / seconds, "padding_share": pad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=128)
    args = parser.parse_args()

    from contrastkit.encoder import Encoder

    pairs = debian_pairs(args.batch * (args.steps + 1) * 2)
    rows = []
    for bf16 in (False, True):
        for chunk in (None, 8, 16, 32):
            encoder = Encoder.from_pretrained("default", max_seq_length=args.max_seq_length)
            rows.append(measure(encoder, pairs, args.batch, chunk, bf16, args.steps, args.max_seq_length))
            print(rows[-1], flush=True)
    base = rows[0]["pairs_per_s"]
    for r in rows:
        r["speedup_vs_unbucketed_fp32"] = r["pairs_per_s"] / base
    print_table(rows, ["precision", "chunk", "pairs_per_s", "padding_share", "speedup_vs_unbucketed_fp32"])
    print(f"wrote {write_results('throughput', rows, {'batch': args.batch, 'steps': args.steps, 'max_seq_length': args.max_seq_length})}")


if __name__ == "__main__":
    main()
