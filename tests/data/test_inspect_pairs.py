"""inspect_pairs: counts, duplicates and length percentiles on hand-made pairs, files and BEIR folders."""

from __future__ import annotations

import json

import numpy as np

from contrastkit.data import Pair, format_summary, inspect_pairs, write_pairs

PAIRS = [
    Pair("a b", "one two three", ["x"]),
    Pair("a b", "one two three"),            # duplicate pair (and anchor, positive)
    Pair("a b", "four"),                      # anchor repeated a third time
    Pair("same text", "same text", ["x", "y z"]),  # anchor equals positive
    Pair("c", "five six seven eight nine"),
]


def test_counts_and_duplicates():
    s = inspect_pairs(PAIRS)
    assert s["pairs"] == 5
    assert s["anchors"] == {"unique": 3, "duplicated": 1, "extra_copies": 2}
    assert s["positives"] == {"unique": 4, "duplicated": 1, "extra_copies": 1}
    assert s["negatives"] == {"total": 3, "unique": 2, "duplicated": 1, "extra_copies": 1}
    assert s["pairs_with_negatives"] == 2
    assert s["duplicate_pairs"] == 1
    assert s["anchor_equals_positive"] == 1


def test_word_lengths_match_numpy_percentiles():
    s = inspect_pairs(PAIRS)
    assert s["length_unit"] == "words"
    positive = [3, 3, 1, 2, 5]
    expected = {"count": 5, "min": 1, "mean": 2.8, "p50": 3, "p90": 5, "p99": 5, "max": 5}
    assert s["lengths"]["positive"] == expected  # p90: 90 % of [1, 2, 3, 3, 5] are at most 5, not int(4.2)
    for p in (50, 90, 99):
        assert s["lengths"]["positive"][f"p{p}"] == int(np.percentile(positive, p, method="inverted_cdf"))
    assert s["lengths"]["negative"]["max"] == 2


def test_token_lengths_come_from_the_tokenizer():
    calls = []

    def tokenizer(texts, **kwargs):  # a stand-in with a Hugging Face tokenizer's call signature
        calls.append(kwargs)
        return {"input_ids": [[101, *range(len(t)), 102] for t in texts]}  # one token per character

    s = inspect_pairs([Pair("ab", "abcd")], tokenizer=tokenizer)
    assert s["length_unit"] == "tokens"
    assert s["lengths"]["anchor"]["max"] == 4 and s["lengths"]["positive"]["max"] == 6
    assert calls[0]["truncation"] is False


def test_real_tokenizer_counts_special_tokens():
    from transformers import AutoTokenizer

    from contrastkit.encoder import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    s = inspect_pairs([Pair("hello world", "hello")], tokenizer=tokenizer)
    assert s["lengths"]["anchor"]["max"] == 4  # [CLS] hello world [SEP]


def test_file_and_beir_folder_inputs_and_format(tmp_path, shared_data):
    path = write_pairs(PAIRS, tmp_path / "pairs.jsonl")
    s = inspect_pairs(path)
    assert s["source"] == str(path) and s["pairs"] == 5
    json.dumps(s)  # plain, JSON-ready
    text = format_summary(s)
    assert text.splitlines()[0] == f"{path}: 5 pairs"
    assert "  anchor equals positive: 1" in text
    assert "  duplicate (anchor, positive) pairs: 1" in text
    beir = inspect_pairs(shared_data / "cranfield", split="test")
    assert beir["pairs"] == 534 and beir["anchors"]["unique"] == 75
    assert "negatives  none" in format_summary(beir)


def test_the_length_table_keeps_its_columns_apart_for_long_texts():
    """Columns of a fixed 8: a min of 1 beside a mean of 100000.5 read "1100000.5"."""
    s = inspect_pairs([Pair("a", "b " * 200_000), Pair("c", "d")])
    rows = [line.split() for line in format_summary(s).splitlines()[-3:]]
    header, _, positive = rows
    assert header[:2] == ["min", "mean"] and positive[0] == "positive"
    assert len(positive) == len(header) + 1 and positive[1] == str(s["lengths"]["positive"]["min"])
