"""The dropout kernel alone: contrastkit.fast_dropout against torch's CPU dropout, forward and backward.

Two activations of the default model's training step, p = 0.1, in training mode: a hidden state
[16, 128, 384] (a chunk of 16 texts of 128 tokens, hidden size 384) in fp32 and in bf16, and the
attention probabilities of a Cranfield batch of 32 abstracts [32, 12, 128, 128] in bf16 (what the
packed forward drops under bf16 autocast). Three kernels:

- torch: `torch.nn.functional.dropout`;
- words + where: this module's kernel until 2026-11-28, kept here as the reference: 64-bit words
  from torch's Mersenne Twister, 16 bits per element, a bool mask, `torch.where` and a multiply,
  the mask saved for the backward;
- contrastkit: `contrastkit.fast_dropout` now: one compiled pass (SplitMix64 lanes, compare, scale;
  contrastkit/dropout_kernels.py), the backward redraws the mask from the seed.

Each kernel runs in turn, `--repeats` times per round, for `--rounds` rounds; the best round counts.

    .venv/bin/python bench/dropout_kernel.py [--rounds 5] [--repeats 20]
"""

from __future__ import annotations

import argparse
import functools
import time

from _common import print_table, write_results


def words_and_where(x, p: float):
    """The previous kernel: MT19937 words, a bool mask, where and multiply; the mask saved for the backward."""
    import torch

    from contrastkit.fast_dropout import drop_threshold

    threshold, keep_probability = drop_threshold(p)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    keep = words.view(torch.int16)[:n].view(x.shape) >= threshold - (1 << 15)
    return _keep_and_scale_function().apply(x, keep, 1.0 / keep_probability)


@functools.cache
def _keep_and_scale_function():
    """The previous kernel's autograd function, defined once (not inside the timed calls)."""
    import torch

    class KeepAndScale(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t, keep, scale):
            ctx.save_for_backward(keep)
            ctx.scale = scale
            return torch.where(keep, t, 0.0).mul_(scale)

        @staticmethod
        def backward(ctx, grad):
            (keep,) = ctx.saved_tensors
            return torch.where(keep, grad, 0.0).mul_(ctx.scale), None, None

    return KeepAndScale


def main() -> None:
    import torch

    from contrastkit.fast_dropout import fast_dropout, use_fast_dropout

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    torch.manual_seed(0)
    use_fast_dropout(torch.nn.Sequential(torch.nn.Dropout(0.1)))  # loads the compiled loops
    p = 0.1
    kernels = {"torch": lambda t: torch.nn.functional.dropout(t, p, True),
               "words + where": lambda t: words_and_where(t, p),
               "contrastkit": lambda t: fast_dropout(t, p, True)}
    rows = []
    for label, shape, dtype in (("hidden state [16, 128, 384]", (16, 128, 384), torch.float32),
                                ("hidden state [16, 128, 384]", (16, 128, 384), torch.bfloat16),
                                ("attention probabilities [32, 12, 128, 128]", (32, 12, 128, 128), torch.bfloat16)):
        x = torch.randn(shape).to(dtype).requires_grad_()
        grad = torch.randn(shape).to(dtype)

        def forward(kernel):
            with torch.no_grad():
                kernel(x)

        def forward_backward(kernel):
            kernel(x).backward(grad)

        best = {(name, step): float("inf") for name in kernels for step in ("forward", "forward + backward")}
        for _ in range(args.rounds):
            for name, kernel in kernels.items():
                for step, run in (("forward", forward), ("forward + backward", forward_backward)):
                    run(kernel)  # warm-up
                    t0 = time.perf_counter()
                    for _ in range(args.repeats):
                        run(kernel)
                    best[name, step] = min(best[name, step], (time.perf_counter() - t0) / args.repeats)
        for step in ("forward", "forward + backward"):
            ms = {name: 1e3 * best[name, step] for name in kernels}
            rows.append({"tensor": label, "dtype": str(dtype).removeprefix("torch."), "step": step,
                         "torch_ms": ms["torch"], "words_where_ms": ms["words + where"],
                         "contrastkit_ms": ms["contrastkit"], "vs_torch": ms["torch"] / ms["contrastkit"],
                         "vs_words_where": ms["words + where"] / ms["contrastkit"]})
    print_table(rows, ["tensor", "dtype", "step", "torch_ms", "words_where_ms", "contrastkit_ms", "vs_torch",
                       "vs_words_where"])
    meta = {"p": p, "rounds": args.rounds, "repeats": args.repeats,
            "timing": "best round of each kernel, kernels in turn", "threads": torch.get_num_threads()}
    print(f"wrote {write_results('dropout_kernel', rows, meta)}")


if __name__ == "__main__":
    main()
