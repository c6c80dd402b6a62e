"""PyTorch's fused attention (scaled_dot_product_attention) against the written-out products, on the CPU.

Part 1: time of one attention call (forward, and forward + backward) at MiniLM's head shape
(12 heads of 32) for slabs of the packed forward (b texts of T tokens, padding keys masked), in fp32
and bf16, best of three rounds of ten calls each: torch's kernel against
`contrastkit.packing.written_out_attention` (no dropout). Part 2: whole training steps of the
default model without attention dropout (the demo's recipe; Cranfield batch 32, bf16 autocast and
fp32), the packed forward with torch's kernel or the written-out attention, and in bf16 the padded
forward (models that do not pack) with Hugging Face's "sdpa" or "eager" attention. Part 3: encoding
1,500 debian-packages documents (256 tokens, `Encoder.encode`, no graph) through the padded forward
with "sdpa" or "eager", bf16 and fp32, and in bf16 through the packed forward with torch's kernel or
the written-out attention. Each configuration of parts 2 and 3 in its own process (a
process that switched kernels between steps would time its cache effects too), taking turns.

    .venv/bin/python bench/attention_kernel.py [--steps 10] [--rounds 2] [--out attention_kernel]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from _common import call_ms, print_table, run_child, write_results

SHAPES = [(16, 128), (32, 64), (64, 32)]  # (texts b, tokens T): slabs of about 2,048 positions
ENCODE_TEXTS = 1500  # debian-packages documents encoded at 256 tokens (part 3)


def kernel_rows() -> list[dict]:
    import torch
    import torch.nn.functional as F

    from contrastkit.packing import written_out_attention

    torch.manual_seed(0)
    rows = []
    identity = torch.nn.Identity()
    for dtype in (torch.float32, torch.bfloat16):
        for backward in (False, True):
            for b, T in SHAPES:
                q, k, v = (torch.randn(b, 12, T, 32, dtype=dtype, requires_grad=backward) for _ in range(3))
                lengths = torch.randint(T // 2, T + 1, (b,))
                lengths[0] = T
                mask = (torch.arange(T)[None, :] < lengths[:, None])[:, None, None, :]

                def run(attend):
                    def go():
                        out = attend()
                        if backward:
                            out.sum().backward()
                    return go

                with torch.set_grad_enabled(backward):
                    fused = call_ms(run(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                               scale=32 ** -0.5)))
                    written = call_ms(run(lambda: written_out_attention(q, k, v, lengths, identity, 32 ** -0.5)))
                rows.append({"part": "kernel", "dtype": str(dtype).removeprefix("torch."),
                             "pass": "forward + backward" if backward else "forward", "texts": b, "tokens": T,
                             "torch_sdpa_ms": fused, "written_out_ms": written, "speedup": fused / written})
    return rows


def torch_kernel_in_packing() -> None:
    """This process's packed forward calls torch's fused attention wherever it would write attention out.

    Only for runs without attention dropout: the replacement drops no probabilities.
    """
    import torch.nn.functional as F

    import contrastkit.packing as packing
    from contrastkit.fast_softmax import key_padding

    packing.written_out_attention = (lambda q, k, v, key_lengths, dropout, scale: F.scaled_dot_product_attention(
        q, k, v, attn_mask=~key_padding(key_lengths, q.shape[2])[:, None, None, :], scale=scale))


def step_child(bf16: bool, kernel: str, steps: int) -> dict:
    import types

    import torch
    from throughput import make_trainer
    from vs_sentence_transformers import SETTINGS, training_pairs

    import contrastkit.packing as packing

    F = torch.nn.functional
    written = kernel == "written"
    if kernel in ("sdpa", "eager"):  # the padded forward, Hugging Face's attention
        trainer = make_trainer(training_pairs(SETTINGS[0]), 32, 16, bf16, 0.0, steps + 1, 128, packing=False)
        trainer._eager_attention = kernel == "eager"  # the trainer's own choice in bf16 on the CPU: eager
        return _timed(trainer, steps)
    if kernel.startswith("encode-"):  # without a graph: Encoder.encode, padded or packed forward
        from _common import debian_pairs

        from contrastkit.encoder import Encoder

        encoder = Encoder.from_pretrained("default", max_seq_length=256)
        texts = [p.positive for p in debian_pairs(ENCODE_TEXTS)]
        if kernel == "encode-packed-torch":  # torch's kernel in the packed forward, as before 2026-11-28
            torch_kernel_in_packing()
        elif kernel != "encode-packed-written":
            encoder.packing = False
            encoder.model.set_attn_implementation(kernel.removeprefix("encode-"))
        encoder.encode(texts[:64], bf16=bf16)  # warm-up
        t0 = time.perf_counter()
        encoder.encode(texts, bf16=bf16)
        return {"seconds": time.perf_counter() - t0, "texts": len(texts)}
    if written:  # the written-out attention in every precision
        packing.F = types.SimpleNamespace(**{**vars(F), "scaled_dot_product_attention": (
            lambda q, k, v, attn_mask, dropout_p, scale: packing.written_out_attention(
                q, k, v, attn_mask.flatten(1).sum(1), torch.nn.Identity(), scale))})
    else:  # torch's kernel in every precision (attention dropout is 0 here)
        torch_kernel_in_packing()
    return _timed(make_trainer(training_pairs(SETTINGS[0]), 32, 16, bf16, 0.0, steps + 1, 128), steps)


def _timed(trainer, steps: int) -> dict:
    from throughput import timed_step

    batches = trainer._batches(0)
    timed_step(trainer, batches[0])  # warm-up
    seconds = [timed_step(trainer, b) for b in batches[1:steps + 1]]
    return {"mean_step_s": statistics.mean(seconds), "steps": len(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="turns of each whole-step configuration")
    parser.add_argument("--out", default="attention_kernel")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(step_child(args.child[0] == "bf16", args.child[1], args.steps)))
        return
    rows = kernel_rows()
    print_table(rows, ["dtype", "pass", "texts", "tokens", "torch_sdpa_ms", "written_out_ms", "speedup"])
    times: dict[tuple[str, str], list[float]] = {}
    configs = [("bf16", "torch"), ("bf16", "written"), ("fp32", "torch"), ("fp32", "written"),
               ("bf16", "sdpa"), ("bf16", "eager"), ("bf16", "encode-sdpa"), ("bf16", "encode-eager"),
               ("fp32", "encode-sdpa"), ("fp32", "encode-eager"), ("bf16", "encode-packed-torch"),
               ("bf16", "encode-packed-written")]
    for _ in range(args.rounds):
        for precision, kernel in configs:
            result = run_child(__file__, ["--child", precision, kernel, "--steps", str(args.steps)])
            step = result.get("mean_step_s", result.get("seconds"))
            times.setdefault((precision, kernel), []).append(step)
            print(precision, kernel, round(step, 4), flush=True)
    for precision, forward, kernels in (("bf16", "packed", ("torch", "written")), ("fp32", "packed", ("torch", "written")),
                                        ("bf16", "padded (Hugging Face sdpa / eager)", ("sdpa", "eager")),
                                        ("bf16", "ENCODE", ("encode-sdpa", "encode-eager")),
                                        ("fp32", "ENCODE", ("encode-sdpa", "encode-eager")),
                                        ("bf16", "ENCODE PACKED", ("encode-packed-torch", "encode-packed-written"))):
        torch_s, written_s = (statistics.mean(times[(precision, k)]) for k in kernels)
        encode = forward.startswith("ENCODE")
        rows.append({"part": "encode" if encode else "training step", "dtype": precision,
                     "pass": (f"{ENCODE_TEXTS} debian texts at 256 tokens, packed forward, seconds (torch / written)"
                              if forward == "ENCODE PACKED" else
                              f"{ENCODE_TEXTS} debian texts at 256 tokens, padded forward, seconds (sdpa / eager)")
                     if encode else f"Cranfield batch 32, attention dropout 0, {forward} forward",
                     "torch_sdpa_step_s": torch_s, "written_out_step_s": written_s, "speedup": torch_s / written_s,
                     "runs": {k: times[(precision, k)] for k in kernels}})
    print_table(rows[-6:], ["dtype", "pass", "torch_sdpa_step_s", "written_out_step_s", "speedup"])
    print(f"wrote {write_results(args.out, rows, {'steps': args.steps, 'rounds': args.rounds})}")


if __name__ == "__main__":
    main()
