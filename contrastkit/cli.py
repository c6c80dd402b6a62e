"""The `contrastkit` command: one thin layer over the Python API (parse, call, print)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from contrastkit.errors import ContrastkitError
from contrastkit.files import write_text_whole, write_whole

app = typer.Typer(
    name="contrastkit",
    help="Train and fine-tune embedding models with contrastive objectives, and prove it on retrieval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


ModelOption = Annotated[str, typer.Option("--model", "-m", help='"default" (all-MiniLM-L6-v2) or a local '
                                                              "Hugging Face / sentence-transformers folder")]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="texts per forward pass")]
Bf16Option = Annotated[bool, typer.Option("--bf16/--fp32", help="bf16 autocast on CPU")]
SeqOption = Annotated[Optional[int], typer.Option("--max-seq-length", min=1,
                                                  help="truncate texts to this many tokens")]


def _load_encoder(model: str, max_seq_length: int | None):
    from contrastkit.encoder import Encoder

    return Encoder.from_pretrained(model, max_seq_length=max_seq_length)


def _load_retriever(model: str, max_seq_length: int | None):
    """An Encoder, or a two-tower DualEncoder folder (dual_encoder.json) as `DualEncoder.load` reads it,
    its text towers cut at `max_seq_length` when given; either has `max_seq_length` (the query side's)."""
    from contrastkit.encoder import resolve_model_path
    from contrastkit.towers import CONFIG_FILE, DualEncoder, TextTower

    path = resolve_model_path(model)
    if not (path / CONFIG_FILE).is_file():
        return _load_encoder(model, max_seq_length)
    dual = DualEncoder.load(path)
    texts = [dual.tower(side) for side in ("query", "document") if isinstance(dual.tower(side), TextTower)]
    for tower in texts:
        if max_seq_length:
            tower.encoder.max_seq_length = max_seq_length
    dual.max_seq_length = texts[0].encoder.max_seq_length if texts else None
    return dual


def _writable(path: Path, option: str, *, folder: bool = False) -> Path:
    """`path` if a file (or, with `folder`, a folder) can be created or replaced there; else a usage error
    now, before any slow work, instead of a traceback at the end of it."""
    if folder and path.exists() and not path.is_dir():
        raise typer.BadParameter(f"{path} is a file; give a folder", param_hint=option)
    if not folder and path.is_dir():
        raise typer.BadParameter(f"{path} is a folder; give a file name", param_hint=option)
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise typer.BadParameter(f"{blocking} is a file, so {path} cannot be written", param_hint=option)
    # outputs are written beside their target and renamed (contrastkit/files.py): try that folder, or
    # the nearest one that exists, with a probe file (permissions, a read-only disk, /proc)
    start = path if folder and path.is_dir() else path.parent
    existing = next(p for p in (start, *start.parents) if p.exists())
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".contrastkit-probe-"):
            pass
    except OSError as exc:
        raise typer.BadParameter(f"{path} cannot be written: {existing} does not take new files "
                                 f"({exc.strerror or exc})", param_hint=option) from None
    return path


def _non_empty(texts: list[str], option: str) -> list[str]:
    """The texts, each checked to hold more than whitespace (as a file's texts are)."""
    for position, text in enumerate(texts, 1):
        if not text.strip():
            raise typer.BadParameter(f"text {position} is empty", param_hint=option)
    return texts


@app.command()
def encode(
    output: Annotated[Path, typer.Option("--output", "-o", help=".npy file to write [N, D] float32")],
    text: Annotated[Optional[list[str]], typer.Option("--text", "-t", help="a text to embed (repeatable)")] = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="JSONL: one string or object a line")] = None,
    field: Annotated[str, typer.Option(help="the JSONL field holding the text")] = "text",
    model: ModelOption = "default",
    batch_size: BatchOption = 32,
    bf16: Bf16Option = False,
    max_seq_length: SeqOption = None,
    prompt_name: Annotated[Optional[str], typer.Option(
        "--prompt-name", help="the model's prompt to prepend (e.g. query, document); default: its default "
                              "prompt, if any, as sentence-transformers' encode")] = None,
) -> None:
    """Embed texts (given with --text, or a JSONL file) and save them as a .npy matrix."""
    from contrastkit.jsonl import read_texts

    if text and input:
        raise typer.BadParameter("give either --text (one or more) or --input FILE, not both")
    if not text and not input:
        raise typer.BadParameter("give --text (one or more) or --input FILE")
    if output.is_dir():
        raise typer.BadParameter(f"{output} is a folder; give a file name", param_hint="--output")
    output = output if output.suffix == ".npy" else output.with_name(output.name + ".npy")  # as np.save names it
    _writable(output, "--output")
    texts = read_texts(input, field) if input else _non_empty(list(text), "--text")
    encoder = _load_encoder(model, max_seq_length)
    if prompt_name is not None and prompt_name not in encoder.prompts:
        raise typer.BadParameter(f"the model has no prompt {prompt_name!r} (its prompts: "
                                 f"{', '.join(encoder.prompts) or 'none'})", param_hint="--prompt-name")
    embeddings = encoder.encode(texts, batch_size=batch_size, show_progress=True, bf16=bf16, prompt_name=prompt_name)
    write_whole(output, lambda handle: np.save(handle, embeddings))  # never half a matrix at `output`
    typer.echo(f"wrote {embeddings.shape[0]} × {embeddings.shape[1]} embeddings to {output}")


@app.command()
def search(
    queries: Annotated[list[str], typer.Argument(help="one or more query texts")],
    corpus: Annotated[Optional[Path], typer.Option("--corpus", "-c", help="corpus JSONL (_id, title, text)")] = None,
    index: Annotated[Optional[Path], typer.Option(
        "--index", help="folder of a saved index: loaded if it matches the model (and corpus), else built there")] = None,
    model: ModelOption = "default",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1)] = 3,
    kind: Annotated[str, typer.Option(help="index kind: auto, flat, ivf or hnsw")] = "auto",
    batch_size: BatchOption = 32,
    max_seq_length: SeqOption = None,
) -> None:
    """Search a corpus (or a saved index) with one or more queries; print the top-k with scores and titles."""
    from contrastkit.data.corpus import read_corpus
    from contrastkit.index import INDEX_KINDS
    from contrastkit.search import FINGERPRINT_VERSION, CorpusSearcher

    if corpus is None and index is None:
        raise typer.BadParameter("give --corpus FILE, --index FOLDER, or both")
    _non_empty(queries, "QUERIES")
    if kind not in INDEX_KINDS:
        raise typer.BadParameter(f"expected one of {', '.join(INDEX_KINDS)}; got {kind!r}", param_hint="--kind")
    if index is not None and not (index / "meta.json").is_file():  # an index to build and save (reading one needs no write)
        _writable(index, "--index", folder=True)
    documents, searcher = None, None
    if index is not None and (index / "meta.json").is_file():
        try:
            searcher = CorpusSearcher.load(index)  # a damaged one is named before the model loads
        except ContrastkitError as exc:
            if corpus is None:
                raise
            _writable(index, "--index", folder=True)
            typer.echo(f"warning: {exc}; rebuilding it from {corpus}", err=True)
    if corpus is not None and searcher is None:
        documents = read_corpus(corpus)  # to build from: checked before the model loads
    encoder = _load_encoder(model, max_seq_length)
    if searcher is not None and not searcher.is_for(encoder, corpus):
        older = searcher.meta.get("fingerprint_version") != FINGERPRINT_VERSION
        if corpus is None:
            why = ("was saved by an earlier contrastkit, which fingerprinted models otherwise" if older else
                   f"was built with model {searcher.meta.get('model')!r} (its weights and settings as they were then)")
            raise typer.BadParameter(f"the index in {index} {why}; pass --corpus to rebuild it for {model!r} as it "
                                     f"is now")
        searcher = None
    if searcher is not None and kind != "auto" and searcher.meta.get("index") != kind:  # asked for another kind
        if corpus is None:
            raise typer.BadParameter(f"the index in {index} is a {searcher.meta.get('index')} index, not {kind}; "
                                     f"pass --corpus to rebuild it as {kind}", param_hint="--kind")
        searcher = None
    if searcher is None:
        if corpus is None:
            raise typer.BadParameter(f"{index} holds no index yet: pass --corpus to build it")
        searcher = CorpusSearcher.build(encoder, corpus, kind=kind, batch_size=batch_size, documents=documents)
        if index is not None:
            searcher.save(index)
            typer.echo(f"saved a {searcher.index.kind} index of {len(searcher.doc_ids):,} documents to {index}")
    hits = searcher.search(encoder.encode_queries(queries, batch_size=batch_size), top_k)  # the query prompt, if any
    for query, query_hits in zip(queries, hits):
        typer.echo(f"\nquery: {query}")
        for hit in query_hits:
            typer.echo(f"  {hit.rank}. [{hit.score:.4f}] {hit.doc_id}: {_shorten(hit.title or hit.snippet, 100)}")


data_app = typer.Typer(help="Read and check training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    file: Annotated[Path, typer.Argument(help="pair file (.jsonl, .csv, .tsv, .parquet) or BEIR folder")],
    tokenizer: Annotated[Optional[str], typer.Option(
        help='count lengths in this model\'s tokens ("default" or a model folder); whitespace words if not given')] = None,
    split: Annotated[str, typer.Option(help="qrels split, for a BEIR folder")] = "train",
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Check a pair file or BEIR folder strictly and summarise it: counts, lengths, duplicates."""
    from contrastkit.data import format_summary, inspect_pairs

    tok = _load_encoder(tokenizer, None).tokenizer if tokenizer else None
    summary = inspect_pairs(file, tok, split=split)
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


def _optional_float(value: str, name: str) -> float | None:
    if value.lower() in ("off", "none"):
        return None
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(f"expected a number or 'off', got {value!r}", param_hint=name) from None


@app.command()
def mine(
    data: Annotated[Path, typer.Option("--data", "-d", help="BEIR folder or pair file (.jsonl, .csv, .tsv, .parquet)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL to write: the pairs with negatives added")],
    model: ModelOption = "default",
    corpus: Annotated[Optional[Path], typer.Option(
        "--corpus", "-c", help="corpus JSONL (_id, title, text) to mine from; default: the BEIR folder's corpus, "
                               "or every positive and negative of the pair file")] = None,
    split: Annotated[str, typer.Option(help="qrels split, for a BEIR folder")] = "train",
    rank_range: Annotated[str, typer.Option("--range", help="ranks kept among non-positive candidates, "
                                                            "START:STOP (0-based, STOP excluded)")] = "0:100",
    ceiling: Annotated[Optional[float], typer.Option(help="drop candidates with a cosine above this")] = None,
    margin: Annotated[Optional[float], typer.Option(
        help="drop candidates with a cosine above the positive's minus this")] = None,
    relative_margin: Annotated[str, typer.Option(
        "--relative-margin", help="drop candidates with a cosine above (1 - r) × the positive's; 'off' to disable")] = "0.05",
    sample: Annotated[str, typer.Option(help="top (most similar survivors) or random")] = "top",
    num_negatives: Annotated[int, typer.Option("--num-negatives", "-k", min=1, help="negatives per pair")] = 3,
    seed: Annotated[int, typer.Option(help="seed of --sample random and of the IVF training sample")] = 0,
    index: Annotated[str, typer.Option(help="auto, flat, ivf or hnsw")] = "auto",
    cache_dir: Annotated[Optional[Path], typer.Option(
        help="embedding cache (default $CONTRASTKIT_CACHE/embeddings, $XDG_CACHE_HOME/contrastkit/embeddings "
             "or ~/.cache/contrastkit/embeddings)")] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="reuse and store corpus embeddings")] = True,
    batch_size: BatchOption = 32,
    max_seq_length: SeqOption = None,
) -> None:
    """Mine hard negatives for each pair: search the corpus, drop likely positives, sample, write JSONL."""
    from contrastkit.data import load_beir, load_corpus, read_pairs, write_pairs
    from contrastkit.mining import MiningConfig, mine_hard_negatives

    config = MiningConfig(  # checked before anything slow happens
        num_negatives=num_negatives, rank_range=rank_range, ceiling=ceiling, margin=margin,
        relative_margin=_optional_float(relative_margin, "--relative-margin"), sample=sample, seed=seed,
        index=index, batch_size=batch_size, cache_dir=cache_dir, use_cache=cache, show_progress=True)
    _writable(output, "--output")
    if output.resolve() in {data.resolve(), corpus.resolve() if corpus else None}:
        raise typer.BadParameter(f"{output} is an input of this command; write the mined pairs elsewhere",
                                 param_hint="--output")
    source = load_beir(data, split=split) if data.is_dir() else read_pairs(data)
    documents = load_corpus(corpus) if corpus else None
    encoder = _load_encoder(model, max_seq_length)
    pairs, summary = mine_hard_negatives(encoder, source, documents, config)
    write_pairs(pairs, output)
    typer.echo(summary.format())
    typer.echo(f"wrote {len(pairs):,} pairs to {output}")


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="YAML or TOML config (see docs/training.md)")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="model to fine-tune")] = None,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="pair file or BEIR folder")] = None,
    output_dir: Annotated[Optional[str], typer.Option("--output", "-o", help="output folder")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a config key: key=value")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest complete checkpoint")] = False,
) -> None:
    """Fine-tune a model on pairs with a contrastive loss; the output folder loads in sentence-transformers."""
    import torch

    from contrastkit.encoder import Encoder
    from contrastkit.train import Trainer, load_config, load_training_pairs
    from contrastkit.train.config import parse_override
    from contrastkit.train.trainer import check_examples

    overrides = dict(parse_override(item) for item in set_ or [])
    for key, value in (("model", model), ("data", data), ("output_dir", output_dir)):
        if value is not None:
            overrides[key] = value
    settings = load_config(config, overrides)
    _writable(Path(settings.output_dir), "--output", folder=True)
    pairs = load_training_pairs(settings.data, settings.split)
    check_examples(pairs, settings)  # the data against the config, before the model loads
    evaluator = None
    if settings.eval_data:  # read and checked before the model loads
        from contrastkit.train.evaluation import RetrievalEvaluator

        evaluator = RetrievalEvaluator.from_folder(settings.eval_data, settings.eval_split)
    Path(settings.output_dir).mkdir(parents=True, exist_ok=True)  # an unwritable place fails now, not after loading
    encoder = Encoder.from_pretrained(settings.model, max_seq_length=settings.max_seq_length,
                                      torch_dtype=getattr(torch, settings.dtype))
    trainer = Trainer(settings, encoder, pairs, evaluator=evaluator)
    if trainer.dist.is_main:
        k = settings.num_hard_negatives
        negatives = (f"{k} negative(s) each" if settings.loss != "infonce" else
                     f"up to {k} hard negative(s) each, and in-batch negatives" if k else "in-batch negatives only")
        typer.echo(f"training on {len(pairs)} pairs ({negatives}): {trainer.total_steps} steps of {settings.batch_size}"
                   + (f" (gradient cache, mini-batch {settings.mini_batch_size})" if settings.mini_batch_size else ""))
    out = trainer.train(resume=resume)
    if trainer.dist.is_main:
        typer.echo(f"saved the model to {out}")
        if (out / "report.html").is_file():
            typer.echo(f"report: {out / 'report.html'}")


@app.command("eval")
def eval_(
    data: Annotated[Path, typer.Option("--data", "-d", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")],
    model: ModelOption = "default",
    split: Annotated[str, typer.Option("--split", help="the qrels file to score against (qrels/<split>.tsv)")] = "test",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="JSON file for the metrics")] = None,
    compare: Annotated[Optional[str], typer.Option("--compare", help="a second model, compared with --model query by query")] = None,
    baseline: Annotated[Optional[str], typer.Option("--baseline", help='add a baseline row: "bm25"')] = None,
    k: Annotated[str, typer.Option("--k", help="comma-separated cut-offs")] = "1,3,5,10,100",
    batch_size: BatchOption = 32,
    max_seq_length: SeqOption = None,
) -> None:
    """Evaluate a model on a BEIR split: nDCG, MRR, MAP, recall, precision and accuracy at each k."""
    from contrastkit.data.beir import load_beir
    from contrastkit.encoder import resolve_model_path
    from contrastkit.errors import DataError
    from contrastkit.evaluate import (HEADLINE_METRICS, bm25_retrieval, compare_results, evaluate_retrieval,
                                      format_comparison, format_table)

    try:
        ks = sorted({int(part) for part in k.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(f"--k takes comma-separated whole numbers, e.g. 1,10,100; got {k!r}") from None
    if not ks or ks[0] < 1:
        raise typer.BadParameter(f"--k needs at least one cut-off, each 1 or more; got {k!r}")
    if baseline not in (None, "bm25"):
        raise typer.BadParameter(f'--baseline knows only "bm25", got {baseline!r}')
    if output is not None:
        _writable(output, "--output")
    for name in (model, compare):
        if name is not None and name != "default":
            resolve_model_path(name)  # a missing model fails now, not after the first model's evaluation
    dataset = load_beir(data, split=split)
    if not any(grade > 0 for judged in dataset.qrels.values() for grade in judged.values()):
        raise DataError("no judgement with a grade above 0: no query has a relevant document to find",
                        path=str(data / "qrels" / f"{split}.tsv"))
    queries = dataset.split_queries
    scored = sum(any(grade > 0 for grade in dataset.qrels.get(q, {}).values()) for q in queries)
    unscored = f" ({scored} with a relevant document, which the metrics average over)" if scored < len(queries) else ""
    typer.echo(f"{data} [{split}]: {len(queries)} queries{unscored}, {len(dataset.corpus)} documents")
    lengths: dict[str, int] = {}

    def run(name: str):
        encoder = _load_retriever(name, max_seq_length)
        lengths[name] = encoder.max_seq_length
        typer.echo(f"{name}: texts cut at {encoder.max_seq_length} tokens")
        return evaluate_retrieval(encoder, dataset, ks, batch_size=batch_size)

    results = {model: run(model)}
    compare_name = None
    if compare:
        compare_name = compare if compare != model else f"{compare} (2)"
        results[compare_name] = run(compare)
        if lengths[compare] != lengths[model]:
            typer.echo(f"note: the two models cut texts at different lengths ({lengths[model]} and "
                       f"{lengths[compare]} tokens); --max-seq-length N evaluates both at N")
    if baseline == "bm25":
        results["bm25"] = bm25_retrieval(dataset, ks)
    typer.echo(format_table({name: r.metrics for name, r in results.items()}))

    main = results[model]
    payload = {**main.metrics, "model": model, "max_seq_length": lengths[model], "data": str(data), "split": split,
               "ks": ks, "num_queries": main.num_queries}
    if compare_name:
        comparison = compare_results(main, results[compare_name])
        shown = {m: c for m, c in comparison.items() if m in HEADLINE_METRICS}
        typer.echo(f"\n{compare_name} vs {model}: per-query wins / losses")
        typer.echo(format_comparison(shown or comparison, model, compare_name))
        payload["compare"] = {"model": compare, "max_seq_length": lengths[compare],
                              "metrics": results[compare_name].metrics, "per_metric": comparison}
    if baseline == "bm25":
        payload["baselines"] = {"bm25": results["bm25"].metrics}
    payload["per_query"] = main.per_query
    if output:
        write_text_whole(output, json.dumps(payload, indent=2) + "\n")
        typer.echo(f"wrote {output}")


@app.command()
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="a 3-minute look: fewer steps, same chain")] = False,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="a BEIR folder (default: bundled Cranfield)")] = None,
    pairs: Annotated[Optional[str], typer.Option("--pairs", help="train on this pair file instead")] = None,
    model: ModelOption = "default",
    output_dir: Annotated[str, typer.Option("--output", "-o", help="where the model and results go")] = "demo_output",
    epochs: Annotated[Optional[int], typer.Option(min=1, help="fine-tuning epochs (default 3; --quick 1)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=2, help="training pairs per step (default 64; --quick 32)")] = None,
    seed: Annotated[int, typer.Option(help="seed of mining, batching and dropout: rerun to see the spread")] = 0,
    bf16: Annotated[Optional[bool], typer.Option(
        "--bf16/--fp32", help="training precision (default: bf16 autocast where the hardware multiplies bf16, "
                              "else fp32)")] = None,
) -> None:
    """Evaluate the default model, mine hard negatives, fine-tune, evaluate again: the before/after table."""
    from contrastkit.demo import DemoConfig, run_demo

    _writable(Path(output_dir), "--output", folder=True)
    settings = dict(model=model, output_dir=output_dir, pairs=pairs, seed=seed, bf16=bf16)
    if epochs:
        settings["epochs"] = epochs
    if batch_size:
        settings["batch_size"] = batch_size
    if data:
        settings["data"] = data
    config = DemoConfig.quick(**settings) if quick else DemoConfig(**settings)
    run_demo(config, echo=typer.echo)


@app.command()
def adapt(
    corpus: Annotated[str, typer.Option("--corpus", "-c", help="corpus JSONL (text, optional title / _id) or a BEIR folder")],
    model: ModelOption = "default",
    output_dir: Annotated[str, typer.Option("--output", "-o", help="where the adapted model goes")] = "runs/adapt",
    strategy: Annotated[str, typer.Option(
        help="dropout (SimCSE), crop (Contriever), title-body, neighbours; see docs/self_supervised.md")] = "crop",
    augment: Annotated[Optional[str], typer.Option(
        help='augment each view, e.g. "word_deletion:0.1,span_masking:0.1"')] = None,
    max_docs: Annotated[Optional[int], typer.Option(min=1, help="train on a seeded sample of this many documents")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 1,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="stop after this many steps")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="pairs per step (in-batch negatives)")] = 64,
    mini_batch_size: Annotated[Optional[int], typer.Option(
        "--mini-batch-size", min=0,
        help="gradient caching: pairs per forward pass; 0, or the batch size or more: no caching")] = 16,
    temperature: Annotated[float, typer.Option(help="InfoNCE τ")] = 0.05,
    lr: Annotated[float, typer.Option(help="learning rate")] = 2e-5,
    seed: int = 0,
    max_seq_length: Annotated[int, typer.Option("--max-seq-length", min=1, help="training: tokens per text")] = 128,
    eval_data: Annotated[Optional[str], typer.Option(
        "--eval", help="BEIR folder: print nDCG@10 / R@10 / MRR@10 on its test queries before and after")] = None,
    resume: Annotated[bool, typer.Option(help="continue a killed run from its newest checkpoint (every 100 steps)")] = False,
) -> None:
    """Adapt a model to a domain from documents alone (no queries): self-supervised pairs + InfoNCE."""
    from contrastkit.adapt import AdaptConfig, run_adapt

    _writable(Path(output_dir), "--output", folder=True)
    config = AdaptConfig(corpus=corpus, model=model, output_dir=output_dir, strategy=strategy, augment=augment,
                         max_docs=max_docs, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                         mini_batch_size=mini_batch_size or None, temperature=temperature, lr=lr, seed=seed,
                         max_seq_length=max_seq_length, eval_data=eval_data, resume=resume)
    run_adapt(config, echo=typer.echo)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="output folder of `contrastkit train`, `adapt` or `demo`")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="HTML file (default RUN_DIR/report.html)")] = None,
) -> None:
    """Write the run's self-contained HTML report: curves, before/after retrieval, embedding health."""
    from contrastkit.report import write_report

    if output is not None:
        _writable(output, "--output")
    typer.echo(f"wrote {write_report(run_dir, output)}")


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning on the command line: one "warning: ..." line, not Python's file, line and source."""
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


def main() -> None:
    """Console entry point: run the app; our errors become one clear line and exit code 2, the file
    system's (permissions, a full disk) one line and exit code 1, a warning one line too."""
    import warnings

    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        code = app(standalone_mode=False)
    except ContrastkitError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        if not hasattr(exc, "show"):
            raise
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:
        typer.secho("interrupted", err=True, fg=typer.colors.RED)
        sys.exit(130)
    except OSError as exc:  # the file system said no (permissions, a full disk, a path under /proc)
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in str(exc) else ""
        typer.secho(f"error: {exc}{where}", err=True, fg=typer.colors.RED)
        sys.exit(1)
    finally:
        warnings.showwarning = shown
    # without standalone mode click hands back the exit code of an Exit, Ctrl-C's 130 included
    if isinstance(code, int) and code != 0:
        if code == 130:
            typer.secho("interrupted", err=True, fg=typer.colors.RED)
        sys.exit(code)


if __name__ == "__main__":
    main()
