"""The report's figures: one pure function per figure, data in, inline SVG text out.

matplotlib, object-oriented API only (a `Figure` per call, no pyplot state), rendered by its SVG
backend with glyphs as paths: the page needs no font, no script and no network to show them.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

try:
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ImportError as exc:  # the `report` extra
    from contrastkit.report import ReportError

    raise ReportError("the report needs matplotlib: pip install 'contrastkit[report]'") from exc


BLUE, ORANGE, GREEN, GREY, PURPLE, RED = "#1f6fb4", "#e0762b", "#2a9d5c", "#8a8f98", "#7b4fb0", "#c8413a"
METRIC_COLOURS = [BLUE, ORANGE, GREEN, PURPLE, RED, GREY]
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
         "grid.linewidth": 0.6, "lines.linewidth": 1.6, "svg.fonttype": "path"}


def styled(plot: Callable[..., str]) -> Callable[..., str]:
    """Run a plot function under the report's style (rc_context: no global matplotlib state is changed)."""
    @functools.wraps(plot)
    def wrapper(*args, **kwargs) -> str:
        with matplotlib.rc_context(STYLE):
            return plot(*args, **kwargs)
    return wrapper


def figure(width: float = 6.0, height: float = 3.0, ncols: int = 1) -> tuple[Figure, list]:
    """A new figure with `ncols` axes side by side (constrained layout: labels never clipped)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def to_svg(fig: Figure, name: str) -> str:
    """The figure as an <svg> element (no XML prolog), its ids unique to `name` across the page."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": name, "svg.id": f"plot-{name}"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over `window` points (the first points average what there is)."""
    x = np.asarray(values, dtype=float)
    if window <= 1 or len(x) == 0:
        return x
    cumsum = np.cumsum(np.insert(x, 0, 0.0))
    counts = np.minimum(np.arange(1, len(x) + 1), window)
    return (cumsum[1:] - cumsum[np.maximum(0, np.arange(1, len(x) + 1) - window)]) / counts


def _finish(ax, title: str, xlabel: str, ylabel: str, legend: bool = False) -> None:
    ax.set_title(title, loc="left")
    if xlabel == "step":  # steps are whole numbers, even on a 2-step run
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(frameon=False)


@styled
def curve_plot(name: str, steps: Sequence[int], values: Sequence[float], *, title: str, ylabel: str,
               colour: str = BLUE, smooth_window: int | None = None, log_y: bool = False) -> str:
    """One quantity over training steps; with `smooth_window`, the raw values faint and a moving average."""
    fig, (ax,) = figure()
    steps, values = list(steps), [math.nan if v is None else float(v) for v in values]
    if smooth_window and len(values) > 2 * smooth_window:
        ax.plot(steps, values, color=colour, alpha=0.3, linewidth=0.9, label="per step")
        ax.plot(steps, smooth(values, smooth_window), color=colour, label=f"mean of {smooth_window} steps")
        legend = True
    else:
        ax.plot(steps, values, color=colour, marker="o" if len(values) < 30 else None, markersize=3)
        legend = False
    if log_y and all(v > 0 for v in values if not math.isnan(v)):
        ax.set_yscale("log")
    _finish(ax, title, "step", ylabel, legend)
    return to_svg(fig, name)


@styled
def metrics_plot(name: str, points: Sequence[tuple[int, Mapping[str, float]]], metrics: Sequence[str], *,
                 baseline: Mapping[str, float] | None = None, baseline_label: str = "BM25") -> str:
    """Evaluation metrics over steps; a baseline (BM25) as dashed lines of the same colours."""
    fig, (ax,) = figure(width=7.5)
    for metric, colour in zip(metrics, METRIC_COLOURS):
        xs = [s for s, m in points if metric in m]
        ax.plot(xs, [m[metric] for s, m in points if metric in m], color=colour, marker="o", markersize=4,
                label=metric)
        if baseline and metric in baseline:
            ax.axhline(baseline[metric], color=colour, linestyle="--", linewidth=1, alpha=0.7)
    if baseline:
        ax.plot([], [], color=GREY, linestyle="--", linewidth=1, label=f"{baseline_label} (dashed)")
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    _finish(ax, "Retrieval during training", "step", "score")
    return to_svg(fig, name)


@styled
def health_plot(name: str, points: Sequence[tuple[int, Mapping[str, float]]]) -> str:
    """Alignment and uniformity (Wang & Isola 2020) over steps, side by side; lower is better for both."""
    fig, axes = figure(ncols=2)
    steps = [s for s, _ in points]
    for ax, key, colour, title in ((axes[0], "alignment", BLUE, "Alignment (lower: positives closer)"),
                                   (axes[1], "uniformity", ORANGE, "Uniformity (lower: more spread)")):
        ax.plot(steps, [h[key] for _, h in points], color=colour, marker="o", markersize=4)
        _finish(ax, title, "step", key)
    return to_svg(fig, name)


@styled
def separation_plot(name: str, points: Sequence[tuple[int, Mapping[str, float]]]) -> str:
    """Mean positive, hardest-negative and all-negative cosine similarity over steps."""
    fig, (ax,) = figure()
    steps = [s for s, _ in points]
    for key, colour, label in (("pos_mean", GREEN, "positive"), ("hardneg_mean", ORANGE, "hardest negative"),
                               ("neg_mean", GREY, "all negatives")):
        ax.plot(steps, [h[key] for _, h in points], color=colour, marker="o", markersize=4, label=label)
    _finish(ax, "Similarity of the sampled training pairs", "step", "mean cosine similarity", legend=True)
    return to_svg(fig, name)


@styled
def histogram_plot(name: str, panels: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    """Positive vs negative similarity histograms, one panel per moment ("before", "after"), shared axes."""
    fig, axes = figure(width=7.5, height=3.0, ncols=len(panels))
    values = [v for panel in panels.values() for key in ("positive", "hardest_negative", "negative")
              for v in panel.get(key, [])]
    bins = np.linspace(min(values, default=-1.0), max(values, default=1.0), 41)
    for ax, (title, panel) in zip(axes, panels.items()):
        for key, colour, label in (("negative", GREY, "all negatives"), ("hardest_negative", ORANGE, "hardest negative"),
                                   ("positive", GREEN, "positive")):
            if panel.get(key):
                ax.hist(panel[key], bins=bins, density=True, color=colour, alpha=0.5, label=label,
                        histtype="stepfilled", edgecolor=colour, linewidth=1)
        _finish(ax, title, "cosine similarity", "density", legend=True)
    if len(axes) > 1:
        axes[1].sharey(axes[0])
        axes[1].sharex(axes[0])
    return to_svg(fig, name)
