"""The fused attention kernel (contrastkit/fused_attention.py) against the written-out attention it replaces.

Part 1: one slab's attention with FastDropout (p = 0.1) at MiniLM's shape (12 heads of 32), forward and
forward + backward, best of three rounds of ten calls: the kernel (q, k, v read from the packed
projection, context written into packed rows) against the written-out path (layout copy into padded
per-head blocks, q kᵀ, the softmax + dropout pass, the product with v, the copy back). Slabs: 16 × 128
tokens (Cranfield's documents), 32 × 64, 64 × 32, and 40 texts of 8-40 tokens (queries). Part 2: whole
training steps of the default model with the model's attention dropout (Cranfield batch 32, debian
batch 64), the kernel on or off (CONTRASTKIT_FUSED_ATTENTION), each run its own process, taking turns.
Part 3: `encode` of Cranfield's 1,400 abstracts (batch 32, max_seq_length 256; out of training the kernel
runs without dropout), the same way.
Both parts in bf16 (autocast; the kernel's bf16 pass needs AVX-512 BF16) or fp32 (`--precision`;
results in fused_attention.json and fused_attention_fp32.json).

    .venv/bin/python bench/fused_attention.py [--precision bf16|fp32] [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from _common import call_ms, print_table, run_child, write_results

SLABS = {"16 x 128": [128] * 16, "32 x 64": [64] * 32, "64 x 32": [32] * 64,
         "40 x 8-40": sorted(((i * 37) % 33 + 8 for i in range(40)), reverse=True)}


def kernel_rows(bf16: bool) -> list[dict]:
    import torch

    from contrastkit import fused_attention
    from contrastkit.fast_dropout import FastDropout
    from contrastkit.packing import _HeadsToPacked, _PackedToHeads, plan_packing, written_out_attention

    dtype = torch.bfloat16 if bf16 else torch.float32
    if not fused_attention.computes_in(dtype):
        raise SystemExit(f"the fused kernel does not run in {dtype} here (it needs AVX-512, AVX-512 BF16 for bf16, "
                         "and a C++ compiler)")
    heads, d, rows = 12, 32, []
    dropout = FastDropout(0.1).train()
    for name, lengths in SLABS.items():
        slab = plan_packing([[1] * n for n in lengths], slab_tokens=100_000).slabs[0]
        generator = torch.Generator().manual_seed(0)
        qkv = torch.randn(slab.last, 3 * heads * d, generator=generator).to(dtype)
        grad = torch.randn(slab.last, heads * d, generator=generator).to(dtype)

        def fused():
            return fused_attention.packed_attention(qkv_in, [(slab.starts, slab.lengths, slab.width)], heads,
                                                    d ** -0.5, dropout)

        def written():
            q, k, v = _PackedToHeads.apply(qkv_in, slab, 3, heads, d)
            return _HeadsToPacked.apply(written_out_attention(q, k, v, slab.lengths, dropout, d ** -0.5), slab)

        for backward in (False, True):
            qkv_in = qkv.clone().requires_grad_(backward)

            def timed(attend):
                def go():
                    out = attend()
                    if backward:
                        out.backward(grad)
                return call_ms(go)

            with torch.set_grad_enabled(backward):
                ours, theirs = timed(fused), timed(written)
            flop = (7 if backward else 2) * 2 * heads * d * sum(n * n for n in lengths)
            rows.append({"part": "kernel", "precision": "bf16" if bf16 else "fp32", "slab": name,
                         "pass": "forward + backward" if backward else "forward",
                         "fused_ms": ours, "written_out_ms": theirs, "speedup": theirs / ours,
                         "fused_gflops": flop / ours / 1e6})
    return rows


def step_child(setting: int, steps: int, bf16: bool) -> dict:
    from throughput import make_trainer, timed_step
    from vs_sentence_transformers import SETTINGS, training_pairs

    s = SETTINGS[setting]
    trainer = make_trainer(training_pairs(s), s["batch"], 16, bf16, None, steps + 2, 128)
    batches = trainer._batches(0)
    for batch in batches[:2]:  # warm-up: oneDNN's primitives, the kernel's first build or load
        timed_step(trainer, batch)
    seconds = [timed_step(trainer, b) for b in batches[2:steps + 2]]
    return {"mean_step_s": statistics.mean(seconds), "steps": len(seconds)}


def encode_child(bf16: bool) -> dict:
    from contrastkit.data import load_beir
    from contrastkit.encoder import Encoder
    from vs_sentence_transformers import SHARED

    data = load_beir(SHARED / "cranfield", "test")
    texts = [data.doc_text(doc_id) for doc_id in data.corpus]
    encoder = Encoder.from_pretrained("default", max_seq_length=256)
    encoder.encode(texts[:64], bf16=bf16)  # warm-up: the kernel's load, oneDNN's primitives
    t0 = time.perf_counter()
    encoder.encode(texts, bf16=bf16)
    return {"seconds": time.perf_counter() - t0, "texts": len(texts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="turns of each whole-step configuration")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--child", nargs=1, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-encode", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    bf16 = args.precision == "bf16"
    if args.child_encode:
        print(json.dumps(encode_child(bf16)))
        return
    if args.child:
        print(json.dumps(step_child(args.child[0], args.steps, bf16)))
        return
    rows = kernel_rows(bf16)
    print_table(rows, ["slab", "pass", "fused_ms", "written_out_ms", "speedup", "fused_gflops"])
    from vs_sentence_transformers import SETTINGS

    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for setting in (0, 3):
            for kernel in ("1", "0"):
                env = {**os.environ, "CONTRASTKIT_FUSED_ATTENTION": kernel}
                t0 = time.perf_counter()
                step = run_child(__file__, ["--child", str(setting), "--steps", str(args.steps),
                                            "--precision", args.precision], env)["mean_step_s"]
                times.setdefault((setting, kernel), []).append(step)
                print(SETTINGS[setting]["setting"], "fused" if kernel == "1" else "written out", round(step, 4),
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    for setting in (0, 3):
        fused, written = (statistics.mean(times[(setting, k)]) for k in ("1", "0"))
        rows.append({"part": "training step", "slab": f"{SETTINGS[setting]['data']}: {SETTINGS[setting]['setting']}",
                     "pass": f"{args.precision} step, model's attention dropout", "fused_ms": 1e3 * fused,
                     "written_out_ms": 1e3 * written, "speedup": written / fused,
                     "runs_s": {"fused": times[(setting, "1")], "written out": times[(setting, "0")]}})
    print_table(rows[-2:], ["slab", "pass", "fused_ms", "written_out_ms", "speedup"])
    encodes: dict[str, list[float]] = {"1": [], "0": []}
    for _ in range(args.rounds):
        for kernel in ("1", "0"):
            env = {**os.environ, "CONTRASTKIT_FUSED_ATTENTION": kernel}
            encodes[kernel].append(run_child(__file__, ["--child-encode", "--precision", args.precision], env)["seconds"])
            print("encode", "fused" if kernel == "1" else "written out / torch", round(encodes[kernel][-1], 3), flush=True)
    fused, other = statistics.mean(encodes["1"]), statistics.mean(encodes["0"])
    rows.append({"part": "encode", "slab": "cranfield: 1,400 abstracts, batch 32, max_seq_length 256",
                 "pass": f"{args.precision} encode (no dropout)", "fused_ms": 1e3 * fused, "written_out_ms": 1e3 * other,
                 "speedup": other / fused, "runs_s": {"fused": encodes["1"], "written out / torch": encodes["0"]}})
    print_table(rows[-1:], ["slab", "pass", "fused_ms", "written_out_ms", "speedup"])
    name = "fused_attention" if bf16 else "fused_attention_fp32"
    print(f"wrote {write_results(name, rows, {'steps': args.steps, 'rounds': args.rounds, 'precision': args.precision})}")


if __name__ == "__main__":
    main()
