"""Training throughput with and without length bucketing, fp32 and bf16, on real variable-length pairs.

Baseline: the whole batch padded to its longest text in one forward pass (what a plain loop does).
Ours: the batch cut into chunks of 8/16/32 texts sorted by token length, each padded to its own
longest text; without dropout on the attention probabilities (`attention_dropout = 0`), which lets
the fused attention kernel run in training; with the trainer's dropout kernel
(`contrastkit.fast_dropout`, `fast_dropout = true`) in place of torch's; and the packed forward
(`contrastkit/packing.py`, no padding in the dense layers), the trainer's default for BERT models,
which the other rows turn off. Default model, batch 64, max_seq_length 128,
debian-packages train pairs. All configurations step in turn (round-robin), so load from other
processes falls on all of them alike.

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


# (precision, chunk, attention dropout, fast dropout kernel): attention dropout is the model's own (0.1)
# unless a value is given; the first rows use torch's dropout kernel, as a plain loop does. All run the
# model's padded forward except PACKED, the trainer's default for BERT models (contrastkit/packing.py).
PACKED = "packed"
CONFIGS = [("fp32", None, None, False), ("fp32", 8, None, False), ("fp32", 16, None, False),
           ("fp32", 32, None, False), ("fp32", None, 0.0, False), ("fp32", 8, 0.0, False),
           ("fp32", 16, 0.0, False), ("fp32", 32, 0.0, False), ("bf16", None, None, False),
           ("bf16", 16, None, False), ("fp32", 16, None, True), ("fp32", 16, 0.0, True), ("fp32", 32, 0.0, True),
           ("fp32", PACKED, None, True), ("fp32", PACKED, 0.0, True),
           # bf16 autocast where the CPU has bf16 arithmetic (AVX-512 BF16, AMX): chunks as a plain loop
           # would cut them, and the trainer's default (packed, contrastkit's dropout)
           ("bf16", 8, None, False), ("bf16", 32, None, False), ("bf16", PACKED, None, True),
           ("bf16", PACKED, 0.0, True)]


def make_trainer(pairs, batch_size: int, chunk: int | None, bf16: bool, attention_dropout: float | None,
                 steps: int, seq: int, mini_batch: int | None = None, fast_dropout: bool = True,
                 packing: bool = True):
    """A Trainer on the default model in training mode (no report, no health records: only the step).

    packing=False: the model's padded forward, in chunks of `chunk` (the packed forward ignores chunk).
    """
    from contrastkit.encoder import Encoder
    from contrastkit.train import TrainConfig, Trainer

    encoder = Encoder.from_pretrained("default", max_seq_length=seq)
    config = TrainConfig(data="-", output_dir="/tmp/contrastkit-bench-throughput", batch_size=batch_size,
                         chunk_size=chunk, mini_batch_size=mini_batch, bf16=bf16, attention_dropout=attention_dropout,
                         max_steps=steps + 1, show_progress=False, warmup_ratio=0.0, report=False, health_sample=0,
                         fast_dropout=fast_dropout)
    encoder.packing = packing
    trainer = Trainer(config, encoder, pairs)
    encoder.train()
    return trainer


def timed_step(trainer, batch: list[int]) -> float:
    t0 = time.perf_counter()
    trainer._optimizer_step(trainer.compute_gradients(batch))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=128)
    args = parser.parse_args()

    pairs = debian_pairs(args.batch * (args.steps + 1) * 2)
    trainers = [make_trainer(pairs, args.batch, None if chunk == PACKED else chunk, precision == "bf16", dropout,
                             args.steps, args.max_seq_length, fast_dropout=fast, packing=chunk == PACKED)
                for precision, chunk, dropout, fast in CONFIGS]
    batches = trainers[0]._batches(0)  # the same seed and data: every trainer has the same batches
    for trainer in trainers:
        timed_step(trainer, batches[0])  # warm-up step, not timed
    # round-robin: step i of every configuration before step i + 1 of any, so a busy spell of the
    # machine hits all configurations alike instead of whichever happened to run then
    seconds = [0.0] * len(trainers)
    for b in batches[1:args.steps + 1]:
        for i, trainer in enumerate(trainers):
            seconds[i] += timed_step(trainer, b)
        print(f"step done: {[round(s, 1) for s in seconds]}", flush=True)
    rows = []
    for (precision, chunk, dropout, fast), trainer, secs in zip(CONFIGS, trainers, seconds):
        # the packed forward's dense layers see no padding (its attention pads within slabs: not counted)
        pad = 0.0 if chunk == PACKED else sum(padding_share(trainer, b, chunk)
                                               for b in batches[1:args.steps + 1]) / args.steps
        rows.append({"chunk": chunk or "none (one padded pass)", "precision": precision,
                     "attention_dropout": "model's (0.1)" if dropout is None else dropout,
                     "dropout_kernel": "contrastkit" if fast else "torch",
                     "pairs_per_s": args.steps * args.batch / secs, "padding_share": pad})
    base = rows[0]["pairs_per_s"]
    for r in rows:
        r["speedup_vs_unbucketed_fp32"] = r["pairs_per_s"] / base
    print_table(rows, ["precision", "chunk", "attention_dropout", "dropout_kernel", "pairs_per_s", "padding_share",
                       "speedup_vs_unbucketed_fp32"])
    meta = {"batch": args.batch, "steps": args.steps, "max_seq_length": args.max_seq_length,
            "timing": "round-robin over configurations, one step each in turn"}
    print(f"wrote {write_results('throughput', rows, meta)}")


if __name__ == "__main__":
    main()
