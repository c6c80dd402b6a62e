"""The product against the probe: a plain PyTorch loop with length-sorted chunks, fp32 and bf16.

Issue #9 names a probe: "a plain loop with length-sorted chunks and bf16 already reached 2.65x on
short pairs here; the product should not be slower than that probe." This benchmark writes that
probe out (about 30 lines below: Hugging Face's AutoModel, mean pooling, InfoNCE at scale 20,
chunks of 16 texts sorted by token length, AdamW) and times one training step of each of these, on
the same batches, in turn (round-robin, so a busy spell of the machine falls on all alike):

- the probe in fp32 and under bf16 autocast;
- contrastkit's Trainer with its defaults (fp32, the model's attention dropout, our dropout kernel,
  the packed forward) and with the demo's recipe (attention dropout 0, which lets fused attention
  run), and the demo's recipe with packing off (the padded forward in length-sorted chunks of 16);
- sentence-transformers' MultipleNegativesRankingLoss step in fp32 and under bf16 autocast (its
  `bf16=True` flag is autocast): its model, its loss, AdamW; no data loader. And in fp32 with the
  attention dropout at 0 as in our demo's recipe, so that recipe can be set against the same one.

Default model, debian-packages train pairs (short: queries of about 11 tokens, descriptions of
about 70), batch 64, max_seq_length 128. Each row's pairs/s and its ratio to sentence-transformers'
fp32 step (its best setting on a CPU without bf16 units, with the model's attention dropout and with
none) and to the probe; on a CPU with bf16 units (AVX-512 BF16, AMX) its bf16 row is its best.

    .venv/bin/python bench/plain_loop.py [--steps 5] [--batch 64] [--out plain_loop]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from _common import debian_pairs, print_table, write_results

SCALE = 20.0  # 1 / temperature 0.05, sentence-transformers' default
LR = 2e-5
CHUNK = 16


def probe_step_fn(seq: int, bf16: bool) -> Callable[[list, list], None]:
    """The probe: a plain loop anyone would write, with length-sorted chunks (and bf16 autocast if asked)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from contrastkit.encoder import default_model_path

    path = default_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)

    def embed(texts: list[str]) -> torch.Tensor:
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=seq)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        pieces = []
        for start in range(0, len(order), CHUNK):
            batch = tokenizer([texts[i] for i in order[start:start + CHUNK]], padding=True, truncation=True,
                              max_length=seq, return_tensors="pt")
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pieces.append(torch.nn.functional.normalize((hidden.float() * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(pieces)[torch.argsort(torch.tensor(order))]

    def step(anchors: list[str], positives: list[str]) -> None:
        scores = embed(anchors) @ embed(positives).T * SCALE
        torch.nn.functional.cross_entropy(scores, torch.arange(len(anchors))).backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def st_step_fn(seq: int, bf16: bool, attention_dropout: float | None = None, model: str | None = None,
               device: str = "cpu") -> Callable[[list, list], None]:
    """One step of sentence-transformers' MNRL as its trainer runs it (its bf16 flag is autocast).

    attention_dropout: set on the model's attention probabilities, as ours can be (None: the model's 0.1).
    model: a sentence-transformers folder (None: the default model), loaded as fp32 on `device`.
    """
    import torch
    from sentence_transformers import SentenceTransformer, losses

    from contrastkit.encoder import default_model_path

    st = SentenceTransformer(model or str(default_model_path()), device=device, model_kwargs={"dtype": torch.float32})
    st.max_seq_length = seq
    if attention_dropout is not None:
        for module in st.modules():
            if type(module).__name__ == "BertSelfAttention":
                module.dropout.p = attention_dropout
    st.train()
    loss_fn = losses.MultipleNegativesRankingLoss(st, scale=SCALE)
    optimizer = torch.optim.AdamW(st.parameters(), lr=LR)

    def on_device(features: dict) -> dict:
        return {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}

    def step(anchors: list[str], positives: list[str]) -> None:
        features = [on_device(st.tokenize(anchors)), on_device(st.tokenize(positives))]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(features, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def ours_step_fn(pairs, batch: int, seq: int, attention_dropout: float | None,
                 packing: bool = True, bf16: bool = False) -> Callable[[list, list], None]:
    """contrastkit's Trainer step (compute_gradients + optimizer step) with its defaults otherwise.

    packing=False: the model's padded forward in length-sorted chunks of CHUNK, as before packing.
    bf16: the trainer's bf16 autocast (`bf16: true`).
    """
    from throughput import make_trainer

    trainer = make_trainer(pairs, batch, CHUNK, bf16, attention_dropout, steps=1000, seq=seq, packing=packing)
    index = {(e.anchor, e.positive): i for i, e in enumerate(trainer.examples)}

    def step(anchors: list[str], positives: list[str]) -> None:
        trainer._optimizer_step(trainer.compute_gradients([index[a, p] for a, p in zip(anchors, positives)]))
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--out", default="plain_loop", help="results name under bench/results/")
    args = parser.parse_args()

    import torch

    torch.manual_seed(0)
    pairs = debian_pairs(args.batch * (args.steps + 1))
    seq = args.max_seq_length
    tools = {
        "probe, fp32": probe_step_fn(seq, bf16=False),
        "probe, bf16 autocast": probe_step_fn(seq, bf16=True),
        "contrastkit defaults (fp32)": ours_step_fn(pairs, args.batch, seq, attention_dropout=None),
        "contrastkit defaults, bf16 autocast": ours_step_fn(pairs, args.batch, seq, attention_dropout=None, bf16=True),
        "contrastkit, demo recipe (fp32, attention dropout 0)": ours_step_fn(pairs, args.batch, seq, 0.0),
        "contrastkit, demo recipe, no packing (padded chunks of 16)": ours_step_fn(pairs, args.batch, seq, 0.0,
                                                                                 packing=False),
        "sentence-transformers MNRL, fp32": st_step_fn(seq, bf16=False),
        "sentence-transformers MNRL, fp32, attention dropout 0": st_step_fn(seq, bf16=False, attention_dropout=0.0),
        "sentence-transformers MNRL, bf16 autocast": st_step_fn(seq, bf16=True),
    }
    batches = [pairs[i:i + args.batch] for i in range(0, len(pairs), args.batch)]
    seconds = dict.fromkeys(tools, 0.0)
    for n, batch in enumerate(batches):
        anchors, positives = [p.anchor for p in batch], [p.positive for p in batch]
        for name, step in tools.items():
            t0 = time.perf_counter()
            step(anchors, positives)
            if n:  # the first batch warms every tool up, untimed
                seconds[name] += time.perf_counter() - t0
        print(f"batch {n} done: {[round(s, 1) for s in seconds.values()]}", flush=True)

    rate = {name: args.steps * args.batch / s for name, s in seconds.items()}
    st, probe = rate["sentence-transformers MNRL, fp32"], rate["probe, bf16 autocast"]
    st_fused = rate["sentence-transformers MNRL, fp32, attention dropout 0"]
    rows = [{"tool": name, "pairs_per_s": r, "x_st_fp32": r / st, "x_st_fp32_attention_dropout0": r / st_fused,
             "x_probe_bf16": r / probe} for name, r in rate.items()]
    print_table(rows, ["tool", "pairs_per_s", "x_st_fp32", "x_st_fp32_attention_dropout0", "x_probe_bf16"])
    meta = {"batch": args.batch, "steps": args.steps, "max_seq_length": seq, "chunk": CHUNK, "lr": LR,
            "data": "debian-packages train pairs", "timing": "round-robin, one step of each tool in turn; "
            "the first batch untimed"}
    print(f"wrote {write_results(args.out, rows, meta)}")


if __name__ == "__main__":
    main()
