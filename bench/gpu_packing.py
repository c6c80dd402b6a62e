"""Training steps on a CUDA GPU: the packed forward, chunks, and sentence-transformers.

contrastkit/packing.py was built and measured on the 2-core CPU, where slabs of 2,048 padded
positions keep activations in cache, and length-sorted chunks of 16 were tuned there too. A GPU has
other costs (a kernel launch per slab or chunk, no cache to fit), so this checks, on a CUDA device
(lent through the device tool; CI has none):

1. equality: the default model's embeddings in eval mode, fp32 and under bf16 autocast, packed
   against padded, for 64 debian-packages pairs (short) and 64 Cranfield abstracts (256 tokens); and
   every parameter's gradient of a fixed projection of the embeddings (dropout off).
2. speed: one Trainer step (compute_gradients + optimizer step) as the trainer runs it on a GPU by
   default (the padded forward, one call per group), with padded length-sorted chunks of 16 (the
   CPU's default), and with the packed forward (slabs of 2,048; the product packs on the CPU only,
   so this row forces it), round-robin on the same batches once every tool has stepped through
   every batch untimed, for debian batch 64 and 256 at 128 tokens and Cranfield batch 64 at 256
   tokens, fp32 and bf16 autocast; sentence-transformers' MNRL step on the same batches as a
   reference. Attention dropout 0 for all (the demo's recipe); our trainer otherwise keeps its
   defaults, false-negative masking included (sentence-transformers has none).

    python bench/gpu_packing.py --model PATH [--pairs debian_train_pairs.jsonl] [--steps 10]

PATH: a sentence-transformers folder of the default model (weights may be stored in fp16; they are
loaded as fp32).
"""

from __future__ import annotations

import argparse
import time

from _common import SHARED, print_table, write_results

SCALE = 20.0
LR = 2e-5
DEVICE = "cuda"  # --device cpu runs the same script on the CPU, as a smoke test of the script itself


def load_encoder(model: str, seq: int, packed: bool = False):
    """The default model on DEVICE; packed=True runs the packed forward there too (the product packs on the CPU only)."""
    import torch

    from contrastkit.encoder import Encoder
    from contrastkit.packing import can_pack

    class PackingAnywhere(Encoder):
        @property
        def packs(self) -> bool:
            return self.packing and can_pack(self.model)

    encoder = Encoder.from_pretrained(model, max_seq_length=seq, torch_dtype=torch.float32).to(DEVICE)
    if packed:
        encoder.__class__ = PackingAnywhere
    return encoder


def max_diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def equality(model: str, texts: dict[str, list[str]]) -> list[dict]:
    """Packed vs padded embeddings (fp32, bf16 autocast) and gradients, on the GPU."""
    import torch

    rows = []
    for name, (seq, batch) in texts.items():
        encoder = load_encoder(model, seq, packed=True)
        encoder.eval()
        for bf16 in (False, True):
            with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
                encoder.packing = True
                packed = encoder.embed(batch)
                encoder.packing = False
                padded = encoder.embed(batch)
            rows.append({"check": f"{name}: embeddings, {'bf16 autocast' if bf16 else 'fp32'}",
                         "max_abs_diff": max_diff(packed, padded),
                         "min_cosine": float(torch.nn.functional.cosine_similarity(packed.float(), padded.float()).min())})
        projection = torch.randn(encoder.embedding_dim, generator=torch.Generator().manual_seed(0)).to(DEVICE)
        grads = {}
        for packing in (True, False):
            encoder.packing = packing
            encoder.model.zero_grad()
            (encoder.embed(batch) @ projection).square().sum().backward()
            grads[packing] = {n: p.grad.clone() for n, p in encoder.model.named_parameters() if p.grad is not None}
        # per tensor |Δg| / max(|g|, 1e-3 · |all g|): the attention key biases' gradients are zero in exact
        # arithmetic (softmax ignores a shift shared by a row), so their float noise has no scale of its own
        total = torch.cat([g.flatten() for g in grads[False].values()]).norm()
        worst = max(float((grads[True][n] - grads[False][n]).norm() / torch.maximum(grads[False][n].norm(), 1e-3 * total))
                    for n in grads[False])
        rows.append({"check": f"{name}: gradients, fp32 (worst relative error over {len(grads[False])} tensors)",
                     "max_abs_diff": worst, "min_cosine": None})
    return rows


def ours_step_fn(model: str, pairs, seq: int, bf16: bool, forward: str = "defaults"):
    """contrastkit's Trainer step; forward: "defaults", "chunks" (padded chunks of 16) or "packed"."""
    from contrastkit.train import TrainConfig, Trainer

    class ChunkedTrainer(Trainer):
        def _texts_per_forward(self) -> int | None:
            return self.config.chunk_size

    encoder = load_encoder(model, seq, packed=forward == "packed")
    config = TrainConfig(data="-", output_dir="/tmp/contrastkit-bench-gpu", device=DEVICE, batch_size=len(pairs),
                         bf16=bf16, attention_dropout=0.0, max_steps=1000, show_progress=False, warmup_ratio=0.0,
                         report=False, health_sample=0, lr=LR, temperature=1 / SCALE)
    trainer = (ChunkedTrainer if forward == "chunks" else Trainer)(config, encoder, pairs)
    encoder.train()
    index = {(e.anchor, e.positive): i for i, e in enumerate(trainer.examples)}

    def step(batch) -> None:
        trainer._optimizer_step(trainer.compute_gradients([index[p.anchor, p.positive] for p in batch]))
    return step


def st_step_fn(model: str, seq: int, bf16: bool):
    """sentence-transformers' MNRL step (bench/plain_loop.py's) on DEVICE, attention dropout 0 as ours."""
    from plain_loop import st_step_fn as st_pair_step_fn

    step = st_pair_step_fn(seq, bf16, attention_dropout=0.0, model=model, device=DEVICE)
    return lambda batch: step([p.anchor for p in batch], [p.positive for p in batch])


def synchronize() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def speed(model: str, name: str, pairs, batch: int, seq: int, steps: int) -> list[dict]:
    batches = [pairs[i:i + batch] for i in range(0, batch * steps, batch)]
    pairs = [p for b in batches for p in b]
    rows = []
    for bf16 in (False, True):
        precision = "bf16 autocast" if bf16 else "fp32"
        tools = {
            "contrastkit defaults (padded, one call per group)": ours_step_fn(model, pairs, seq, bf16),
            "contrastkit, padded, chunks of 16": ours_step_fn(model, pairs, seq, bf16, "chunks"),
            "contrastkit, packed, slabs of 2,048": ours_step_fn(model, pairs, seq, bf16, "packed"),
            "sentence-transformers MNRL": st_step_fn(model, seq, bf16),
        }
        # every tool first steps through every batch untimed: kernels, cuBLAS/cuDNN plans and the
        # allocator's blocks are then ready for each shape, whichever tool met it first
        for tool, step in tools.items():
            for b in batches:
                step(b)
        seconds = dict.fromkeys(tools, 0.0)
        for b in batches:
            for tool, step in tools.items():
                synchronize()
                t0 = time.perf_counter()
                step(b)
                synchronize()
                seconds[tool] += time.perf_counter() - t0
        ours = seconds["contrastkit defaults (padded, one call per group)"]
        st = seconds["sentence-transformers MNRL"]
        for tool, s in seconds.items():
            rows.append({"setting": f"{name}, batch {batch}, seq {seq}", "precision": precision, "tool": tool,
                         "pairs_per_s": steps * batch / s, "x_defaults": ours / s, "x_st": st / s})
        del tools
        print_table(rows[-4:], ["setting", "precision", "tool", "pairs_per_s", "x_defaults", "x_st"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", default=str(SHARED / "debian-packages" / "train_pairs.jsonl"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device

    import torch

    from contrastkit.data import load_beir, pairs_from_beir, read_pairs
    from contrastkit.demo import DEMO_DIR

    torch.manual_seed(0)
    debian = read_pairs(args.pairs)
    cranfield = pairs_from_beir(load_beir(DEMO_DIR, "train"))
    texts = {"debian pairs, seq 128": (128, [t for p in debian[:32] for t in (p.anchor, p.positive)]),
             "Cranfield abstracts, seq 256": (256, [p.positive for p in cranfield[:64]])}
    checks = equality(args.model, texts)
    print_table([{**c, "max_abs_diff": f"{c['max_abs_diff']:.1e}"} for c in checks], ["check", "max_abs_diff", "min_cosine"])
    rows = (speed(args.model, "debian", debian, 64, 128, args.steps)
            + speed(args.model, "debian", debian, 256, 128, args.steps)
            + speed(args.model, "Cranfield", cranfield, 64, 256, args.steps))
    meta = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE, "torch": torch.__version__, "steps": args.steps,
            "timing": "every tool steps through all batches untimed, then round-robin, one step of each tool in turn",
            "attention_dropout": 0.0, "lr": LR, "scale": SCALE, "equality": checks}
    print(f"wrote {write_results('gpu_packing', rows, meta)}")


if __name__ == "__main__":
    main()
