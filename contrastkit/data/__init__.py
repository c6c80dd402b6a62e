"""Data in: pairs and triplets from files, BEIR folders and Hugging Face Datasets, checked strictly."""

from contrastkit.data.beir import (BeirDataset, doc_text, load_beir, load_corpus, load_qrels, load_queries,
                                   pairs_from_beir)
from contrastkit.data.inspect import format_summary, inspect_pairs
from contrastkit.data.pairs import Pair, iter_pairs, pairs_from_dataset, read_pairs, write_pairs

__all__ = ["BeirDataset", "Pair", "doc_text", "format_summary", "inspect_pairs", "iter_pairs", "load_beir",
           "load_corpus", "load_qrels", "load_queries", "pairs_from_beir", "pairs_from_dataset", "read_pairs",
           "write_pairs"]
