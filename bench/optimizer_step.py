"""The optimizer step around a training step: AdamW kernels and the non-finite check, in milliseconds.

On the default model's 22.7 M parameters with random gradients: torch's default (foreach) AdamW
against its fused kernel (contrastkit.train.optim.adamw; Hugging Face's Trainer, so
sentence-transformers, also uses the fused one), and checking each gradient for inf/nan on its
own (what the trainers did before) against one global norm, which clipping needs anyway
(contrastkit.train.optim.step_if_finite).

    .venv/bin/python bench/optimizer_step.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from _common import print_table, write_results


def milliseconds(fn: Callable[[], object], repeats: int) -> float:
    """The median of `repeats` timed calls after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import torch
    from transformers import AutoModel

    from contrastkit.encoder import default_model_path
    from contrastkit.train.optim import adamw, step_if_finite

    model = AutoModel.from_pretrained(default_model_path())
    params = list(model.parameters())
    torch.manual_seed(0)
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    grads = [p.grad.clone() for p in params]

    def restore_grads() -> None:  # clipping scales them in place: every call starts from the same ones
        for p, g in zip(params, grads):
            p.grad.copy_(g)

    cpu = torch.device("cpu")
    foreach, fused = torch.optim.AdamW(params, lr=1e-5), adamw([{"params": params}], 1e-5, cpu)
    no_op = torch.optim.SGD(params, lr=0.0)
    loss = torch.tensor(1.0)
    rows = [
        {"operation": "AdamW, torch default (foreach)", "ms": milliseconds(foreach.step, args.repeats)},
        {"operation": "AdamW, fused (ours)", "ms": milliseconds(fused.step, args.repeats)},
        {"operation": "inf/nan check, gradient by gradient (before)",
         "ms": milliseconds(lambda: all(torch.isfinite(p.grad).all() for p in params), args.repeats)},
        {"operation": "clip_grad_norm_ (before: after the check)",
         "ms": milliseconds(lambda: (torch.nn.utils.clip_grad_norm_(params, 1.0), restore_grads()), args.repeats)},
        {"operation": "one norm: check and clip (ours, step_if_finite with lr 0)",
         "ms": milliseconds(lambda: (step_if_finite(no_op, loss, 1.0), restore_grads()), args.repeats)},
    ]
    restore_ms = milliseconds(restore_grads, args.repeats)
    for row in rows[3:]:
        row["ms"] -= restore_ms  # the copy back is the benchmark's, not the step's
    before = rows[0]["ms"] + rows[2]["ms"] + rows[3]["ms"]
    after = rows[1]["ms"] + rows[4]["ms"]
    rows.append({"operation": "whole step before (foreach AdamW + check + clip)", "ms": before})
    rows.append({"operation": "whole step now (fused AdamW + one norm)", "ms": after})
    print_table(rows, ["operation", "ms"])
    print(f"the optimizer step: {before:.0f} ms -> {after:.0f} ms ({before / after:.1f}x)")
    meta = {"parameters": sum(p.numel() for p in params), "repeats": args.repeats, "timing": "median",
            "torch_threads": torch.get_num_threads()}
    print(f"wrote {write_results('optimizer_step', rows, meta)}")


if __name__ == "__main__":
    main()
