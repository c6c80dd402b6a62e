"""The HTML training report: `write_report(run_dir)` → run_dir/report.html (see docs/report.md).

record.py: what a run writes for the report (the trainer and the demo call it);
collect.py: a run folder → RunData; plots.py: one figure per function (matplotlib → inline SVG);
html.py: RunData + figures → one self-contained page (no external URL, every text escaped).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from contrastkit.errors import ContrastkitError
from contrastkit.files import write_text_whole

REPORT_FILE = "report.html"


class ReportError(ContrastkitError, ValueError):
    """The report cannot be written (not a run folder, or matplotlib missing)."""


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Render the report of the run in `run_dir` to `output` (default run_dir/report.html); the path."""
    from contrastkit.report.collect import collect_run
    from contrastkit.report.html import render_report

    run = collect_run(run_dir)
    target = Path(output) if output is not None else run.run_dir / REPORT_FILE
    write_text_whole(target, render_report(run))
    return target


def write_report_or_note(run_dir: str | Path, echo: Callable[[str], None]) -> Path | None:
    """Write the report and say where; without matplotlib say why not (the run's results stand)."""
    try:
        path = write_report(run_dir)
    except ReportError as exc:
        echo(f"no report: {exc}")
        return None
    echo(f"report: {path}")
    return path


__all__ = ["REPORT_FILE", "ReportError", "write_report", "write_report_or_note"]
