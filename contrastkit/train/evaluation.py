"""Retrieval evaluation during training, recorded before and after for the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contrastkit.data import load_beir
from contrastkit.encoder import Encoder
from contrastkit.evaluate import RetrievalResult, bm25_retrieval, evaluate_retrieval
from contrastkit.report.record import ROLE_LABELS, record_retrieval


@dataclass
class RetrievalEvaluator:
    """An evaluator on a BEIR split: metrics every eval_every steps, full results before and after.

    Called with an encoder it returns the mean metrics (the Trainer's evaluator contract); the
    Trainer also calls `evaluate` at step 0 and at the end and `record`s those results, with BM25,
    in the run folder's retrieval.json, so the report can show per-query wins and losses.
    """

    dataset: Any                 # a contrastkit.data.BeirDataset (corpus, queries, qrels)
    batch_size: int = 32

    @classmethod
    def from_folder(cls, folder: str | Path, split: str = "test", **kwargs: Any) -> "RetrievalEvaluator":
        """Load (and check) a BEIR folder's split now, before any training."""
        return cls(load_beir(folder, split), **kwargs)

    def evaluate(self, encoder: Encoder) -> RetrievalResult:
        return evaluate_retrieval(encoder, self.dataset, batch_size=self.batch_size, show_progress=False)

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        return self.evaluate(encoder).metrics

    def record(self, run_dir: str | Path, role: str, result: RetrievalResult, step: int | None = None) -> None:
        """Store `result` as `role` ("before", "after") in run_dir/retrieval.json."""
        record_retrieval(run_dir, role, result, self.dataset, label=ROLE_LABELS[role], step=step)

    def record_bm25(self, run_dir: str | Path) -> None:
        """Store BM25 on the same split, the lexical baseline of the report's table."""
        self.record(run_dir, "bm25", bm25_retrieval(self.dataset))
