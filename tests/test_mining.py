"""Hard-negative mining: each filter on hand-made arrays, the whole run on hand-made and real data,
the embedding cache, and the one promise above all: a known positive is never returned."""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastkit.data import Pair, load_beir
from contrastkit.errors import ConfigError
from contrastkit.mining import (MiningConfig, below_ceiling, below_margin, below_relative_margin,
                                default_cache_dir, embedding_cache_path, encode_cached, filter_candidates,
                                mine_hard_negatives, not_positive, parse_range, rank_window, sample_candidates)


class HashEncoder:
    """Deterministic hashed bag of words, L2-normalised: a fast stand-in for a model."""

    def __init__(self, dim: int = 64, name_or_path: str = "hash-bow") -> None:
        self.dim, self.name_or_path, self.calls = dim, name_or_path, []

    def encode(self, texts, batch_size=32, show_progress=False):
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                h = zlib.crc32(word.encode())
                out[i, h % self.dim] += 1.0 if (h >> 16) & 1 else -1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class TableEncoder:
    """Texts → given 2-D unit vectors at given angles (degrees), so every cosine is known."""

    name_or_path = "table"

    def __init__(self, angles: dict[str, float]) -> None:
        self.angles = angles

    def encode(self, texts, batch_size=32, show_progress=False):
        rad = np.radians([self.angles[t] for t in texts])
        return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def quiet(**kwargs) -> MiningConfig:
    return MiningConfig(use_cache=False, show_progress=False, **kwargs)


# ------------------------------------------------------------------------ filters, one at a time
def test_not_positive_drops_exactly_each_rows_positives():
    ids = np.array([[3, 1, 4, -1], [2, 5, 3, 1]])
    positives = np.array([[1, -1], [5, 3]])
    np.testing.assert_array_equal(not_positive(ids, positives), [[1, 0, 1, 1], [1, 0, 0, 1]])


def test_rank_window_counts_ranks_among_kept_candidates():
    keep = np.array([[1, 0, 1, 1, 1], [0, 0, 0, 0, 1]], bool)
    np.testing.assert_array_equal(rank_window(keep, 1, 3), [[0, 0, 1, 1, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(rank_window(keep, 0, 1), [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]])


def test_similarity_filters_keep_values_at_the_bound():
    scores = np.array([[0.875, 0.75, 0.5, 0.25]], np.float32)
    positive = np.array([0.75], np.float32)
    np.testing.assert_array_equal(below_ceiling(scores, 0.75), [[0, 1, 1, 1]])
    np.testing.assert_array_equal(below_margin(scores, positive, 0.25), [[0, 0, 1, 1]])  # ≤ 0.5
    np.testing.assert_array_equal(below_relative_margin(scores, positive, 1 / 3), [[0, 0, 1, 1]])  # ≤ 0.5
    np.testing.assert_array_equal(below_relative_margin(scores, np.float32([1.0]), 0.0), [[1, 1, 1, 1]])


def test_sample_top_takes_the_first_kept_in_rank_order_and_pads():
    keep = np.array([[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]], bool)
    out = sample_candidates(keep, 2, "top", np.random.default_rng(0))
    np.testing.assert_array_equal(out, [[1, 2], [3, -1], [-1, -1]])


def test_sample_random_is_seeded_uniform_over_kept_and_in_rank_order():
    keep = np.zeros((2000, 10), bool)
    keep[:, 2:8] = True
    a = sample_candidates(keep, 3, "random", np.random.default_rng(7))
    b = sample_candidates(keep, 3, "random", np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert ((a >= 2) & (a < 8)).all() and (np.diff(a, axis=1) > 0).all()
    counts = np.bincount(a.ravel(), minlength=10)[2:8]
    assert counts.min() > 0.8 * counts.mean()  # every kept candidate drawn about equally often
    assert not np.array_equal(a, sample_candidates(keep, 3, "random", np.random.default_rng(8)))


def test_filter_candidates_removes_exactly_one_candidate_per_filter():
    scores = np.array([[0.95, 0.9, 0.8, 0.7, 0.6, 0.5],
                       [0.5, 0.4, -np.inf, -np.inf, -np.inf, -np.inf]], np.float32)
    ids = np.array([[0, 1, 2, 3, 4, 5], [7, 8, -1, -1, -1, -1]])
    positives = np.array([[1], [-1]])
    positive_scores = np.array([0.75, 1.0], np.float32)
    config = quiet(rank_range=(1, 5), ceiling=0.75, margin=0.1, relative_margin=0.25)
    keep, removed = filter_candidates(scores, ids, positives, positive_scores, config)
    # row 0: 1 is the positive; 0 is rank 0 of the rest; 2 (0.8) > ceiling; 3 (0.7) > 0.75 - 0.1;
    # 4 (0.6) > 0.75 × 0.75; only 5 survives. Row 1: 7 is rank 0; 8 survives; -1s are not candidates.
    np.testing.assert_array_equal(keep, [[0, 0, 0, 0, 0, 1], [0, 1, 0, 0, 0, 0]])
    assert removed == {"positive": 1, "range": 2, "ceiling": 1, "margin": 1, "relative_margin": 1}
    _, removed = filter_candidates(scores, ids, positives, positive_scores, quiet(relative_margin=None))
    assert removed == {"positive": 1, "range": 0}


# ------------------------------------------------------------------------ configuration
def test_parse_range_and_config_errors():
    assert parse_range("10:100") == (10, 100) and parse_range(":50") == (0, 50)
    assert MiningConfig(rank_range="3:30").rank_range == (3, 30)
    with pytest.raises(ConfigError, match=r"rank range must look like START:STOP \(e.g. 10:100\), got '10'"):
        parse_range("10")
    cases = [(dict(rank_range=(5, 5)), "rank range must have 0 <= start < stop, got 5:5"),
             (dict(num_negatives=0), "num_negatives must be at least 1, got 0"),
             (dict(ceiling=1.5), r"ceiling is a cosine similarity, in \[-1, 1\]; got 1.5"),
             (dict(relative_margin=1.0), r"relative_margin must be in \[0, 1\), got 1.0"),
             (dict(sample="best"), "sample must be one of top, random, got 'best'"),
             (dict(index="lsh"), "index must be one of auto, flat, ivf, hnsw, got 'lsh'")]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            MiningConfig(**kwargs)


# ------------------------------------------------------------------------ whole runs
ANGLES = {"query": 0, "pos": 20, "a": 5, "b": 10, "c": 30, "d": 40, "e": 50, "f": 60, "g": 70}


def cos(deg: float) -> float:
    return math.cos(math.radians(deg))


HAND_MADE_CASES = [
    (dict(relative_margin=None), ["a", "b", "c"]),
    (dict(relative_margin=None, rank_range=(2, 100)), ["c", "d", "e"]),
    (dict(relative_margin=None, ceiling=cos(35)), ["d", "e", "f"]),
    (dict(relative_margin=None, margin=cos(20) - cos(45)), ["e", "f", "g"]),
    (dict(relative_margin=1 - cos(55) / cos(20)), ["f", "g"]),
]


@pytest.mark.parametrize("kwargs,expected", HAND_MADE_CASES)
def test_mining_hand_made_case(kwargs, expected):
    """The positive sits at 20°; its copy (same text, another id) is never a negative either."""
    corpus = {f"id-{t}": t for t in ANGLES if t != "query"} | {"id-copy": "pos"}
    pairs = [Pair("query", "pos", positive_id="id-pos")]
    mined, summary = mine_hard_negatives(TableEncoder(ANGLES), pairs, corpus, quiet(**kwargs))
    assert mined[0].negatives == expected
    assert summary.corpus == 8 and summary.removed["positive"] == 1  # the copy is merged into "pos"


class ScaledEncoder:
    """Another encoder's vectors, each text's scaled by its own factor: same cosines, other lengths."""

    def __init__(self, inner, scale: dict[str, float]) -> None:
        self.inner, self.scale, self.name_or_path = inner, scale, "scaled-" + inner.name_or_path

    def encode(self, texts, batch_size=32, show_progress=False):
        factors = np.float32([self.scale[t] for t in texts])[:, None]
        return self.inner.encode(texts, batch_size, show_progress) * factors


@pytest.mark.parametrize("kwargs,expected", HAND_MADE_CASES)
def test_mining_uses_cosines_whatever_the_encoders_vector_lengths(kwargs, expected):
    """Lengths grow with the angle (1 + angle / 5): a raw inner product would rank e, d, f first and
    a, b last, and would put the positive's similarity (4.7) far above every margin."""
    corpus = {f"id-{t}": t for t in ANGLES if t != "query"} | {"id-copy": "pos"}
    encoder = ScaledEncoder(TableEncoder(ANGLES), {t: 1 + a / 5 for t, a in ANGLES.items()})
    pairs = [Pair("query", "pos", positive_id="id-pos")]
    mined, _ = mine_hard_negatives(encoder, pairs, corpus, quiet(**kwargs))
    assert mined[0].negatives == expected


def test_margins_use_the_real_similarity_of_a_positive_missing_from_the_corpus():
    """"pos" (20°, cosine 0.940) is not in the corpus: it is encoded on its own. With margin 0.1 the
    bound is 0.840, so c (30°, 0.866) goes and d (40°, 0.766) stays; taking the anchor's own vector
    (cosine 1) as the positive's would raise the bound to 0.9 and keep c."""
    corpus = [t for t in ANGLES if t not in ("query", "pos")]
    for anchors_before in ([], [Pair("far query", "g")]):  # the positive's row comes after every anchor
        angles = ANGLES | {"far query": 180}
        pairs = [*anchors_before, Pair("query", "pos")]
        with pytest.warns(UserWarning, match="positives are not in the corpus"):
            mined, summary = mine_hard_negatives(TableEncoder(angles), pairs, corpus,
                                                 quiet(relative_margin=None, margin=0.1))
        assert mined[-1].negatives == ["d", "e", "f"]
        assert summary.corpus == 7


def test_positives_at_the_top_ranks_do_not_use_up_the_rank_window():
    """a (5°) and b (10°) are the two nearest documents and both positives of "query": rank_range 0:3
    counts ranks among the other documents, so c, d and e, not just c."""
    corpus = [t for t in ANGLES if t not in ("query", "pos")]
    pairs = [Pair("query", "a"), Pair("query", "b")]
    mined, summary = mine_hard_negatives(TableEncoder(ANGLES), pairs, corpus,
                                         quiet(rank_range=(0, 3), relative_margin=None))
    assert [m.negatives for m in mined] == [["c", "d", "e"], ["c", "d", "e"]]
    assert summary.short == 0 and summary.negatives == 6


def test_random_sampling_of_a_whole_run_follows_the_seed():
    """Six anchors spread round the circle, 60 documents 6° apart: each pair draws 4 of its 40 nearest
    non-positive documents. The same seed gives the same draw; another seed another one."""
    docs = {f"d{i}": 6.0 * i for i in range(60)}
    queries = {f"q{j}": 60.0 * j + 1.0 for j in range(6)}
    encoder = TableEncoder(docs | queries)
    pairs = [Pair(f"q{j}", f"d{10 * j}") for j in range(6)]

    def run(seed):
        mined, _ = mine_hard_negatives(encoder, pairs, list(docs),
                                       quiet(num_negatives=4, rank_range=(0, 40), relative_margin=None,
                                             sample="random", seed=seed))
        return [m.negatives for m in mined]

    first = run(3)
    assert run(3) == first
    assert run(4) != first
    assert all(len(n) == len(set(n)) == 4 for n in first)
    assert first != [[f"d{(10 * j + s) % 60}" for s in (1, -1, 2, -2)] for j in range(6)]  # not just the top


def test_existing_negatives_are_kept_first_and_not_repeated():
    pairs = [Pair("query", "pos", ["b"]), Pair("query", "c")]
    mined, summary = mine_hard_negatives(TableEncoder(ANGLES), pairs, None,
                                         quiet(num_negatives=2, relative_margin=None))
    # The pair file is its own corpus: pos, b, c; pos and c are both positives of "query".
    assert mined == [Pair("query", "pos", ["b"]), Pair("query", "c", ["b"])]
    assert summary.corpus == 3 and summary.short == 2 and summary.negatives == 1  # the first pair got no new one
    assert summary.removed["own negatives"] == 1


def test_a_pairs_source_and_ids_survive_mining():
    """`source` was dropped: mining, then training with group_by_source, put every pair in one source."""
    pairs = [Pair("query", "pos", source="qa", anchor_id="q1", positive_id="d1"), Pair("query", "c", source="faq")]
    mined, _ = mine_hard_negatives(TableEncoder(ANGLES), pairs, None, quiet(num_negatives=1, relative_margin=None))
    assert [(p.source, p.anchor_id, p.positive_id) for p in mined] == [("qa", "q1", "d1"), ("faq", None, None)]


def test_a_rank_range_starting_past_the_corpus_is_refused_before_encoding():
    corpus = [t for t in ANGLES if t != "query"]  # 8 documents

    class Refuses(TableEncoder):
        def encode(self, *args, **kwargs):
            raise AssertionError("encoded before the range was checked")

    with pytest.raises(ConfigError, match="starts at rank 8 but the corpus has 8 distinct documents"):
        mine_hard_negatives(Refuses(ANGLES), [Pair("query", "pos")], corpus, quiet(rank_range=(8, 20)))


def test_a_pairs_own_negatives_do_not_count_among_the_mined_ones():
    """"a" (5°) is the nearest document and already the pair's negative: three new ones are mined."""
    corpus = {f"id-{t}": t for t in ANGLES if t != "query"}
    pairs = [Pair("query", "pos", negatives=["a"], positive_id="id-pos")]
    mined, summary = mine_hard_negatives(TableEncoder(ANGLES), pairs, corpus,
                                         quiet(num_negatives=3, relative_margin=None))
    assert mined[0].negatives == ["a", "b", "c", "d"]
    assert (summary.negatives, summary.short, summary.removed["own negatives"]) == (3, 0, 1)


texts = st.lists(st.sampled_from(["red", "green", "blue", "fox", "dog", "car"]), min_size=1, max_size=4).map(" ".join)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(docs=st.lists(texts, min_size=2, max_size=25), anchors=st.lists(texts, min_size=1, max_size=6),
       links=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 24)), min_size=1, max_size=30),
       with_ids=st.booleans(), start=st.integers(0, 3), sample=st.sampled_from(["top", "random"]))
def test_mining_never_returns_a_positive(docs, anchors, links, with_ids, start, sample):
    pairs = [Pair(anchors[a % len(anchors)], docs[d % len(docs)], positive_id=f"d{d % len(docs)}")
             for a, d in links]
    corpus = {f"d{i}": t for i, t in enumerate(docs)} if with_ids else None
    config = quiet(num_negatives=5, rank_range=(start, 20), relative_margin=None, sample=sample)
    distinct = len({p.positive.strip() for p in pairs} if corpus is None else {t.strip() for t in docs})
    if start >= distinct:  # nothing could be mined: refused up front
        with pytest.raises(ConfigError, match="no candidate could be mined"):
            mine_hard_negatives(HashEncoder(), pairs, corpus, config)
        return
    mined, summary = mine_hard_negatives(HashEncoder(), pairs, corpus, config)
    positives: dict[str, set[str]] = {}
    for p in pairs:
        positives.setdefault(p.anchor, set()).add(p.positive)
    assert [(m.anchor, m.positive) for m in mined] == [(p.anchor, p.positive) for p in pairs]
    for m in mined:
        assert not positives[m.anchor] & set(m.negatives)
        assert len(m.negatives) == len(set(m.negatives)) <= 5
        assert set(m.negatives) <= set(docs)
    assert summary.negatives == sum(len(m.negatives) for m in mined)


def test_cranfield_negatives_are_never_judged_relevant(shared_data):
    data = load_beir(shared_data / "cranfield", split="train")
    mined, summary = mine_hard_negatives(HashEncoder(), data, config=quiet(num_negatives=4, rank_range=(0, 30),
                                                                           relative_margin=None))
    relevant = {qid: {data.doc_text(d) for d, g in docs.items() if g > 0} for qid, docs in data.qrels.items()}
    assert len(mined) == 1077 and summary.corpus == 1398  # two empty documents left out
    assert summary.negatives == 4 * 1077
    assert all(not relevant[m.anchor_id] & set(m.negatives) for m in mined)
    assert summary.removed["positive"] > 0  # the filter had work to do


# ------------------------------------------------------------------------ embedding cache
def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_run(tmp_path, monkeypatch):
    import contrastkit.mining as mining

    def refuses(path, write):
        raise OSError(30, f"cannot write {path}: Read-only file system")

    monkeypatch.setattr(mining, "write_whole", refuses)
    encoder, pairs = HashEncoder(), [Pair("red fox", "a red fox"), Pair("blue car", "a blue car")]
    with pytest.warns(UserWarning, match="embeddings not cached .*Read-only file system"):
        mined, _ = mine_hard_negatives(encoder, pairs, ["a red fox", "a blue car", "green dog", "red car"],
                                       MiningConfig(cache_dir=tmp_path, show_progress=False))
    assert len(mined) == 2


def test_second_run_reads_the_cache(tmp_path):
    encoder, pairs = HashEncoder(), [Pair("red fox", "a red fox"), Pair("blue car", "a blue car")]
    corpus = ["a red fox", "a blue car", "green dog", "red car"]
    config = MiningConfig(cache_dir=tmp_path, show_progress=False)
    first, s1 = mine_hard_negatives(encoder, pairs, corpus, config)
    assert encoder.calls == [4, 2] and not s1.cache_hit
    second, s2 = mine_hard_negatives(encoder, pairs, corpus, config)
    assert encoder.calls == [4, 2] and s2.cache_hit and first == second
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".npy", ".npy"]  # no temp files left


def test_cache_key_depends_on_model_and_texts_and_bad_files_are_rewritten(tmp_path):
    a, b = HashEncoder(name_or_path="model-a"), HashEncoder(name_or_path="model-b")
    path = embedding_cache_path(a, ["x", "y"], tmp_path)
    assert path != embedding_cache_path(b, ["x", "y"], tmp_path)
    assert len({path, embedding_cache_path(a, ["xy"], tmp_path), embedding_cache_path(a, ["x", "y", ""], tmp_path)}) == 3
    b.name_or_path, b.max_seq_length = "model-a", 128
    assert path != embedding_cache_path(b, ["x", "y"], tmp_path)
    assert path.name.startswith("model-a-")
    path.write_bytes(b"not numpy")
    emb, hit = encode_cached(a, ["x", "y"], cache_dir=tmp_path)
    assert not hit and np.array_equal(np.load(path), emb)


def test_a_cache_file_with_the_wrong_number_of_rows_is_a_miss_and_is_rewritten(tmp_path):
    encoder = HashEncoder()
    path = embedding_cache_path(encoder, ["red fox", "blue car"], tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ones((3, 64), np.float32))  # right dtype and width, one row too many
    emb, hit = encode_cached(encoder, ["red fox", "blue car"], cache_dir=tmp_path)
    assert not hit and encoder.calls == [2] and emb.shape == (2, 64)
    assert np.array_equal(emb, HashEncoder().encode(["red fox", "blue car"]))
    assert np.array_equal(np.load(path), emb)
    again, hit = encode_cached(encoder, ["red fox", "blue car"], cache_dir=tmp_path)
    assert hit and encoder.calls == [2] and np.array_equal(again, emb)


def test_cache_dir_follows_contrastkit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CONTRASTKIT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "embeddings"
    mine_hard_negatives(HashEncoder(), [Pair("red fox", "a red fox")], ["a red fox", "dog"],
                        MiningConfig(show_progress=False))
    assert len(list((tmp_path / "embeddings").glob("hash-bow-*.npy"))) == 2
    monkeypatch.delenv("CONTRASTKIT_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "contrastkit" / "embeddings"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "contrastkit" / "embeddings"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored, as the specification says
    assert default_cache_dir() == Path.home() / ".cache" / "contrastkit" / "embeddings"
    monkeypatch.setenv("CONTRASTKIT_CACHE", str(tmp_path / "own"))  # ours comes first
    assert default_cache_dir() == tmp_path / "own" / "embeddings"


def test_the_embedding_cache_keys_on_pooling_and_the_models_path_not_its_spelling(tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    """A CLS searcher was given the mean-pooled vectors cached for the same folder."""
    from contrastkit.encoder import Encoder
    from contrastkit.mining import embedding_cache_path

    texts = ["wing lift", "jet noise"]
    mean = Encoder.from_pretrained(tiny_model_dir, pooling="mean")
    cls = Encoder.from_pretrained(tiny_model_dir, pooling="cls")
    assert embedding_cache_path(mean, texts, tmp_path) != embedding_cache_path(cls, texts, tmp_path)
    monkeypatch.chdir(tiny_model_dir.parent)
    relative = Encoder.from_pretrained(f"./{tiny_model_dir.name}", pooling="mean")
    assert embedding_cache_path(relative, texts, tmp_path) == embedding_cache_path(mean, texts, tmp_path)


def test_mining_embeds_anchors_and_documents_with_the_models_prompts():
    """An E5 / BGE-style model: anchors take the query prompt, the corpus (and positives outside it)
    the document prompt, as its search would; without them the negatives were mined from other vectors."""
    class Prompted(TableEncoder):
        seen: list[str] = []

        def side_prompt(self, side):
            return {"query": "q: ", "document": "d: "}[side]

        def encode(self, texts, batch_size=32, show_progress=False, prompt=None):
            assert prompt == ""  # the prompt is in the texts: the model's default one is not added on top
            self.seen.extend(texts)
            return super().encode([t.split(": ", 1)[1] for t in texts], batch_size, show_progress)

    encoder = Prompted(ANGLES)
    corpus = [t for t in ANGLES if t not in ("query", "pos")]
    with pytest.warns(UserWarning, match="1 of 1 pairs' positives are not in the corpus"):
        mined, _ = mine_hard_negatives(encoder, [Pair("query", "pos")], corpus,
                                       quiet(num_negatives=1, relative_margin=None))
    assert "q: query" in encoder.seen and "d: pos" in encoder.seen
    assert {t for t in encoder.seen if t.startswith("d: ")} == {f"d: {t}" for t in corpus + ["pos"]}
    assert mined[0].negatives


def test_a_titled_corpus_finds_a_pairs_positive_by_its_body_and_never_mines_it():
    """The corpus embeds title + " " + text, a pair file holds the bodies: the positive matched no
    document, and 35 of 40 pairs got their own document as first negative."""
    docs = {f"d{i}": {"title": f"package {i}", "text": f"tool number {i} for the job"} for i in range(8)}
    pairs = [Pair(f"which tool {i}", f"tool number {i} for the job") for i in range(8)]

    class Texts:
        name_or_path = "texts"

        def encode(self, texts, batch_size=32, show_progress=False):
            # every text about tool i at one point: a pair's own document is its query's nearest
            return np.asarray([[1.0, float(re.findall(r"\d+", t)[0]), 0.0] for t in texts], dtype=np.float32)

    mined, summary = mine_hard_negatives(Texts(), pairs, docs, quiet(num_negatives=2, relative_margin=None))
    assert summary.removed["positive"] == 8 and summary.positives_outside == 0
    for i, pair in enumerate(mined):
        assert f"package {i} tool number {i} for the job" not in pair.negatives


def test_positives_the_corpus_does_not_hold_are_counted_and_said():
    pairs = [Pair("query", "a text the corpus lacks")]
    with pytest.warns(UserWarning, match="1 of 1 pairs' positives are not in the corpus by text or positive_id"):
        _, summary = mine_hard_negatives(TableEncoder({**ANGLES, "a text the corpus lacks": 15}), pairs,
                                         ["a", "b", "c", "d"], quiet(num_negatives=1, relative_margin=None))
    assert summary.positives_outside == 1 and "positives not in the corpus" in summary.format()


def test_an_anchor_with_many_positives_deepens_only_its_own_chunks_search(monkeypatch):
    """The search went stop + (most positives of any anchor) deep for every anchor, with a dense
    [anchors, that many] array: one query of 2,000 relevant documents took 1.3 GB for 40,000 anchors.
    The negatives are the same whatever the depth: the rank window comes first after the positives."""
    import contrastkit.mining as mining
    from contrastkit.index import VectorIndex

    class Gaussian:  # a vector of its own for every text: no ties, whose order faiss keeps per depth
        name_or_path = "gaussian"

        def encode(self, texts, batch_size=32, show_progress=False):
            return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(16) for t in texts]
                            ).astype(np.float32)

    docs = [f"document {i}" for i in range(300)]
    pairs = [Pair("popular query", d) for d in docs[:12]]  # one anchor, twelve positives
    pairs += [Pair(f"query {i}", docs[40 + i]) for i in range(7)]
    config = quiet(num_negatives=3, rank_range=(2, 20), relative_margin=None)
    whole, _ = mine_hard_negatives(Gaussian(), pairs, docs, config)
    depths = []
    search = VectorIndex.search
    monkeypatch.setattr(VectorIndex, "search", lambda self, q, k: depths.append(k) or search(self, q, k))
    monkeypatch.setattr(mining, "_SEARCH_CHUNK", 2)
    chunked, summary = mine_hard_negatives(Gaussian(), pairs, docs, config)
    assert chunked == whole
    assert depths == [20 + 12, 20 + 1, 20 + 1, 20 + 1] and summary.k == 32
