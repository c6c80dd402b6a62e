"""Does the trainer on a CUDA GPU train as it does on the CPU? (A check for the device tool; CI has no GPU.)

On a GPU the trainer takes other paths than the tests on the CPU take: pinned, non-blocking copies
of token ids, text ids and masks; indices moved to the device before indexing; the optimizer's
skip of a non-finite step decided on the device (fused AdamW's found_inf); the padded forward
instead of the packed one. This runs the same steps on both devices, dropout off so that both
draw nothing, and compares:

1. the loss of each step and every parameter after the steps, without caching and with gradient
   caching (mini-batch 8);
2. a step whose gradient holds a nan on the GPU: parameters and optimizer state untouched, and a
   good step after it lands where a good step alone does.

    python bench/gpu_trainer_check.py --model PATH [--pairs debian_train_pairs.jsonl]
"""

from __future__ import annotations

import argparse
import math

from _common import SHARED, print_table, write_results


def train_steps(model: str, pairs, device: str, mini_batch: int | None, steps: int, batch: int):
    import torch

    from contrastkit.encoder import Encoder
    from contrastkit.train import TrainConfig, Trainer

    encoder = Encoder.from_pretrained(model, max_seq_length=128, torch_dtype=torch.float32).to(device)
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = TrainConfig(data="-", output_dir="/tmp/contrastkit-gpu-check", device=device, batch_size=batch,
                         mini_batch_size=mini_batch, attention_dropout=0.0, max_steps=steps, show_progress=False,
                         warmup_ratio=0.0, report=False, health_sample=0, lr=1e-4, seed=0,
                         bf16=False)  # fp32 on both devices: the comparison is of the same arithmetic
    trainer = Trainer(config, encoder, pairs)
    encoder.train()
    losses = []
    for step in range(steps):
        record = trainer._optimizer_step(trainer.compute_gradients(list(range(step * batch, (step + 1) * batch))))
        losses.append(record["loss"])
    return losses, {n: p.detach().cpu() for n, p in encoder.named_parameters()}


def nonfinite_check(device: str) -> dict:
    import torch

    from contrastkit.train.optim import adamw, step_if_finite

    def params():
        g = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(64, 32, generator=g).to(device)) for _ in range(3)]

    skipping, reference = params(), params()
    opt = adamw([{"params": skipping}], lr=1e-2, device=torch.device(device))
    ref = adamw([{"params": reference}], lr=1e-2, device=torch.device(device))
    good = [torch.full_like(p, 0.5) for p in skipping]
    for p in skipping:
        p.grad = torch.full_like(p, 0.5)
    skipping[1].grad[3, 4] = math.nan
    start = [p.detach().clone() for p in skipping]
    skipped = bool(step_if_finite(opt, torch.tensor(1.0, device=device), 1.0).skipped)
    untouched = all(torch.equal(p, s) for p, s in zip(skipping, start))
    steps_after_skip = [float(state["step"]) for state in opt.state.values()]
    for p, r, g in zip(skipping, reference, good):
        p.grad, r.grad = g.clone(), g.clone()
    step_if_finite(opt, torch.tensor(1.0, device=device), 1.0)
    step_if_finite(ref, torch.tensor(1.0, device=device), 1.0)
    return {"skipped": skipped, "parameters untouched": untouched, "state steps after the skip": steps_after_skip,
            "then a good step: max |diff| to a good step alone": max(float((p - r).detach().abs().max())
                                                                   for p, r in zip(skipping, reference))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--pairs", default=str(SHARED / "debian-packages" / "train_pairs.jsonl"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import torch

    from contrastkit.data import read_pairs
    from contrastkit.encoder import Encoder

    pairs = read_pairs(args.pairs)[:args.steps * args.batch]
    rows = []
    for mini_batch in (None, 8):
        cpu_losses, cpu_params = train_steps(args.model, pairs, "cpu", mini_batch, args.steps, args.batch)
        dev_losses, dev_params = train_steps(args.model, pairs, args.device, mini_batch, args.steps, args.batch)
        start = {n: p.detach() for n, p in Encoder.from_pretrained(args.model, torch_dtype=torch.float32).named_parameters()}
        moved = max(float((cpu_params[n] - start[n]).abs().max()) for n in start)
        rows.append({"setting": "no caching" if mini_batch is None else f"gradient caching, mini-batch {mini_batch}",
                     "cpu losses": " ".join(f"{x:.5f}" for x in cpu_losses),
                     "gpu losses": " ".join(f"{x:.5f}" for x in dev_losses),
                     "max |param diff| cpu vs gpu": max(float((cpu_params[n] - dev_params[n]).abs().max()) for n in cpu_params),
                     "max |param change| by training": moved})
    print_table([{k: f"{v:.1e}" if isinstance(v, float) else v for k, v in r.items()} for r in rows], list(rows[0]))
    nonfinite = nonfinite_check(args.device)
    print(nonfinite)
    meta = {"device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
            "torch": torch.__version__, "nonfinite": nonfinite, "steps": args.steps, "batch": args.batch}
    print(f"wrote {write_results('gpu_trainer_check', rows, meta)}")


if __name__ == "__main__":
    main()
