"""Hard-negative mining: retrieve each anchor's nearest documents, filter out likely positives, sample.

    pairs, summary = mine_hard_negatives(encoder, load_beir(folder, "train"),
                                         config=MiningConfig(rank_range=(10, 100), relative_margin=0.05))
    write_pairs(pairs, "train_mined.jsonl"); print(summary.format())

The corpus is encoded (and cached on disk), indexed with `VectorIndex` and searched for each
distinct anchor. Each pair's candidates then go through the filters, in this order, each a small
pure function on [P, K] arrays:

1. `not_positive`      never a known positive: the same document (id or text) as any positive of
                       the anchor, from the qrels or the pair file
2. `rank_window`       keep ranks start..stop-1 among the remaining candidates (`range 10:100`
                       skips the 10 most similar, the likeliest unlabelled positives)
3. `below_ceiling`     similarity ≤ ceiling
4. `below_margin`      similarity ≤ positive similarity − margin
5. `below_relative_margin`  similarity ≤ (1 − r) × positive similarity (NV-Retriever's
                       positive-aware "TopK-PercPos")
6. `sample_candidates` num_negatives of the survivors: the most similar ("top") or a seeded
                       random draw ("random")

Similarities are cosines: embeddings are L2-normalised here whatever the encoder does.
"""

from __future__ import annotations

import hashlib
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from contrastkit.cache import cache_root
from contrastkit.data.beir import BeirDataset, doc_text, pairs_from_beir
from contrastkit.data.pairs import Pair
from contrastkit.errors import ConfigError, DataError
from contrastkit.files import write_whole
from contrastkit.index import INDEX_KINDS, VectorIndex
from contrastkit.vectors import l2_normalize

SAMPLING = ("top", "random")
# Anchors searched per step: bounds the [P, K] filter arrays and paces the progress bar.
_SEARCH_CHUNK = 1024


class TextEncoder(Protocol):
    """What mining needs of a model (contrastkit.encoder.Encoder is one)."""

    name_or_path: str

    def encode(self, texts: list[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray: ...


# ---------------------------------------------------------------------- configuration
def parse_range(text: str) -> tuple[int, int]:
    """"10:100" → (10, 100); ":100" → (0, 100). Ranks are 0-based, the stop excluded."""
    start, sep, stop = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return int(start or 0), int(stop)
    except ValueError:
        raise ConfigError(f"rank range must look like START:STOP (e.g. 10:100), got {text!r}") from None


@dataclass
class MiningConfig:
    """Every knob of `mine_hard_negatives`, checked once when built.

    rank_range: (start, stop) ranks kept among the non-positive candidates, 0-based, stop excluded.
    ceiling: drop candidates more similar than this (cosine); None = off.
    margin: drop candidates within `margin` of the positive's similarity; None = off.
    relative_margin: drop candidates above (1 − r) × the positive's similarity; None = off.
    sample: "top" (most similar survivors) or "random" (seeded by `seed`).
    index: "auto", "flat", "ivf" or "hnsw" (see contrastkit.index).
    cache_dir: where embeddings are cached; None = `cache_root()`/embeddings ($CONTRASTKIT_CACHE,
        $XDG_CACHE_HOME/contrastkit or ~/.cache/contrastkit). use_cache=False encodes every time.
    """

    num_negatives: int = 3
    rank_range: tuple[int, int] = (0, 100)
    ceiling: float | None = None
    margin: float | None = None
    relative_margin: float | None = 0.05
    sample: str = "top"
    seed: int = 0
    index: str = "auto"
    batch_size: int = 32
    cache_dir: str | Path | None = None
    use_cache: bool = True
    show_progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.rank_range, str):
            self.rank_range = parse_range(self.rank_range)
        start, stop = self.rank_range
        checks = [
            (self.num_negatives >= 1, f"num_negatives must be at least 1, got {self.num_negatives}"),
            (0 <= start < stop, f"rank range must have 0 <= start < stop, got {start}:{stop}"),
            (self.ceiling is None or -1.0 <= self.ceiling <= 1.0,
             f"ceiling is a cosine similarity, in [-1, 1]; got {self.ceiling}"),
            (self.margin is None or 0.0 <= self.margin <= 2.0, f"margin must be in [0, 2], got {self.margin}"),
            (self.relative_margin is None or 0.0 <= self.relative_margin < 1.0,
             f"relative_margin must be in [0, 1), got {self.relative_margin}"),
            (self.sample in SAMPLING, f"sample must be one of {', '.join(SAMPLING)}, got {self.sample!r}"),
            (self.index in INDEX_KINDS, f"index must be one of {', '.join(INDEX_KINDS)}, got {self.index!r}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


# ---------------------------------------------------------------------- filters (pure)
def not_positive(ids: np.ndarray, positive_ids: np.ndarray) -> np.ndarray:
    """Mask [P, K]: True where candidate ids[p, k] is none of row p's known positives.

    ids: [P, K] int candidate rows (-1 = nothing retrieved); positive_ids: [P, M] int, padded with -1.
    """
    ids, positive_ids = np.asarray(ids, np.int64), np.asarray(positive_ids, np.int64)
    # One integer key per (row, id) makes this a single isin over the whole chunk.
    width = int(max(ids.max(initial=0), positive_ids.max(initial=0))) + 2
    rows = np.arange(len(ids), dtype=np.int64)[:, None]
    known = (rows * width + positive_ids)[positive_ids >= 0]
    return ~np.isin(rows * width + ids, known)


def rank_window(keep: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Mask [P, K]: the kept candidates whose rank among kept ones (0-based) is in [start, stop)."""
    rank = np.cumsum(keep, axis=1) - 1
    return keep & (rank >= start) & (rank < stop)


def below_ceiling(scores: np.ndarray, ceiling: float) -> np.ndarray:
    """Mask [P, K]: similarity ≤ ceiling."""
    return scores <= ceiling


def below_margin(scores: np.ndarray, positive_scores: np.ndarray, margin: float) -> np.ndarray:
    """Mask [P, K]: similarity ≤ positive similarity [P] − margin."""
    return scores <= positive_scores[:, None] - margin


def below_relative_margin(scores: np.ndarray, positive_scores: np.ndarray, relative: float) -> np.ndarray:
    """Mask [P, K]: similarity ≤ (1 − relative) × positive similarity [P] (NV-Retriever, TopK-PercPos)."""
    return scores <= (1.0 - relative) * positive_scores[:, None]


def sample_candidates(keep: np.ndarray, n: int, how: str, rng: np.random.Generator) -> np.ndarray:
    """[P, n] column indices of up to n kept candidates per row, in rank order, padded with -1.

    how: "top" takes the first n kept (the most similar); "random" draws n of them with `rng`.
    """
    if how not in SAMPLING:
        raise ValueError(f"unknown sampling {how!r}; expected one of {', '.join(SAMPLING)}")
    p, k = keep.shape
    key = np.broadcast_to(np.arange(k, dtype=np.float64), (p, k)) if how == "top" else rng.random((p, k))
    # Dropped candidates sort last; of the first n, the dropped ones become k, then -1 after sorting.
    chosen = np.argsort(np.where(keep, key, np.inf), axis=1, kind="stable")[:, :min(n, k)]
    chosen = np.sort(np.where(np.take_along_axis(keep, chosen, axis=1), chosen, k), axis=1)
    return np.where(chosen == k, -1, chosen)


def filter_candidates(scores: np.ndarray, ids: np.ndarray, positive_ids: np.ndarray,
                      positive_scores: np.ndarray, config: MiningConfig) -> tuple[np.ndarray, dict[str, int]]:
    """Run the filters of `config` in order: (keep mask [P, K], {filter: candidates it removed}).

    scores, ids: [P, K] search results, best first (id -1 = nothing retrieved); positive_ids:
    [P, M] rows of each pair's known positives, padded with -1; positive_scores: [P].
    Only filters that are on appear in the dict.
    """
    steps = [("positive", lambda keep: keep & not_positive(ids, positive_ids)),
             ("range", lambda keep: rank_window(keep, *config.rank_range))]
    if config.ceiling is not None:
        steps.append(("ceiling", lambda keep: keep & below_ceiling(scores, config.ceiling)))
    if config.margin is not None:
        steps.append(("margin", lambda keep: keep & below_margin(scores, positive_scores, config.margin)))
    if config.relative_margin is not None:
        steps.append(("relative_margin", lambda keep: keep & below_relative_margin(
            scores, positive_scores, config.relative_margin)))
    keep, removed = np.asarray(ids) >= 0, {}
    for name, step in steps:
        new = step(keep)
        removed[name] = int(keep.sum() - new.sum())
        keep = new
    return keep, removed


# ---------------------------------------------------------------------- embedding cache
def default_cache_dir() -> Path:
    """`cache_root()`/embeddings: $CONTRASTKIT_CACHE, $XDG_CACHE_HOME/contrastkit or ~/.cache/contrastkit."""
    return cache_root() / "embeddings"


def _model_name(encoder: TextEncoder) -> str:
    """The encoder's model: a folder by its resolved path ("runs/m", "./runs/m" and its absolute path are
    one model), else its name as given, or its class."""
    name = str(getattr(encoder, "name_or_path", "") or type(encoder).__name__)
    folder = Path(name).expanduser()
    return str(folder.resolve()) if folder.is_dir() else name


def _model_key(encoder: TextEncoder) -> str:
    """What the embeddings depend on besides the texts (a prompt is part of the texts): the model (a
    folder by its resolved path, however it was named), its weights, its truncation, pooling,
    normalisation, lower-casing and precision."""
    name = _model_name(encoder)
    folder = Path(name)
    settings = {key: getattr(encoder, key, None) for key in ("max_seq_length", "pooling", "normalize", "do_lower_case")}
    parameters = getattr(encoder, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    settings["dtype"] = str(first.dtype) if first is not None else None
    parts = [name, *(f"{key}={value}" for key, value in settings.items())]
    if folder.is_dir():  # a folder fine-tuned in place must not hit the old embeddings
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix in (".safetensors", ".bin", ".json"):
                st = f.stat()
                parts.append(f"{f.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


def model_fingerprint(encoder: TextEncoder) -> str:
    """16 hex digits of what an encoder's embeddings depend on (`_model_key`): the model, its weight
    files (size, time), truncation, pooling, normalisation, lower-casing, precision."""
    return hashlib.sha256(_model_key(encoder).encode("utf-8")).hexdigest()[:16]


def embedding_cache_path(encoder: TextEncoder, texts: Sequence[str], cache_dir: str | Path) -> Path:
    """The cache file for these texts under this model: <model>-<sha256 of model key and texts>.npy."""
    h = hashlib.sha256(_model_key(encoder).encode("utf-8"))
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", _model_name(encoder))[-48:]
    return Path(cache_dir) / f"{slug.strip('_.') or 'model'}-{h.hexdigest()[:24]}.npy"


def encode_cached(encoder: TextEncoder, texts: Sequence[str], *, batch_size: int = 32,
                  cache_dir: str | Path | None = None, show_progress: bool = False,
                  side: str | None = None) -> tuple[np.ndarray, bool]:
    """Embeddings [N, D] float32 of `texts`, from the cache when there; (embeddings, cache hit).

    side: "query" or "document": the texts take the model's prompt for that side (an Encoder's
    `side_prompt`; E5 / BGE folders carry them), prepended here so that the cache keys on it.
    cache_dir None: no cache. A cache file is written to a temp file and renamed into place, so
    an interrupted run never leaves a half-written one.
    """
    prompt = encoder.side_prompt(side) if side is not None and hasattr(encoder, "side_prompt") else None
    texts = [prompt + t for t in texts] if prompt else list(texts)
    path = embedding_cache_path(encoder, texts, cache_dir) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = np.load(path)
            if cached.shape[0] == len(texts) and cached.dtype == np.float32:
                return cached, True
        except (OSError, ValueError):
            pass  # unreadable: encode again and overwrite
    options = dict(batch_size=batch_size, show_progress=show_progress)
    if prompt is not None:
        options["prompt"] = ""  # prepended above; and not the model's default prompt on top
    embeddings = np.asarray(encoder.encode(texts, **options), dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(texts):
        raise ValueError(f"encoder returned shape {embeddings.shape} for {len(texts)} texts")
    if path is not None:
        try:
            write_whole(path, lambda handle: np.save(handle, embeddings))
        except OSError as exc:  # a read-only or full cache costs the next run an encoding, not this run's work
            warnings.warn(f"embeddings not cached ({exc}); set CONTRASTKIT_CACHE to a writable folder",
                          stacklevel=2)
    return embeddings, False


def _normalise(x: np.ndarray) -> np.ndarray:
    return l2_normalize(x).astype(np.float32)


# ---------------------------------------------------------------------- summary
@dataclass
class MiningSummary:
    """What mining did: sizes, candidates each filter removed (in filter order), timings."""

    pairs: int
    anchors: int
    corpus: int
    index: str
    k: int
    candidates: int
    removed: dict[str, int]
    negatives: int
    num_negatives: int
    short: int                   # pairs that got fewer than num_negatives
    without: int                 # pairs that got none
    cache_hit: bool
    timings: dict[str, float] = field(default_factory=dict)
    positives_outside: int = 0   # pairs whose positive the corpus holds by neither text nor id

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """A short text report for the terminal."""
        t = self.timings
        lines = [f"mined {self.pairs:,} pairs ({self.anchors:,} distinct anchors) against {self.corpus:,} "
                 f"documents, {self.index} index, top {self.k}",
                 f"  candidates retrieved   {self.candidates:>12,}"]
        lines += [f"  removed: {name:<15} {count:>10,}" for name, count in self.removed.items()]
        short = (f"{self.without:,} pairs got none" if self.num_negatives == 1 else
                 f"{self.short:,} pairs got fewer than {self.num_negatives}, {self.without:,} got none")
        lines.append(f"  negatives kept         {self.negatives:>12,}  ({short})")
        if self.positives_outside:
            lines.append(f"  positives not in the corpus (by text or id): {self.positives_outside:,} of {self.pairs:,} "
                         f"pairs; their own documents may be among their negatives")
        lines.append(f"  time: encode corpus {t.get('encode_corpus_s', 0):.1f} s "
                     f"({'cached' if self.cache_hit else 'encoded'}), encode anchors "
                     f"{t.get('encode_anchors_s', 0):.1f} s, index {t.get('index_s', 0):.1f} s, "
                     f"search + filters {t.get('search_s', 0):.1f} s")
        return "\n".join(lines)


# ---------------------------------------------------------------------- mining
def _documents(corpus, pairs: list[Pair]) -> tuple[list[str], dict[str, int], dict[str, int]]:
    """(distinct non-empty texts, text → row, doc id → row) of the documents to mine from.

    The text → row map also holds each titled document's body alone (its "text" field), where no
    document's whole text is that: a pair file written from the bodies finds its positives in a
    corpus embedded as title + " " + text (else a pair's own document could be mined as its negative).
    """
    bodies: dict[str, str] = {}
    if corpus is None:  # the pair file is its own corpus: every positive and negative in it
        id_text: dict[str, str] = {}
        texts = [t for p in pairs for t in (p.positive, *p.negatives)]
    elif isinstance(corpus, Mapping):
        id_text = {str(i): (doc_text(d) if isinstance(d, Mapping) else d) for i, d in corpus.items()}
        bodies = {str(i): d.get("text") or "" for i, d in corpus.items() if isinstance(d, Mapping)}
        texts = list(id_text.values())
    elif isinstance(corpus, Sequence) and not isinstance(corpus, (str, bytes)):
        id_text, texts = {}, list(corpus)
    else:
        raise TypeError("corpus must be a mapping id → text or {title, text}, a list of texts, or None")
    row_of_text: dict[str, int] = {}
    for text in texts:
        if text.strip():
            row_of_text.setdefault(text.strip(), len(row_of_text))
    if not row_of_text:
        raise DataError("the corpus has no non-empty documents to mine from")
    row_of_id = {i: row_of_text[t.strip()] for i, t in id_text.items() if t.strip()}
    docs = list(row_of_text)
    for i, body in bodies.items():
        if body.strip() and i in row_of_id:
            row_of_text.setdefault(body.strip(), row_of_id[i])
    return docs, row_of_text, row_of_id


def _known_positives(pairs: list[Pair], pair_anchor: np.ndarray, num_anchors: int, row_of_text: dict[str, int],
                     row_of_id: dict[str, int]) -> list[list[int]]:
    """The document rows of every anchor's positives (by text and by id, over all its pairs), sorted.

    Kept ragged: a dense [anchors, most positives of any anchor] array grew with one query of 2,000
    relevant documents to 1.3 GB for 40,000 anchors (`_padded` makes a chunk's)."""
    known: list[set[int]] = [set() for _ in range(num_anchors)]
    for p, a in zip(pairs, pair_anchor):
        known[a].update(row for row in (row_of_text.get(p.positive.strip()), row_of_id.get(p.positive_id))
                        if row is not None)
    return [sorted(found) for found in known]


def _padded(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """Ragged lists of rows as [n, longest] int64, padded with -1 (at least one column)."""
    out = np.full((len(rows), max(1, max(map(len, rows), default=0))), -1, dtype=np.int64)
    for i, found in enumerate(rows):
        out[i, :len(found)] = found
    return out


def _search_and_filter(index: VectorIndex, anchor_emb: np.ndarray, pair_anchor: np.ndarray,
                       positives: Sequence[Sequence[int]], positive_scores: np.ndarray,
                       config: MiningConfig, existing_rows: Sequence[set[int]] | None = None,
                       ) -> tuple[list[list[int]], int, dict[str, int], int]:
    """(chosen document rows per pair, candidates retrieved, removed per filter, deepest search), anchors
    in chunks.

    Each chunk searches as deep as its anchors need: rank_range's stop plus the most positives one
    of them has, so that stop is reachable once an anchor's positives are out. The rank window is
    the first filter after the positives, so any deeper search keeps the same candidates: an anchor
    with thousands of relevant documents deepens its own chunk's search, not every anchor's.
    existing_rows[p]: the corpus rows of pair p's own negatives, left out before sampling so that
    num_negatives new ones are chosen.
    """
    removed: dict[str, int] = {}
    candidates = 0
    rng = np.random.default_rng(config.seed)
    order = np.argsort(pair_anchor, kind="stable")
    bounds = np.searchsorted(pair_anchor[order], np.arange(len(anchor_emb) + 1))
    mined: list[list[int]] = [[] for _ in pair_anchor]
    deepest = 0
    with tqdm(total=len(anchor_emb), desc="mining", unit="anchor", disable=not config.show_progress) as bar:
        for lo in range(0, len(anchor_emb), _SEARCH_CHUNK):
            hi = min(lo + _SEARCH_CHUNK, len(anchor_emb))
            chunk_positives = _padded(positives[lo:hi])
            k = min(len(index), config.rank_range[1] + chunk_positives.shape[1])
            deepest = max(deepest, k)
            scores, ids = index.search(anchor_emb[lo:hi], k)
            sel = order[bounds[lo]:bounds[hi]]  # the pairs of these anchors, one row each
            local = pair_anchor[sel] - lo
            ids = ids[local]
            candidates += int((ids >= 0).sum())
            keep, counts = filter_candidates(scores[local], ids, chunk_positives[local],
                                             positive_scores[sel], config)
            if existing_rows is not None:
                own = np.array([[int(r) in existing_rows[p] for r in row] for p, row in zip(sel, ids)],
                               dtype=bool).reshape(keep.shape)
                counts["own negatives"] = int((keep & own).sum())
                keep &= ~own
            chosen = sample_candidates(keep, config.num_negatives, config.sample, rng)
            counts["sampling"] = int(keep.sum() - (chosen >= 0).sum())
            for name, count in counts.items():
                removed[name] = removed.get(name, 0) + count
            picked = np.where(chosen >= 0, np.take_along_axis(ids, np.maximum(chosen, 0), axis=1), -1)
            for p, rows in zip(sel, picked):
                mined[p] = [int(r) for r in rows if r >= 0]
            bar.update(hi - lo)
    return mined, candidates, removed, deepest


def mine_hard_negatives(encoder: TextEncoder, data: BeirDataset | Sequence[Pair], corpus=None,
                        config: MiningConfig | None = None) -> tuple[list[Pair], MiningSummary]:
    """Add mined hard negatives to each pair; returns (pairs in input order, summary).

    data: a BeirDataset (its split's relevant judgements become pairs, its corpus the default
    corpus) or pairs. corpus: {doc id: text or {"title", "text"}}, a list of texts, or None
    (the BEIR corpus, or every positive and negative text of the pairs). Documents with the same
    text count as one; empty ones are left out. Negatives a pair already has are kept, and mined
    ones are appended after them, without repeats.
    """
    config = config or MiningConfig()
    if isinstance(data, BeirDataset):
        corpus = data.corpus if corpus is None else corpus
        pairs = pairs_from_beir(data)
    else:
        pairs = list(data)
    if not pairs:
        raise DataError("no pairs to mine negatives for")
    cache_dir = (Path(config.cache_dir) if config.cache_dir else default_cache_dir()) if config.use_cache else None
    encode = dict(batch_size=config.batch_size, cache_dir=cache_dir, show_progress=config.show_progress)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    docs, row_of_text, row_of_id = _documents(corpus, pairs)
    if config.rank_range[0] >= len(docs):  # before the corpus is encoded: nothing could be mined
        raise ConfigError(f"the rank range starts at rank {config.rank_range[0]} but the corpus has "
                          f"{len(docs):,} distinct documents: no candidate could be mined; lower its START")
    doc_emb, cache_hit = encode_cached(encoder, docs, side="document", **encode)
    doc_emb = _normalise(doc_emb)
    lap("encode_corpus_s")

    # One search per distinct anchor text. Positives missing from the corpus are encoded too,
    # for the margins.
    anchor_row: dict[str, int] = {}
    pair_anchor = np.array([anchor_row.setdefault(p.anchor.strip(), len(anchor_row)) for p in pairs])
    anchors = list(anchor_row)
    outside = sorted({p.positive.strip() for p in pairs} - row_of_text.keys())
    anchor_emb = _normalise(encode_cached(encoder, anchors, side="query", **encode)[0])
    outside_emb = _normalise(encode_cached(encoder, outside, side="document", **encode)[0]) if outside else None
    outside_row = {t: i for i, t in enumerate(outside)}
    positive_emb = np.stack([doc_emb[row_of_text[t]] if t in row_of_text else outside_emb[outside_row[t]]
                             for t in (p.positive.strip() for p in pairs)])
    positive_scores = np.einsum("pd,pd->p", anchor_emb[pair_anchor], positive_emb)
    lap("encode_anchors_s")

    index = VectorIndex.build(doc_emb, kind=config.index, seed=config.seed)
    lap("index_s")

    positives = _known_positives(pairs, pair_anchor, len(anchors), row_of_text, row_of_id)
    existing_rows = [{row_of_text[n.strip()] for n in p.negatives if n.strip() in row_of_text} for p in pairs]
    mined, candidates, removed, k = _search_and_filter(index, anchor_emb, pair_anchor, positives,
                                                       positive_scores, config,
                                                    existing_rows if any(existing_rows) else None)
    lap("search_s")

    out = []
    for pair, rows in zip(pairs, mined):
        existing = {n.strip() for n in pair.negatives}
        extra = [docs[r] for r in rows if docs[r] not in existing]
        out.append(replace(pair, negatives=[*pair.negatives, *extra]))  # source and ids kept
    counts = np.array([len(rows) for rows in mined])
    outside_pairs = sum(p.positive.strip() not in row_of_text and p.positive_id not in row_of_id for p in pairs)
    if corpus is not None and outside_pairs:
        warnings.warn(f"{outside_pairs:,} of {len(pairs):,} pairs' positives are not in the corpus by text or "
                      f"positive_id: where the corpus holds them otherwise written, a pair's own document may "
                      f"be mined as its negative; give positive_id, or the corpus the pairs were made from",
                      stacklevel=2)
    summary = MiningSummary(
        pairs=len(pairs), anchors=len(anchors), corpus=len(docs), index=index.kind, k=k, candidates=candidates,
        removed=removed, negatives=int(counts.sum()), num_negatives=config.num_negatives,
        short=int((counts < config.num_negatives).sum()), without=int((counts == 0).sum()),
        cache_hit=cache_hit, timings=timings, positives_outside=outside_pairs)
    return out, summary
