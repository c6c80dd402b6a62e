"""What a run records for its report, next to metrics.jsonl: written by the trainer and the demo.

- retrieval.json: before/after (and BM25) retrieval on the evaluation split: mean and per-query
  metrics, each query's top results (ids and scores), and the texts the report shows.
- similarities.json: raw positive / negative cosine similarities of a fixed sample of training pairs,
  before and after training (the report's histograms).
- environment.json: versions, machine and command of the run.

Plain JSON, so `contrastkit report` needs nothing but the run folder.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from contrastkit.files import write_text_whole
from contrastkit.report import REPORT_FILE

RETRIEVAL_FILE = "retrieval.json"
SIMILARITIES_FILE = "similarities.json"
ENVIRONMENT_FILE = "environment.json"
TOP_RESULTS = 5                      # results kept per query and system
SNIPPET_CHARS = 160                  # characters kept of each text shown
PER_QUERY_METRICS = ("ndcg@10", "recall@10", "mrr@10", "recall@100")
MAX_NEGATIVES = 4096                 # negative similarities kept per histogram (a seeded sample)
ROLE_LABELS = {"bm25": "BM25", "before": "before training", "after": "after training"}


def clear_records(run_dir: str | Path) -> None:
    """Remove an earlier run's retrieval and similarity records and its report.html: a fresh run must
    not show them (with `report: false` the old page stayed, describing a model no longer there)."""
    for name in (RETRIEVAL_FILE, SIMILARITIES_FILE, REPORT_FILE):
        (Path(run_dir) / name).unlink(missing_ok=True)


def snippet(text: str, width: int = SNIPPET_CHARS) -> str:
    """Whitespace collapsed, cut to `width` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or {} when the file does not exist."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_json(path: Path, data: Mapping) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    write_text_whole(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def retrieval_snapshot(result: Any, *, label: str, step: int | None = None,
                       top: int = TOP_RESULTS) -> dict:
    """One system's evaluation (a RetrievalResult) as the report stores it."""
    return {"label": label, "step": step, "metrics": dict(result.metrics),
            "per_query": {q: {m: v[m] for m in PER_QUERY_METRICS if m in v} for q, v in result.per_query.items()},
            "top": {q: [[d, round(float(s), 4)] for d, s in docs[:top]] for q, docs in result.run.items()}}


def record_retrieval(run_dir: str | Path, role: str, result: Any, dataset: Any, *, label: str,
                     step: int | None = None) -> None:
    """Add one system's evaluation to run_dir/retrieval.json under `role` ("bm25", "before", "after").

    dataset: the BEIR split evaluated (queries, qrels, corpus): the texts of its queries, their
    relevant documents and of every document in a stored top list go along, cut to SNIPPET_CHARS.
    """
    path = Path(run_dir) / RETRIEVAL_FILE
    data = read_json(path)
    snap = retrieval_snapshot(result, label=label, step=step)
    data.setdefault("systems", {})[role] = snap
    data["split"] = getattr(dataset, "split", None)
    queries, docs = data.setdefault("queries", {}), data.setdefault("docs", {})
    relevant = data.setdefault("relevant", {})
    for q in snap["per_query"]:
        queries[q] = snippet(dataset.queries[q])
        relevant[q] = sorted(d for d, grade in dataset.qrels.get(q, {}).items() if grade > 0)
        for d in [*relevant[q], *(d for d, _ in snap["top"].get(q, []))]:
            if d not in docs and d in dataset.corpus:
                docs[d] = snippet(_document_text(dataset, d))
    write_json(path, data)


def _document_text(dataset: Any, doc_id: str) -> str:
    if hasattr(dataset, "doc_text"):
        return dataset.doc_text(doc_id)
    doc = dataset.corpus[doc_id]
    return f"{doc.get('title', '')} {doc.get('text', '')}"


def similarity_sample(values: Mapping[str, np.ndarray], *, seed: int = 0,
                      max_negatives: int = MAX_NEGATIVES) -> dict[str, list[float]]:
    """similarity_values' arrays as short JSON lists: 4 decimals, the negatives a seeded sample."""
    out = {}
    for name, array in values.items():
        array = np.asarray(array, dtype=np.float64)
        if name == "negative" and len(array) > max_negatives:
            array = np.random.default_rng(seed).choice(array, max_negatives, replace=False)
        out[name] = [round(float(x), 4) for x in array]
    return out


def record_similarities(run_dir: str | Path, role: str, step: int, values: Mapping[str, np.ndarray],
                        *, seed: int = 0) -> None:
    """Store the similarity sample of `role` ("before" or "after") in run_dir/similarities.json."""
    path = Path(run_dir) / SIMILARITIES_FILE
    data = read_json(path)
    data[role] = {"step": step, **similarity_sample(values, seed=seed)}
    write_json(path, data)


def environment(**extra: Any) -> dict[str, Any]:
    """What ran the job: versions, machine, command and time (plus any `extra`, e.g. device)."""
    import torch
    import transformers

    from contrastkit import __version__

    return {"contrastkit": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **extra}


def record_environment(run_dir: str | Path, **extra: Any) -> None:
    """Write run_dir/environment.json."""
    write_json(Path(run_dir) / ENVIRONMENT_FILE, environment(**extra))


__all__ = ["ENVIRONMENT_FILE", "RETRIEVAL_FILE", "ROLE_LABELS", "SIMILARITIES_FILE", "clear_records", "environment",
           "read_json", "record_environment", "record_retrieval", "record_similarities", "retrieval_snapshot",
           "similarity_sample", "snippet", "write_json"]
