"""Where the time of one training step goes: a per-operator profile, grouped into kinds of work.

One step of the default model on real debian-packages pairs (batch 64, max_seq_length 128), in the
two modes the trainer has: length-sorted chunks (one forward with graph + backward) and gradient
caching (a no-graph forward, then forward with graph + backward, per mini-batch); the chunks
again without dropout on the attention probabilities (the fused attention kernel); and that once more
with torch's dropout kernel instead of the trainer's (contrastkit.fast_dropout); these run the model's
padded forward. Last, the packed forward (contrastkit/packing.py, the trainer's default for BERT
models) without attention dropout. torch.profiler
gives the self time of every operator; they are grouped (matrix multiplies, attention, GELU,
LayerNorm, softmax, dropout, embedding, element-wise, the optimizer, the rest), and tokenisation is
timed separately. Shares are what this script reports: they hold even when the machine is busy,
where absolute seconds do not.

    .venv/bin/python bench/profile_step.py [--batch 64] [--chunk 16] [--steps 2]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from _common import debian_pairs, print_table, write_results

# operator name fragments → kind of work (first match wins; names are aten::… as the profiler shows them)
KINDS = [
    ("matmul", ("addmm", "aten::mm", "bmm", "matmul", "linear", "baddbmm")),
    ("attention (sdpa)", ("scaled_dot_product", "_flash_attention", "_efficient_attention", "attention")),
    ("softmax", ("softmax",)),
    ("gelu", ("gelu",)),
    ("layer norm", ("layer_norm",)),
    # torch's kernel; of contrastkit.fast_dropout only the random draw (random_) is named apart, its
    # comparison and torch.where count as element-wise
    ("dropout", ("dropout", "bernoulli", "native_dropout", "random_")),
    ("embedding", ("embedding",)),
    ("optimizer (AdamW)", ("_foreach", "adamw", "_fused_adam", "addcdiv", "lerp")),
    ("copies / layout", ("copy_", "contiguous", "clone", "transpose", "permute", "view", "reshape", "cat",
                         "index", "expand", "_to_copy", "to", "empty", "zeros", "fill_", "resize", "stack")),
    ("element-wise", ("add", "mul", "div", "sub", "where", "pow", "sqrt", "sum", "mean", "norm", "clamp",
                      "exp", "log", "tanh", "max", "sigmoid", "masked_fill", "neg", "rsqrt")),
]


# the trainer's defaults (contrastkit.fast_dropout) unless the mode says torch's dropout kernel
MODES = ("chunks", "gradient cache", "chunks, attention dropout 0", "chunks, attention dropout 0, torch dropout",
         "packed, attention dropout 0")


def kind_of(name: str) -> str:
    lower = name.lower()
    for kind, fragments in KINDS:
        if any(f in lower for f in fragments):
            return kind
    return "other operators"


def profile_step(mode: str, batch: int, chunk: int, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from throughput import make_trainer, timed_step

    torch.manual_seed(0)
    pairs = debian_pairs(batch * (steps + 1) * 2)
    cached = mode == "gradient cache"
    trainer = make_trainer(pairs, batch, None if cached else chunk, False,
                           0.0 if "attention dropout 0" in mode else None, steps, 128,
                           mini_batch=chunk if cached else None, fast_dropout="torch dropout" not in mode,
                           packing=mode.startswith("packed"))
    encoder = trainer.encoder
    batches = trainer._batches(0)
    timed_step(trainer, batches[0])  # warm-up (allocations, token lengths), not profiled
    texts = [t for b in batches[1:steps + 1] for g in trainer._groups(b) for t in g]
    t0 = time.perf_counter()
    for i in range(0, len(texts), chunk):
        encoder.tokenize(texts[i:i + chunk])
    tokenize_s = time.perf_counter() - t0

    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[1:steps + 1]:
            timed_step(trainer, b)
    wall = time.perf_counter() - started
    by_kind: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        by_kind[kind_of(event.key)] += event.self_cpu_time_total / 1e6
    by_kind["tokenisation"] = tokenize_s  # measured outside the profiler, on the same texts
    accounted = sum(by_kind.values())
    by_kind["python / framework overhead"] = max(0.0, wall + tokenize_s - accounted)
    total = sum(by_kind.values())
    return {"mode": mode, "batch": batch, "chunk": chunk, "steps": steps, "wall_s": wall + tokenize_s,
            "shares": {k: v / total for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    results = [profile_step(mode, args.batch, args.chunk, args.steps) for mode in MODES]
    kinds = sorted({k for r in results for k in r["shares"]}, key=lambda k: -results[0]["shares"].get(k, 0))
    rows = [{"kind of work": k, **{r["mode"]: f"{100 * r['shares'].get(k, 0):.1f} %" for r in results}}
            for k in kinds]
    print_table(rows, ["kind of work", *(r["mode"] for r in results)])
    for r in results:
        print(f"{r['mode']}: {r['wall_s'] / r['steps']:.1f} s per step of {r['batch']} pairs")
    print("results:", write_results("profile_step", results))


if __name__ == "__main__":
    main()
