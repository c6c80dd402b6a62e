"""torch's fp32 matmul (MKL on x86) against oneDNN's, for the dense layers of a training step.

Part 1: GFLOP/s of the three products of a linear layer (forward x Wᵀ, input gradient dy W, weight
gradient dyᵀ x) at MiniLM's shapes (2,048 packed tokens: 384 → 1152 fused q/k/v, 384 → 384,
384 → 1536, 1536 → 384), best of three rounds each. Part 2: whole training steps of the default
model (the speed bench's Cranfield batch 32 and debian-packages batch 64 settings, fp32, the
model's attention dropout), with contrastkit.fast_linear on and off in alternating steps on the
same batches, so that both see the same machine load. Step time medians and their ratio.

    .venv/bin/python bench/linear_kernel.py [--steps 10] [--out linear_kernel]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch
import torch.nn.functional as F

from _common import best_rate, debian_pairs, peak_rss_gb, print_table, run_child, write_results

SHAPES = [(2048, 384, 1152), (2048, 384, 384), (2048, 384, 1536), (2048, 1536, 384)]  # tokens, in, out


def products() -> list[dict]:
    from contrastkit.fast_linear import _onednn

    rows = []
    for m, k, n in SHAPES:
        x, weight, grad = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n)
        flops = 2 * m * k * n
        for product, torch_fn, onednn_fn in (
                ("forward x Wᵀ", lambda: F.linear(x, weight), lambda: _onednn(x, weight)),
                ("input gradient dy W", lambda: grad @ weight, lambda: _onednn(grad, weight.t())),
                ("weight gradient dyᵀ x", lambda: grad.t() @ x, lambda: _onednn(grad.t(), x.t()))):
            ours, theirs = best_rate(onednn_fn, flops, 20) / 1e9, best_rate(torch_fn, flops, 20) / 1e9
            rows.append({"part": "product", "shape": f"{m}x{k}->{n}", "product": product,
                         "torch_gflops": theirs, "onednn_gflops": ours, "ratio": ours / theirs})
    return rows


def steps(data: str, count: int) -> dict:
    from contrastkit.fast_linear import onednn_linear_enabled
    from throughput import make_trainer, timed_step
    from vs_sentence_transformers import SETTINGS, training_pairs

    if data == "cranfield":
        trainer = make_trainer(training_pairs(SETTINGS[0]), 32, 16, False, None, count + 2, 128)
    else:
        trainer = make_trainer(debian_pairs(64 * (count + 2)), 64, 16, False, None, count + 2, 128)
    batches = trainer._batches(0)
    timed_step(trainer, batches[0])
    times: dict[str, list[float]] = {"onednn": [], "torch": []}
    for i, batch in enumerate(batches[1:count + 1]):
        for kernel in (("onednn", "torch") if i % 2 == 0 else ("torch", "onednn")):
            os.environ["CONTRASTKIT_ONEDNN_LINEAR"] = "1" if kernel == "onednn" else "0"
            onednn_linear_enabled.cache_clear()
            times[kernel].append(timed_step(trainer, batch))
    os.environ.pop("CONTRASTKIT_ONEDNN_LINEAR")
    onednn_linear_enabled.cache_clear()
    ours, theirs = statistics.median(times["onednn"]), statistics.median(times["torch"])
    return {"part": "step", "shape": data, "product": "forward + backward + AdamW",
            "torch_s": theirs, "onednn_s": ours, "ratio": theirs / ours, "steps_each": len(times["onednn"])}


def rss_child() -> None:
    from throughput import make_trainer, timed_step

    trainer = make_trainer(debian_pairs(64 * 8), 64, 16, False, None, 8, 128)
    for batch in trainer._batches(0)[:6]:
        timed_step(trainer, batch)
    print(json.dumps({"peak_rss_gb": peak_rss_gb()}))


def memory() -> list[dict]:
    from contrastkit.fast_linear import PRIMITIVE_CACHE_CAPACITY

    rows = []
    for kernel, capacity in (("torch", PRIMITIVE_CACHE_CAPACITY), ("onednn", PRIMITIVE_CACHE_CAPACITY),
                             ("onednn", "1024")):
        env = {**os.environ, "CONTRASTKIT_ONEDNN_LINEAR": "1" if kernel == "onednn" else "0",
               "ONEDNN_PRIMITIVE_CACHE_CAPACITY": capacity}
        rss = run_child(__file__, ["--rss-child"], env)["peak_rss_gb"]
        rows.append({"part": "memory", "shape": "debian-packages batch 64, 6 steps", "kernel": kernel,
                     "primitive_cache_capacity": int(capacity), "peak_rss_gb": rss})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per setting (half with each kernel)")
    parser.add_argument("--out", default="linear_kernel", help="results name under bench/results/")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return rss_child()
    rows = products()
    print_table(rows, ["shape", "product", "torch_gflops", "onednn_gflops", "ratio"])
    step_rows = [steps("cranfield", args.steps), steps("debian-packages", args.steps)]
    print_table(step_rows, ["shape", "torch_s", "onednn_s", "ratio", "steps_each"])
    memory_rows = memory()
    print_table(memory_rows, ["kernel", "primitive_cache_capacity", "peak_rss_gb"])
    print(f"wrote {write_results(args.out, rows + step_rows + memory_rows)}")


if __name__ == "__main__":
    main()
