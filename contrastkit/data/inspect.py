"""A summary of a pair file before training: counts, lengths, duplicates, anchors equal to positives.

    summary = inspect_pairs("train.jsonl", tokenizer=encoder.tokenizer)
    print(format_summary(summary))

Lengths are in tokens of the given Hugging Face tokenizer (special tokens included, no
truncation, so they can be compared with max_seq_length), or in whitespace words without one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np

from contrastkit.data.beir import load_beir, pairs_from_beir
from contrastkit.data.pairs import Pair, iter_pairs

PERCENTILES = (50, 90, 99)
_CHUNK = 2048


def _digest(text: str) -> bytes:
    # 8-byte digests keep duplicate counting cheap on files larger than memory.
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def _lengths(texts: list[str], tokenizer) -> list[int]:
    if tokenizer is None:
        return [len(t.split()) for t in texts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]]


def _distribution(lengths: list[int]) -> dict:
    if not lengths:
        return {"count": 0}
    x = np.asarray(lengths)
    out = {"count": int(x.size), "min": int(x.min()), "mean": round(float(x.mean()), 1)}
    # pN: the shortest length that N % of the texts do not exceed (an observed length, never rounded
    # down: what to compare with max_seq_length)
    out.update({f"p{p}": int(np.percentile(x, p, method="inverted_cdf")) for p in PERCENTILES})
    out["max"] = int(x.max())
    return out


def _repeats(counter: Counter) -> dict:
    """How many distinct values, how many of them occur more than once, how many extra copies."""
    return {"unique": len(counter), "duplicated": sum(1 for c in counter.values() if c > 1),
            "extra_copies": sum(c - 1 for c in counter.values())}


def _chunks(pairs: Iterable[Pair]) -> Iterator[list[Pair]]:
    it = iter(pairs)
    while chunk := list(islice(it, _CHUNK)):
        yield chunk


def inspect_pairs(path_or_pairs: str | Path | Iterable[Pair], tokenizer=None, *,
                  split: str = "train") -> dict:
    """Counts, length percentiles and duplicates of a pair file, a BEIR folder (its `split`) or pairs.

    Streams a file, so it also works on files larger than memory. Returns a plain dict (JSON-ready):
    pairs; anchors / positives / negatives → unique, duplicated, extra_copies; duplicate_pairs;
    anchor_equals_positive; pairs_with_negatives; lengths → {anchor, positive, negative} →
    count, min, mean, p50, p90, p99 (N % of the texts are at most this long), max; length_unit ("tokens" or
    "words").
    """
    if isinstance(path_or_pairs, (str, Path)):
        source = str(path_or_pairs)
        if Path(path_or_pairs).is_dir():
            pairs: Iterable[Pair] = pairs_from_beir(load_beir(path_or_pairs, split=split))
            source += f" (split {split})"
        else:
            pairs = iter_pairs(path_or_pairs)
    else:
        source, pairs = "pairs", path_or_pairs
    counts = {"anchor": Counter(), "positive": Counter(), "negative": Counter(), "pair": Counter()}
    lengths: dict[str, list[int]] = {"anchor": [], "positive": [], "negative": []}
    total = same = with_negatives = 0
    for chunk in _chunks(pairs):
        total += len(chunk)
        negatives = [n for p in chunk for n in p.negatives]
        with_negatives += sum(1 for p in chunk if p.negatives)
        same += sum(1 for p in chunk if p.anchor.strip() == p.positive.strip())
        for p in chunk:
            a, b = _digest(p.anchor), _digest(p.positive)
            counts["anchor"][a] += 1
            counts["positive"][b] += 1
            counts["pair"][a + b] += 1
        counts["negative"].update(_digest(n) for n in negatives)
        for name, texts in (("anchor", [p.anchor for p in chunk]), ("positive", [p.positive for p in chunk]),
                            ("negative", negatives)):
            if texts:
                lengths[name].extend(_lengths(texts, tokenizer))
    return {
        "source": source,
        "pairs": total,
        "anchors": _repeats(counts["anchor"]),
        "positives": _repeats(counts["positive"]),
        "negatives": {"total": len(lengths["negative"]), **_repeats(counts["negative"])},
        "pairs_with_negatives": with_negatives,
        "duplicate_pairs": _repeats(counts["pair"])["extra_copies"],
        "anchor_equals_positive": same,
        "length_unit": "words" if tokenizer is None else "tokens",
        "lengths": {name: _distribution(values) for name, values in lengths.items()},
    }


def format_summary(summary: dict) -> str:
    """The dict of `inspect_pairs` as a short text report for the terminal."""
    lines = [f"{summary['source']}: {summary['pairs']:,} pairs"]
    for key in ("anchors", "positives", "negatives"):
        r = summary[key]
        if key == "negatives" and not r["total"]:
            lines.append("  negatives  none")
            continue
        total = f"{r['total']:,} in {summary['pairs_with_negatives']:,} pairs, " if key == "negatives" else ""
        lines.append(f"  {key:<10} {total}{r['unique']:,} unique; {r['duplicated']:,} occur more than once "
                     f"({r['extra_copies']:,} extra copies)")
    lines.append(f"  duplicate (anchor, positive) pairs: {summary['duplicate_pairs']:,}")
    lines.append(f"  anchor equals positive: {summary['anchor_equals_positive']:,}")
    lines.append(f"  length in {summary['length_unit']}:")
    cols = ["min", "mean", *(f"p{p}" for p in PERCENTILES), "max"]
    shown = [name for name, dist in summary["lengths"].items() if dist["count"]]
    # each column as wide as its widest figure, and two spaces between columns: a mean of 100000.5
    # beside a min of 1 read "1100000.5" in columns of a fixed 8
    width = {c: max([len(c), *(len(str(summary["lengths"][n][c])) for n in shown)]) for c in cols}
    lines.append("    " + f"{'':<10}" + "".join(f"  {c:>{width[c]}}" for c in cols))
    for name in shown:
        lines.append("    " + f"{name:<10}" + "".join(f"  {summary['lengths'][name][c]:>{width[c]}}" for c in cols))
    return "\n".join(lines)
