"""Read a run folder into one plain structure for the report (no plotting, no HTML here).

A run folder is what `contrastkit train` (or `adapt`) writes: metrics.jsonl, train_config.yaml and,
when recorded, retrieval.json, similarities.json and environment.json. The demo's output folder
counts too: its training files are in model/, its own before/after in retrieval.json and
demo_results.json next to it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contrastkit.data.validate import type_name
from contrastkit.errors import DataError, parse_error_text
from contrastkit.jsonl import iter_jsonl
from contrastkit.report import ReportError
from contrastkit.report.record import ENVIRONMENT_FILE, RETRIEVAL_FILE, SIMILARITIES_FILE, read_json

LOG_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.yaml"
DEMO_FILE = "demo_results.json"


@dataclass
class RunData:
    """Everything the report shows, read from one run folder; a missing piece is empty, never an error."""

    run_dir: Path
    train_dir: Path                                              # where metrics.jsonl is (run_dir or run_dir/model)
    steps: list[dict] = field(default_factory=list)              # one per logged training step
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)   # (step, metrics), by step
    health: list[tuple[int, dict[str, Any]]] = field(default_factory=list)    # (step, health signals)
    similarities: dict[str, dict] = field(default_factory=dict)  # "before"/"after" → positive, negative, ...
    retrieval: dict = field(default_factory=dict)                # retrieval.json (systems, queries, docs, ...)
    config: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    demo: dict = field(default_factory=dict)                     # demo_results.json, for a demo folder

    @property
    def systems(self) -> dict[str, dict]:
        """role ("bm25", "before", "after") → snapshot, as recorded."""
        return self.retrieval.get("systems", {})


def find_train_dir(run_dir: Path) -> Path:
    """The folder holding the training log: the run folder itself, or its model/ (the demo's layout)."""
    if not run_dir.is_dir():
        raise ReportError(f"'{run_dir}' is not a folder: give the output folder of a training run or the demo")
    for candidate in (run_dir, run_dir / "model"):
        if (candidate / LOG_FILE).is_file():
            return candidate
    raise ReportError(f"'{run_dir}' is not a contrastkit run: no {LOG_FILE} in it (nor in {run_dir / 'model'}); "
                      f"give the output folder of `contrastkit train`, `adapt` or `demo`")


def read_log(path: Path) -> tuple[list[dict], list[tuple[int, dict]], list[tuple[int, dict]]]:
    """metrics.jsonl → (training steps, evaluations, health records), each in file order."""
    steps, evals, health = [], [], []
    try:
        for line_no, record in iter_jsonl(path):
            if not isinstance(record, dict) or "step" not in record:
                raise ReportError(f"{path} line {line_no}: expected a JSON object with a \"step\"")
            for section in ("eval", "health"):
                if section in record and not isinstance(record[section], dict):
                    raise ReportError(f'{path} line {line_no}: field "{section}": expected a JSON object, '
                                      f"got {type_name(record[section])}")
            if "eval" in record:
                evals.append((record["step"], record["eval"]))
            elif "health" in record:
                health.append((record["step"], record["health"]))
            else:
                steps.append(record)
    except DataError as exc:
        text = path.read_bytes()
        if text and not text.endswith(b"\n") and exc.line == text.count(b"\n") + 1:
            # the last line, cut short: a run killed mid-write (its curves are wanted most then)
            warnings.warn(f"{path} line {exc.line}: cut short, left out of the report", stacklevel=2)
            return steps, evals, health
        raise ReportError(str(exc)) from exc
    return steps, evals, health


def read_object(path: Path) -> dict:
    """A JSON object file of the run ({} when it is absent); a ReportError naming the file otherwise."""
    try:
        data = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type_name(data)}")
    return data


def read_config(path: Path) -> dict:
    """The run's train_config.yaml ({} when absent); a ReportError naming the file when it is not a mapping."""
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not valid YAML ({parse_error_text(exc)})") from exc
    if config is not None and not isinstance(config, dict):
        raise ReportError(f"{path}: expected a mapping of settings, got {type_name(config)}")
    return config or {}


def merge_evaluations(logged: list[tuple[int, dict]], systems: dict[str, dict]) -> list[tuple[int, dict]]:
    """The evaluations of the log plus the recorded before (step 0) and after, one per step, by step."""
    by_step = {step: metrics for step, metrics in logged}
    for role in ("before", "after"):
        snap = systems.get(role)
        if snap is not None and snap.get("step") is not None:
            by_step.setdefault(snap["step"], snap["metrics"])
    return sorted(by_step.items())


def collect_run(run_dir: str | Path) -> RunData:
    """Read a run folder (see the module docstring); ReportError names the folder when it is not one."""
    run_dir = Path(run_dir)
    train_dir = find_train_dir(run_dir)
    steps, evals, health = read_log(train_dir / LOG_FILE)

    def first(name: str) -> dict:  # the demo's own files sit in run_dir, the trainer's in train_dir
        return read_object(run_dir / name) or read_object(train_dir / name)

    retrieval, similarities = first(RETRIEVAL_FILE), first(SIMILARITIES_FILE)
    systems = retrieval.get("systems", {})
    for name, roles in ((f'{RETRIEVAL_FILE}: "systems"', systems), (SIMILARITIES_FILE, similarities)):
        if not isinstance(roles, dict) or not all(isinstance(v, dict) for v in roles.values()):
            raise ReportError(f"{run_dir}: {name} must map each role (before, after) to a JSON object")
    return RunData(run_dir=run_dir, train_dir=train_dir, steps=steps,
                   evals=merge_evaluations(evals, systems), health=health, similarities=similarities,
                   retrieval=retrieval, config=read_config(train_dir / CONFIG_FILE),
                   environment=first(ENVIRONMENT_FILE), demo=read_object(run_dir / DEMO_FILE))
