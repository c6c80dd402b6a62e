"""Achieved FLOP/s of a training step against the machine's measured matmul peak, fp32 and bf16.

Peak: a large square matmul (n = 2048) timed in each precision, best of three; for fp32, by the
kernel the step's dense layers use (oneDNN where contrastkit.fast_linear picks it, else torch's). Step: a contrastkit
training step as bench/vs_sentence_transformers.py runs it (max_seq_length 128, the packed forward,
the trainer's default for BERT models on the CPU; fused attention, the trainer's dropout kernel) on 64 debian-packages pairs (short texts) and
on 32 Cranfield pairs (abstracts that fill the 128 tokens), its useful work counted from the real
(unpadded) tokens: 6 · N · tokens for the dense layers (forward 2N, backward 4N;
N = non-embedding parameters) plus the attention scores, 12 · layers · T² · d per sequence.
Padding and the recomputation of gradient caching are not counted as useful work.

Hardware peak: what the cores' multiply-add instructions can do at all (bench/hardware_peak.cpp:
independent chains of vdpbf16ps or fp32 FMA, no memory traffic, on torch's threads), the ceiling
that no kernel passes; the matmul peak is what oneDNN reaches of it on a large product.

    .venv/bin/python bench/flops.py [--steps 3] [--out flops]
"""

from __future__ import annotations

import argparse
import ctypes
import time
from pathlib import Path

import torch

from _common import best_rate, debian_pairs, print_table, write_results


WARM_UP = 2  # untimed steps before the timed ones


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 10, rounds: int = 3,
                onednn: bool = False) -> float:
    """FLOP/s of an n × n matmul in `dtype`, the best of `rounds` timings.

    onednn: through oneDNN's linear (contrastkit.fast_linear), not torch's matmul (MKL for fp32 on x86).
    """
    from contrastkit.fast_linear import _onednn

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    product = (lambda: _onednn(a, b)) if onednn else (lambda: a @ b)
    return best_rate(product, 2 * n ** 3, repeats, rounds)


def hardware_peak(bf16: bool, seconds: float = 0.5, rounds: int = 3) -> float | None:
    """FLOP/s of the cores' multiply-add instructions (bench/hardware_peak.cpp) on torch's threads, the
    best of `rounds` calls of about `seconds`; None where the CPU lacks the AVX-512 flags the probe is
    built with (and, for bf16, AVX-512 BF16) or there is no compiler."""
    from contrastkit.devices import cpu_flags
    from contrastkit.fused_attention import BF16_FLAG, CPU_FLAGS, build  # built as the attention kernel is

    if not CPU_FLAGS <= cpu_flags() or (bf16 and BF16_FLAG not in cpu_flags()):
        return None
    try:
        library = ctypes.CDLL(str(build(Path(__file__).with_name("hardware_peak.cpp"))))
    except RuntimeError:
        return None
    library.peak_flop.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int]
    library.peak_flop.restype = ctypes.c_double
    threads, calibrate = torch.get_num_threads(), 1_000_000
    t0 = time.perf_counter()
    library.peak_flop(int(bf16), calibrate, threads)
    run = max(1, int(calibrate * seconds / (time.perf_counter() - t0)))
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        flop = library.peak_flop(int(bf16), run, threads)
        best = max(best, flop / (time.perf_counter() - t0))
    return best


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
    pairs = debian_pairs(batch_size * (steps + WARM_UP) * 2) if data == "debian-packages" else training_pairs(SETTINGS[0])
    encoder = Encoder.from_pretrained("default", max_seq_length=128)
    config = TrainConfig(data="-", output_dir="/tmp/contrastkit-bench-flops", batch_size=batch_size, chunk_size=16,
                         bf16=bf16, max_steps=steps + WARM_UP, show_progress=False,  # the model's attention dropout
                         warmup_ratio=0.0, report=False, health_sample=0)
    trainer = Trainer(config, encoder, pairs)
    encoder.train()
    batches = trainer._batches(0)
    for batch in batches[:WARM_UP]:  # first steps compile kernels (oneDNN's, numba's) and grow the allocator
        trainer._optimizer_step(trainer.compute_gradients(batch))
    timed = batches[WARM_UP:WARM_UP + steps]
    flops = sum(useful_flops(encoder, [t for group in trainer._groups(batch) for t in group]) for batch in timed)
    t0 = time.perf_counter()
    for batch in timed:
        trainer._optimizer_step(trainer.compute_gradients(batch))  # the trainer's step, optimizer included
    seconds = time.perf_counter() - t0
    peak, kernel = step_peak(bf16)
    hardware = hardware_peak(bf16)
    achieved = flops / seconds
    return {"precision": "bf16" if bf16 else "fp32", "data": data, "matmul": kernel, "matmul_peak_gflops": peak / 1e9,
            "hardware_peak_gflops": hardware / 1e9 if hardware else None,
            "step_gflops": achieved / 1e9, "fraction_of_peak": achieved / peak,
            "fraction_of_hardware_peak": achieved / hardware if hardware else None,
            "pairs_per_s": steps * batch_size / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="flops", help="results name under bench/results/")
    args = parser.parse_args()
    rows = [measure(bf16, args.steps, data) for bf16 in (False, True) for data in ("debian-packages", "cranfield")]
    print_table(rows, ["precision", "data", "matmul", "matmul_peak_gflops", "hardware_peak_gflops", "step_gflops",
                       "fraction_of_peak", "fraction_of_hardware_peak", "pairs_per_s"])
    print(f"wrote {write_results(args.out, rows)}")


if __name__ == "__main__":
    main()
