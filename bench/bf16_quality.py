"""Does bf16 autocast change the quality of the trained model? The same fine-tune in fp32 and bf16.

Cranfield (train split → test; batch 32, 3 epochs, max_seq_length 256, lr 2e-5) and debian-packages
(first 4,000 train pairs → test; batch 64, 1 epoch, max_seq_length 128, lr 2e-5): the recipes of the
sentence-transformers reference fine-tunes in the data READMEs, InfoNCE with τ = 0.05. Test nDCG@10
evaluated in fp32 at max_seq_length 256. Runs on the GPU when there is one (bf16 autocast is slower
than fp32 on CPUs without AVX-512 BF16 / AMX).

    .venv/bin/python bench/bf16_quality.py [--model default] [--data-root ../shared/data] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPES = {
    "cranfield": dict(batch_size=32, epochs=3, max_seq_length=256, pairs=None),
    "debian-packages": dict(batch_size=64, epochs=1, max_seq_length=128, pairs=4000),
}


def run(model: str, root: Path, name: str, bf16: bool, out: Path) -> dict:
    import torch

    from contrastkit.data import load_beir, pairs_from_beir, read_pairs
    from contrastkit.encoder import Encoder
    from contrastkit.evaluate import evaluate_retrieval
    from contrastkit.train import TrainConfig, Trainer

    recipe = RECIPES[name]
    folder = root / name
    if recipe["pairs"]:
        pairs = read_pairs(folder / "train_pairs.jsonl")[:recipe["pairs"]]
    else:
        pairs = pairs_from_beir(load_beir(folder, "train"))
    encoder = Encoder.from_pretrained(model, max_seq_length=recipe["max_seq_length"], torch_dtype=torch.float32)
    config = TrainConfig(data="-", output_dir=str(out / f"{name}-{'bf16' if bf16 else 'fp32'}"),
                         batch_size=recipe["batch_size"], epochs=recipe["epochs"], lr=2e-5, warmup_ratio=0.1,
                         temperature=0.05, bf16=bf16, seed=0, checkpoint_every=100_000, show_progress=False)
    trainer = Trainer(config, encoder, pairs)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    encoder.max_seq_length = 256
    metrics = evaluate_retrieval(encoder, load_beir(folder, "test"), show_progress=False).metrics
    return {"data": name, "precision": "bf16" if bf16 else "fp32", "device": str(trainer.device),
            "train_seconds": seconds, "pairs_per_s": trainer.total_steps * recipe["batch_size"] / seconds,
            "ndcg@10": metrics["ndcg@10"], "recall@100": metrics["recall@100"], "mrr@100": metrics["mrr@100"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data-root", type=Path, default=REPO / ".." / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/contrastkit-bf16"))
    args = parser.parse_args()
    rows = []
    for name in RECIPES:
        for bf16 in (False, True):
            rows.append(run(args.model, args.data_root, name, bf16, args.work))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bf16_quality.json").write_text(json.dumps(rows, indent=2) + "\n")
    for r in rows:
        print(f"{r['data']:16s} {r['precision']}  nDCG@10 {r['ndcg@10']:.4f}  R@100 {r['recall@100']:.4f}  "
              f"{r['pairs_per_s']:.1f} pairs/s on {r['device']}")


if __name__ == "__main__":
    main()
