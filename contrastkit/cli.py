"""The `contrastkit` command: one thin layer over the Python API (parse, call, print)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from contrastkit.errors import ContrastkitError

app = typer.Typer(
    name="contrastkit",
    help="Train and fine-tune embedding models with contrastive objectives, and prove it on retrieval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEMO_DIR = Path(__file__).resolve().parent / "demo_data" / "cranfield"
DEMO_QUERY = "what is the effect of heat transfer on boundary layer transition at supersonic speeds"

ModelOption = Annotated[str, typer.Option("--model", "-m", help='"default" (all-MiniLM-L6-v2) or a local '
                                                              "Hugging Face / sentence-transformers folder")]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="texts per forward pass")]
Bf16Option = Annotated[bool, typer.Option("--bf16/--fp32", help="bf16 autocast on CPU")]
SeqOption = Annotated[Optional[int], typer.Option("--max-seq-length", min=1,
                                                  help="truncate texts to this many tokens")]


def _load_encoder(model: str, max_seq_length: int | None):
    from contrastkit.encoder import Encoder

    return Encoder.from_pretrained(model, max_seq_length=max_seq_length)


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
) -> None:
    """Embed texts (given with --text, or a JSONL file) and save them as a .npy matrix."""
    from contrastkit.jsonl import read_texts

    if bool(text) == bool(input):
        raise typer.BadParameter("give either --text (one or more) or --input FILE, not both")
    texts = read_texts(input, field) if input else list(text)
    encoder = _load_encoder(model, max_seq_length)
    embeddings = encoder.encode(texts, batch_size=batch_size, show_progress=True, bf16=bf16)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, embeddings)
    typer.echo(f"wrote {embeddings.shape[0]} × {embeddings.shape[1]} embeddings to {output}")


@app.command()
def search(
    queries: Annotated[list[str], typer.Argument(help="one or more query texts")],
    corpus: Annotated[Path, typer.Option("--corpus", "-c", help="corpus JSONL (_id, title, text)")],
    model: ModelOption = "default",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1)] = 3,
    batch_size: BatchOption = 32,
    bf16: Bf16Option = False,
    max_seq_length: SeqOption = None,
) -> None:
    """Search a corpus with one or more queries and print the top-k documents with their scores."""
    from contrastkit.jsonl import read_corpus

    ids, titles, texts = read_corpus(corpus)
    encoder = _load_encoder(model, max_seq_length)
    doc_embeddings = encoder.encode(texts, batch_size=batch_size, show_progress=True, bf16=bf16)
    query_embeddings = encoder.encode(queries, batch_size=batch_size, bf16=bf16)
    _print_hits(queries, query_embeddings, doc_embeddings, ids, titles, texts, top_k)


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

    overrides = dict(parse_override(item) for item in set_ or [])
    for key, value in (("model", model), ("data", data), ("output_dir", output_dir)):
        if value is not None:
            overrides[key] = value
    settings = load_config(config, overrides)
    pairs = load_training_pairs(settings.data, settings.split)
    encoder = Encoder.from_pretrained(settings.model, max_seq_length=settings.max_seq_length,
                                      torch_dtype=getattr(torch, settings.dtype))
    trainer = Trainer(settings, encoder, pairs)
    if trainer.dist.is_main:
        typer.echo(f"training on {len(pairs)} pairs: {trainer.total_steps} steps of {settings.batch_size}"
                   + (f" (gradient cache, mini-batch {settings.mini_batch_size})" if settings.mini_batch_size else ""))
    out = trainer.train(resume=resume)
    if trainer.dist.is_main:
        typer.echo(f"saved the model to {out}")


@app.command()
def demo(
    query: Annotated[str, typer.Option(help="the query to search the bundled corpus with")] = DEMO_QUERY,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1)] = 3,
) -> None:
    """Search the bundled Cranfield corpus (1,400 aeronautics abstracts) with the default model."""
    typer.echo(f"corpus: {DEMO_DIR / 'corpus.jsonl'}  model: all-MiniLM-L6-v2 (default)")
    search([query], corpus=DEMO_DIR / "corpus.jsonl", model="default", top_k=top_k, batch_size=32,
           bf16=False, max_seq_length=None)


def _print_hits(queries, query_embeddings, doc_embeddings, ids, titles, texts, top_k) -> None:
    scores = query_embeddings @ doc_embeddings.T
    k = min(top_k, scores.shape[1])
    for query, row in zip(queries, scores):
        top = np.argsort(-row, kind="stable")[:k]
        typer.echo(f"\nquery: {query}")
        for rank, doc in enumerate(top, start=1):
            label = titles[doc] or texts[doc]
            typer.echo(f"  {rank}. [{row[doc]:.4f}] {ids[doc]}: {_shorten(label, 100)}")


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def main() -> None:
    """Console entry point: run the app; our errors become one clear line and exit code 2."""
    try:
        app(standalone_mode=False)
    except ContrastkitError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except typer.TyperException as exc:  # usage errors: bad option, missing argument
        if not hasattr(exc, "show"):
            raise
        exc.show()
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:
        sys.exit(130)


if __name__ == "__main__":
    main()
