"""Search a corpus: a saved faiss index plus the documents' ids and titles, answered interactively.

`CorpusSearcher.build(encoder, corpus_path)` encodes the corpus (through the embedding cache, so a
second build is instant) and indexes it; `.save(folder)` writes `index.faiss`, `docs.jsonl` (id,
title, a snippet) and `meta.json` (model and its fingerprint, corpus hash, size); `CorpusSearcher.load(folder)` reads them
back without touching the model's corpus pass again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contrastkit.errors import DataError
from contrastkit.files import write_text_whole
from contrastkit.index import VectorIndex
from contrastkit.vectors import l2_normalize

# what model_fingerprint counts; 2 (2026-11-29): pooling, normalisation, precision and the model's
# resolved path too. An index saved under another version is rebuilt, with a word saying why.
FINGERPRINT_VERSION = 2
SNIPPET_CHARS = 300


@dataclass
class Hit:
    rank: int
    score: float
    doc_id: str
    title: str
    snippet: str


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits): identifies the corpus an index was built from."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class CorpusSearcher:
    """A vector index over a corpus, with what is needed to print a hit (id, title, snippet)."""

    def __init__(self, index: VectorIndex, doc_ids: list[str], titles: list[str], snippets: list[str],
                 meta: dict) -> None:
        self.index, self.doc_ids, self.titles, self.snippets, self.meta = index, doc_ids, titles, snippets, meta

    @classmethod
    def build(cls, encoder, corpus_path: str | Path, *, kind: str = "auto", batch_size: int = 32,
              cache_dir: str | Path | None = None, show_progress: bool = True,
              documents: tuple[list[str], list[str], list[str]] | None = None) -> "CorpusSearcher":
        """Embed and index the corpus at `corpus_path` (`documents`: its `read_corpus`, when already read)."""
        from contrastkit.data.corpus import read_corpus
        from contrastkit.mining import default_cache_dir, encode_cached, model_fingerprint

        ids, titles, texts = documents if documents is not None else read_corpus(corpus_path)
        embeddings, _ = encode_cached(encoder, texts, batch_size=batch_size, show_progress=show_progress,
                                      cache_dir=cache_dir or default_cache_dir(), side="document")
        index = VectorIndex.build(l2_normalize(embeddings), kind=kind)
        meta = {"model": str(getattr(encoder, "name_or_path", "")), "model_fingerprint": model_fingerprint(encoder),
                "fingerprint_version": FINGERPRINT_VERSION,
                "corpus": str(corpus_path),
                "corpus_sha256": file_digest(corpus_path), "documents": len(ids), "index": index.kind}
        return cls(index, ids, titles, [" ".join(t.split())[:SNIPPET_CHARS] for t in texts], meta)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # first: an index rebuilt over an old one and cut short must not pass for complete (the old
        # meta.json beside a new index.faiss and old docs.jsonl answered with other documents' ids)
        (folder / "meta.json").unlink(missing_ok=True)
        self.index.save(folder / "index.faiss")
        docs = "".join(json.dumps({"_id": i, "title": t, "snippet": s}) + "\n"
                       for i, t, s in zip(self.doc_ids, self.titles, self.snippets))
        write_text_whole(folder / "docs.jsonl", docs)
        write_text_whole(folder / "meta.json", json.dumps(self.meta, indent=2) + "\n")  # last: marks it complete
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "CorpusSearcher":
        """A saved index; a DataError naming the folder when it is not one, or is damaged (a file
        missing or cut short, documents that do not match the vectors)."""
        folder = Path(folder)
        if not (folder / "meta.json").is_file():
            raise DataError("not a saved search index (no meta.json); build one with --corpus", path=str(folder))
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            rows = [json.loads(line) for line in (folder / "docs.jsonl").read_text(encoding="utf-8").splitlines()]
            ids, titles, snippets = ([r[key] for r in rows] for key in ("_id", "title", "snippet"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"a damaged search index ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
                            f"rebuild it with --corpus", path=str(folder)) from exc
        try:
            index = VectorIndex.load(folder / "index.faiss")
        except (OSError, RuntimeError) as exc:  # faiss says RuntimeError, with a page of C++ in it
            raise DataError("a damaged search index (index.faiss does not read as a faiss index); rebuild it "
                            "with --corpus", path=str(folder)) from exc
        if len(index) != len(ids):
            raise DataError(f"a damaged search index: {len(index):,} vectors but {len(ids):,} documents in "
                            f"docs.jsonl; rebuild it with --corpus", path=str(folder))
        return cls(index, ids, titles, snippets, meta)

    def is_for(self, encoder, corpus_path: str | Path | None) -> bool:
        """True when this index was built by this model from this corpus file (bytes): the same model
        fingerprint (`mining.model_fingerprint`: a folder by its resolved path, however named; its
        weight files, so a folder trained again in place differs; max_seq_length, pooling, ...)."""
        from contrastkit.mining import model_fingerprint

        same_model = self.meta.get("model_fingerprint") == model_fingerprint(encoder)
        return same_model and (corpus_path is None or self.meta.get("corpus_sha256") == file_digest(corpus_path))

    def search(self, query_embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k hits for each query embedding [Q, D]."""
        scores, ids = self.index.search(l2_normalize(query_embeddings), min(k, len(self.doc_ids)))
        return [[Hit(r + 1, float(s), self.doc_ids[i], self.titles[i], self.snippets[i])
                 for r, (s, i) in enumerate(zip(row_scores, row_ids)) if i >= 0]
                for row_scores, row_ids in zip(scores, ids)]


