"""Adapt an embedding model to a domain from its documents alone: self-supervised pairs + InfoNCE.

`contrastkit adapt --model M --corpus corpus.jsonl` reads the corpus (every problem named by file,
line and field before the model loads), makes one self-supervised pair per document with a strategy
of `contrastkit.data.selfsup` (default: Contriever's independent crops), fine-tunes with InfoNCE over
in-batch negatives and gradient caching, and saves a sentence-transformers model. With an evaluation
folder it measures nDCG@10 / Recall@10 / MRR@10 on the test queries before and after; no query, of
any split, is ever used for training. See docs/self_supervised.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


from contrastkit.data import Pair
from contrastkit.data.augment import MASK_TOKEN, parse_augmentation
from contrastkit.data.corpus import Document, read_documents
from contrastkit.data.selfsup import STRATEGIES, self_supervised_pairs
from contrastkit.data.subset import sample_indices
from contrastkit.errors import ConfigError
from contrastkit.files import save_files_whole, write_text_whole
from contrastkit.train.config import TrainConfig, caching_mini_batch

ADAPT_METRICS = ("ndcg@10", "recall@10", "mrr@10")


@dataclass
class AdaptConfig:
    """The self-supervised recipe; every field has a default that works on a laptop CPU."""

    corpus: str = ""                     # corpus JSONL (text, optional title / _id) or a BEIR folder
    model: str = "default"
    output_dir: str = "runs/adapt"
    strategy: str = "crop"               # dropout, crop, title-body, neighbours (docs/self_supervised.md)
    augment: str | None = None           # e.g. "word_deletion:0.1,span_masking:0.1", applied to each view
    max_docs: int | None = None          # train on a seeded sample of this many documents
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 64
    mini_batch_size: int | None = 16     # gradient caching: the memory of 16 pairs, the negatives of 64
                                         # (None, or a batch_size no larger: no caching)
    temperature: float = 0.05            # SimCSE's and Contriever's τ
    lr: float = 2e-5                     # an already trained model: small steps
    max_seq_length: int = 128            # training
    eval_data: str | None = None         # BEIR folder: before / after on its `eval_split` queries
    eval_split: str = "test"
    eval_max_seq_length: int | None = None  # evaluation; None: the model's own (256 for the default model)
    seed: int = 0
    show_progress: bool = True
    report: bool = True                  # report.html in output_dir (with the before / after when eval_data)
    resume: bool = False                 # continue a killed run from its newest checkpoint in output_dir

    def train_config(self) -> TrainConfig:
        """The trainer's settings for this recipe (InfoNCE, in-batch negatives only)."""
        return TrainConfig(model=self.model, data="(self-supervised pairs in memory)", output_dir=self.output_dir,
                           max_seq_length=self.max_seq_length, loss="infonce", temperature=self.temperature,
                           batch_size=self.batch_size, epochs=self.epochs,
                           mini_batch_size=caching_mini_batch(self.mini_batch_size, self.batch_size),
                           max_steps=self.max_steps, lr=self.lr, seed=self.seed,
                           show_progress=self.show_progress, checkpoint_every=100, report=self.report)

    def validate(self) -> "AdaptConfig":
        """Raise ConfigError (or DataError for a missing folder) for anything that cannot run; return self."""
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.max_docs is not None and self.max_docs < 1:
            raise ConfigError(f"max_docs must be at least 1 (or unset); got {self.max_docs}")
        if self.eval_data is not None and not Path(self.eval_data).is_dir():
            raise ConfigError(f"eval folder '{self.eval_data}' "
                              + ("is a file" if Path(self.eval_data).exists() else "does not exist")
                              + " (give a BEIR folder)")
        parse_augmentation(self.augment)
        self.train_config().validate(check_files=False)
        return self


def sample_documents(documents: list[Document], max_docs: int | None, seed: int) -> list[Document]:
    """A seeded sample of `max_docs` documents, in corpus order (all of them when there are fewer)."""
    if max_docs is None:
        return documents
    return [documents[i] for i in sample_indices(len(documents), max_docs, seed)]


def _mask_token(config: AdaptConfig) -> str | None:
    """The model's tokenizer's mask token, for span masking (its tokenizer alone is read; none asked: "[MASK]")."""
    if not config.augment or "span_masking" not in config.augment:
        return MASK_TOKEN
    from transformers import AutoTokenizer

    from contrastkit.encoder import resolve_model_path

    return AutoTokenizer.from_pretrained(str(resolve_model_path(config.model))).mask_token


def adapt_pairs(config: AdaptConfig) -> tuple[list[Document], list[Pair]]:
    """Read and check the corpus, sample it, and make the strategy's pairs (all before any model loads)."""
    documents = sample_documents(read_documents(config.corpus), config.max_docs, config.seed)
    pairs = self_supervised_pairs(documents, config.strategy, seed=config.seed,
                                  augment=parse_augmentation(config.augment, _mask_token(config)))
    if len(pairs) < config.batch_size:
        raise ConfigError(f"strategy {config.strategy!r} made {len(pairs)} pairs from {len(documents)} documents, "
                          f"fewer than one batch of {config.batch_size}; lower --batch-size")
    return documents, pairs


def evaluate_at(encoder, dataset, max_seq_length: int, show_progress: bool):
    """Retrieval metrics of `encoder` on `dataset` with texts cut at `max_seq_length` tokens."""
    from contrastkit.evaluate import evaluate_retrieval

    encoder.max_seq_length = max_seq_length
    return evaluate_retrieval(encoder, dataset, show_progress=show_progress)


def run_adapt(config: AdaptConfig, echo: Callable[[str], None] = print, *, before=None) -> dict:
    """Run the recipe; return (and write to output_dir/adapt_results.json) what it did and measured.

    `before`: the base model's RetrievalResult on the eval split, when already known (a benchmark
    running several strategies evaluates the base model once).
    """
    from contrastkit.data import load_beir
    from contrastkit.encoder import Encoder
    from contrastkit.evaluate import compare_results, format_table
    from contrastkit.train import Trainer

    config.validate()
    timings: dict[str, float] = {}
    documents, pairs = adapt_pairs(config)
    test = load_beir(config.eval_data, config.eval_split) if config.eval_data else None
    echo(f"corpus: {config.corpus}: {len(documents):,} documents → {len(pairs):,} '{config.strategy}' pairs "
         f"(no query used)")
    encoder = Encoder.from_pretrained(config.model)
    eval_length = config.eval_max_seq_length or encoder.max_seq_length
    if test is not None and before is None:
        echo(f"\nthe base model on {len(test.split_queries):,} {config.eval_split} queries")
        started = time.perf_counter()
        before = evaluate_at(encoder, test, eval_length, config.show_progress)
        timings["evaluate_before_s"] = round(time.perf_counter() - started, 1)

    train_config = config.train_config()
    echo(f"\nadapting: InfoNCE (τ={config.temperature}) over in-batch negatives, batch {config.batch_size}"
         + (f" with gradient caching (mini-batch {train_config.mini_batch_size})"
            if train_config.mini_batch_size else ""))  # as the trainer takes it
    started = time.perf_counter()
    trainer = Trainer(train_config, encoder, pairs)
    model_dir = trainer.train(resume=config.resume)
    timings["train_s"] = round(time.perf_counter() - started, 1)
    if eval_length != encoder.max_seq_length:  # the trainer saved its training length; users get the evaluated one
        encoder.max_seq_length = eval_length
        save_files_whole(model_dir, encoder.save)
    echo(f"model saved to {model_dir} with max_seq_length {eval_length} (trained at {config.max_seq_length}; "
         f"loads with SentenceTransformer('{model_dir}'))")

    results: dict = {"config": asdict(config), "documents": len(documents), "pairs": len(pairs),
                     "steps": trainer.total_steps, "model_dir": str(model_dir), "eval_max_seq_length": eval_length,
                     "timings": timings}
    if test is not None:
        started = time.perf_counter()
        after = evaluate_at(encoder, test, eval_length, config.show_progress)
        timings["evaluate_after_s"] = round(time.perf_counter() - started, 1)
        rows = {"base model": before.metrics, f"adapted ({config.strategy})": after.metrics}
        change = compare_results(before, after, ["ndcg@10"])["ndcg@10"]
        echo(f"\n{config.eval_split} split, {before.num_queries} queries (never used for training)\n")
        echo(format_table(rows, ADAPT_METRICS))
        echo(f"\nnDCG@10 {change['mean_a']:.3f} → {change['mean_b']:.3f} ({change['delta']:+.3f}); queries better "
             f"{change['wins']}, worse {change['losses']}, same {change['ties']} (sign test p = {change['sign_test_p']:.3g})")
        results["metrics"] = {"before": before.metrics, "after": after.metrics}
        results["ndcg@10_change"] = change
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_whole(out / "adapt_results.json", json.dumps(results, indent=2) + "\n")
    if test is not None and config.report:  # the trainer's report, now with the before/after retrieval
        from contrastkit.evaluate import bm25_retrieval
        from contrastkit.report import write_report_or_note
        from contrastkit.report.record import record_retrieval

        for role, result, label, step in (("bm25", bm25_retrieval(test), "BM25", None),
                                          ("before", before, "base model", 0),
                                          ("after", after, f"adapted ({config.strategy})", trainer.total_steps)):
            record_retrieval(out, role, result, test, label=label, step=step)
        write_report_or_note(out, echo)
    return results
