"""The main job, end to end: evaluate, mine hard negatives, fine-tune, evaluate again, show the gain.

`contrastkit demo` runs it on the bundled Cranfield collection (a copy of ../shared/data/cranfield);
`--data` takes any BEIR folder, `--pairs` a pair file to train on instead of the folder's train split.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any
from pathlib import Path

import numpy as np

from contrastkit.files import write_text_whole

DEMO_DIR = Path(__file__).resolve().parent / "demo_data" / "cranfield"
TABLE_METRICS = ("ndcg@10", "recall@10", "mrr@10", "recall@100")


@dataclass
class DemoConfig:
    """The demo's recipe; `quick()` gives the 3-minute look at the same chain."""

    data: str = str(DEMO_DIR)
    pairs: str | None = None           # train on this pair file instead of the folder's train split
    model: str = "default"
    output_dir: str = "demo_output"
    eval_split: str = "test"
    train_split: str = "train"
    max_seq_length: int = 256          # evaluation and mining (as the reference figures)
    train_max_seq_length: int = 256    # training sees what evaluation sees (Cranfield abstracts pass 128 tokens)
    epochs: int = 3                    # 0.403 → 0.444-0.454 nDCG@10 in 11.8-15.4 min on 2 cores
                                       # (bench/results/cranfield_quality_vs_st.meta.json); 2 epochs at 128: 0.422
    max_steps: int | None = None
    max_train_pairs: int | None = None
    batch_size: int = 64
    mini_batch_size: int = 16
    lr: float = 3e-5
    temperature: float = 0.05
    num_hard_negatives: int = 1
    mine_range: str = "3:50"           # skip the very top ranks: likely unjudged relevant documents
    relative_margin: float | None = 0.05
    bf16: bool | None = None  # bf16 autocast in training; None: where the hardware multiplies bf16
    attention_dropout: float | None = 0.0  # fused attention in training: faster steps, same quality on Cranfield
                                           # (0.422 vs 0.421 nDCG@10 with the model's 0.1; docs/training.md)
    seed: int = 0
    train_overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields over the demo's own

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        settings = dict(epochs=1, max_train_pairs=256, train_max_seq_length=128, max_seq_length=128,
                        batch_size=32, mini_batch_size=16, lr=5e-5)
        settings.update(overrides)
        return cls(**settings)


def run_demo(config: DemoConfig, echo: Callable[[str], None] = print) -> dict:
    """Run the chain and return the before/after metrics (also written to output_dir/demo_results.json)."""
    from contrastkit.data import load_beir, pairs_from_beir, read_pairs
    from contrastkit.data.subset import sample_indices
    from contrastkit.encoder import Encoder
    from contrastkit.evaluate import bm25_retrieval, compare_results, evaluate_retrieval, format_table
    from contrastkit.mining import MiningConfig, mine_hard_negatives
    from contrastkit.report import write_report_or_note
    from contrastkit.report.record import clear_records, record_retrieval
    from contrastkit.errors import ConfigError
    from contrastkit.train import TrainConfig, Trainer
    from contrastkit.train.config import caching_mini_batch

    unknown = sorted(set(config.train_overrides) - {f.name for f in fields(TrainConfig)})
    if unknown:  # before a minute of evaluation, not after
        raise ConfigError(f"train_overrides: not TrainConfig fields: {', '.join(unknown)}")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - clock[0], 1)
        clock[0] = time.perf_counter()

    output = Path(config.output_dir)
    clear_records(output)
    test = load_beir(config.data, config.eval_split)
    if config.pairs:
        train_pairs = read_pairs(config.pairs)
        corpus = None
    else:
        train_ds = load_beir(config.data, config.train_split)
        train_pairs, corpus = pairs_from_beir(train_ds), train_ds.corpus
    if config.max_train_pairs and len(train_pairs) > config.max_train_pairs:  # a seeded sample over all queries
        train_pairs = [train_pairs[i] for i in sample_indices(len(train_pairs), config.max_train_pairs, config.seed)]
    echo(f"data: {config.data}: {len(test.corpus):,} documents, {len(test.split_queries):,} test queries, "
         f"{len(train_pairs):,} training pairs")

    encoder = Encoder.from_pretrained(config.model, max_seq_length=config.max_seq_length)
    base = TextMemo(encoder)  # the base model embeds each corpus text once, for evaluation and mining
    echo("\n[1/5] BM25 and the base model on the test queries")
    bm25 = bm25_retrieval(test)
    before = evaluate_retrieval(base, test)
    lap("evaluate_before_s")

    echo(f"\n[2/5] mining {config.num_hard_negatives} hard negative(s) per training pair with the base model")
    mined, summary = mine_hard_negatives(base, train_pairs, corpus, MiningConfig(
        num_negatives=config.num_hard_negatives, rank_range=config.mine_range,
        relative_margin=config.relative_margin, seed=config.seed, use_cache=False))
    echo(summary.format())
    lap("mine_s")
    encoder.max_seq_length = config.train_max_seq_length

    mini = caching_mini_batch(config.mini_batch_size, config.batch_size)
    how = f"gradient caching (mini-batch {mini})" if mini else "length-sorted chunks, no caching"
    settings = dict(
        data="(in memory)", output_dir=str(output / "model"), max_seq_length=config.train_max_seq_length,
        loss="infonce", temperature=config.temperature, num_hard_negatives=config.num_hard_negatives,
        batch_size=config.batch_size, mini_batch_size=mini, epochs=config.epochs,
        max_steps=config.max_steps, lr=config.lr, bf16=config.bf16, seed=config.seed,
        attention_dropout=config.attention_dropout,
        checkpoint_every=50, report=False)  # the demo's report, with its own before/after, goes in output
    train_config = TrainConfig(**{**settings, **config.train_overrides})
    masked = " (a query's other relevant documents masked)" if train_config.mask_known_positives else ""
    echo(f"\n[3/5] fine-tuning: InfoNCE (τ={train_config.temperature}), in-batch + hard negatives{masked}, "
         f"batch {train_config.batch_size} with {how}")
    try:
        trainer = Trainer(train_config, encoder, mined)
    except ConfigError as exc:  # the demo's flags, not the trainer's settings, are what the user can change
        raise ConfigError(f"{exc} (the demo's batch size is {train_config.batch_size}: "
                          f"contrastkit demo --batch-size N)") from exc
    echo(f"      {trainer.precision} on {trainer.device}"
         + (" (the hardware multiplies bf16; --fp32 or bf16=False: fp32)" if trainer.bf16 and config.bf16 is None
            else ""))
    model_dir = trainer.train()
    lap("train_s")

    echo("\n[4/5] the fine-tuned model on the same test queries")
    encoder.max_seq_length = config.max_seq_length
    after = evaluate_retrieval(encoder, test)
    lap("evaluate_after_s")

    rows = {"BM25": bm25.metrics, "base model": before.metrics, "fine-tuned": after.metrics}
    echo("\n[5/5] before / after (test split)\n")
    echo(format_table(rows, TABLE_METRICS))
    change = compare_results(before, after, ["ndcg@10"])["ndcg@10"]
    echo(f"\nnDCG@10 {before.metrics['ndcg@10']:.3f} → {after.metrics['ndcg@10']:.3f} "
         f"({change['delta']:+.3f}); queries better {change['wins']}, worse {change['losses']}, "
         f"same {change['ties']}")
    _show_example(test, before, after, echo)
    echo(f"\nmodel saved to {model_dir} (loads with SentenceTransformer('{model_dir}'))")
    timings["total_s"] = round(time.perf_counter() - started, 1)
    results = {"config": asdict(config), "metrics": rows, "ndcg@10_change": change, "timings": timings,
               "mining": summary.to_dict(), "training_steps": trainer.total_steps}
    output.mkdir(parents=True, exist_ok=True)
    write_text_whole(output / "demo_results.json", json.dumps(results, indent=2) + "\n")
    for role, result, label, step in (("bm25", bm25, "BM25", None), ("before", before, "base model", 0),
                                      ("after", after, "fine-tuned", trainer.total_steps)):
        record_retrieval(output, role, result, test, label=label, step=step)
    echo(f"results in {output / 'demo_results.json'}; took {timings['total_s'] / 60:.1f} min")
    write_report_or_note(output, echo)
    return results



class TextMemo:
    """An encoder that remembers each text's embedding: the same texts are never encoded twice.

    Valid only while the weights stay as they are (the demo drops it before training).
    """

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.name_or_path = encoder.name_or_path
        self.max_seq_length = encoder.max_seq_length
        self._memo: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str], batch_size: int = 32, show_progress: bool = False,
               prompt: str | None = None) -> np.ndarray:
        """The encoder's `encode` (its default prompt unless `prompt` says otherwise), remembered by
        the text as the model sees it."""
        prompt = self.encoder.resolve_prompt(prompt)
        texts = [prompt + t for t in texts] if prompt else list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            vectors = self.encoder.encode(missing, batch_size=batch_size, show_progress=show_progress, prompt="")
            self._memo.update(zip(missing, vectors))
        if not texts:
            return np.zeros((0, self.encoder.embedding_dim), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])

    def side_prompt(self, side: str) -> str:
        return self.encoder.side_prompt(side)

    def encode_queries(self, texts: list[str], **kwargs) -> np.ndarray:
        """As `Encoder.encode_queries`: the query prompt, so that the base model is measured as the
        fine-tuned one is (a prompted model was scored without its prompts before, with them after)."""
        return self.encode(texts, prompt=self.side_prompt("query"), **kwargs)

    def encode_documents(self, texts: list[str], **kwargs) -> np.ndarray:
        return self.encode(texts, prompt=self.side_prompt("document"), **kwargs)


def _show_example(test, before, after, echo: Callable[[str], None], top: int = 3) -> None:
    """The top results of the query whose nDCG@10 rose most: what the change looks like in a search."""
    gains = {q: after.per_query[q]["ndcg@10"] - before.per_query[q]["ndcg@10"] for q in after.per_query}
    query = max(sorted(gains), key=gains.get)
    echo(f"\nexample query: {test.queries[query]}")
    for name, result in (("base model", before), ("fine-tuned", after)):
        echo(f"  {name}:")
        for rank, (doc, score) in enumerate(result.run[query][:top], start=1):
            mark = "relevant" if test.qrels[query].get(doc, 0) > 0 else "        "
            title = " ".join((test.corpus[doc].get("title") or test.doc_text(doc)).split())[:90]
            echo(f"    {rank}. [{score:.3f}] {mark} {title}")
