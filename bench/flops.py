"""Achieved FLOP/s of a training step against the machine's measured matmul peak, fp32 and bf16.

Peak: a large square matmul (n = 2048) timed in each precision, best of three; for fp32, by the
kernel the step's dense layers use (oneDNN where contrastkit.fast_linear picks it, else torch's). Step: a contrastkit
training step as bench/vs_sentence_transformers.py runs it (max_seq_length 128, the packed forward,
the trainer's default for BERT models on the CPU; fused attention, the trainer's dropout kernel) on 64 debian-packages pairs (short texts) and
on 32 Cranfield pairs (abstracts that fill the 128 tokens), its useful work counted from the real
(unpadded) tokens: 6 · N · tokens for the dense layers (forward 2N, backward 4N;
N = non-embedding parameters) plus the attention scores, 12 · layers · T² · d per sequence.
Padding and the recomputation of gradient caching are not counted as useful work.

    .venv/bin/python bench/flops.py [--steps 3] [--out flops]
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import best_rate, debian_pairs, print_table, write_results


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 10, rounds: int = 3,
                onednn: bool = False) -> float:
    """FLOP/s of an n × n matmul in `dtype`, the best of `rounds` timings.

    onednn: through oneDNN's linear (contrastkit.fast_linear), not torch's matmul (MKL for fp32 on x86).
    """
    from contrastkit.fast_linear import _onednn

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    product = (lambda: _onednn(a, b)) if onednn else (lambda: a @ b)
    return best_rate(product, 2 * n ** 3, repeats, rounds)


def step_peak(bf16: bool) -> tuple[float, str]:
    """(the matmul peak of what a training step multiplies with, its name): bf16, or fp32 by oneDNN or torch."""
    from contrastkit.fast_linear import onednn_linear_enabled

    if bf16:
        return matmul_peak(torch.bfloat16), "bf16"
    if onednn_linear_enabled():
        return matmul_peak(onednn=True), "fp32 oneDNN"
    return matmul_peak(), "fp32 torch"


def useful_flops(encoder, texts: list[str]) -> float:
    """Forward + backward FLOPs of the matmuls a training step needs for `texts`, padding not counted."""
    config = encoder.model.config
    dense = sum(p.numel() for name, p in encoder.model.named_parameters() if "embeddings" not in name)
    lengths = encoder.token_lengths(texts)
    attention = sum(12 * config.num_hidden_layers * t * t * config.hidden_size for t in lengths)
    return 6 * dense * sum(lengths) + attention


def measure(bf16: bool, steps: int, data: str = "debian-packages") -> dict:
    from contrastkit.encoder import Encoder
    from contrastkit.train import TrainConfig, Trainer
    from vs_sentence_transformers import SETTINGS, training_pairs

    batch_size = 64 if data == "debian-packages" else 32
    pairs = debian_pairs(batch_size * (steps + 1) * 2) if data == "debian-packages" else training_pairs(SETTINGS[0])
    encoder = Encoder.from_pretrained("default", max_seq_length=128)
    config = TrainConfig(data="-", output_dir="/tmp/contrastkit-bench-flops", batch_size=batch_size, chunk_size=16,
                         bf16=bf16, attention_dropout=0.0, max_steps=steps + 1, show_progress=False,
                         warmup_ratio=0.0, report=False, health_sample=0)
    trainer = Trainer(config, encoder, pairs)
    encoder.train()
    batches = trainer._batches(0)
    trainer.compute_gradients(batches[0])
    flops, t0 = 0.0, time.perf_counter()
    for batch in batches[1:steps + 1]:
        flops += useful_flops(encoder, [t for group in trainer._groups(batch) for t in group])
        trainer.compute_gradients(batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    peak, kernel = step_peak(bf16)
    achieved = flops / seconds
    return {"precision": "bf16" if bf16 else "fp32", "data": data, "matmul": kernel, "matmul_peak_gflops": peak / 1e9,
            "step_gflops": achieved / 1e9, "fraction_of_peak": achieved / peak,
            "pairs_per_s": steps * batch_size / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="flops", help="results name under bench/results/")
    args = parser.parse_args()
    rows = [measure(bf16, args.steps, data) for bf16 in (False, True) for data in ("debian-packages", "cranfield")]
    print_table(rows, ["precision", "data", "matmul", "matmul_peak_gflops", "step_gflops", "fraction_of_peak", "pairs_per_s"])
    print(f"wrote {write_results(args.out, rows)}")


if __name__ == "__main__":
    main()
