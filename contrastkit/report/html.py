"""RunData → one self-contained report.html: inline CSS and SVG, no script, no external URL.

Every text that comes from the run (config values, queries, documents, paths) goes through
`html.escape`. Each figure is a `<figure data-plot="NAME">`, so a test can find every plot; a piece
the run did not record becomes a short note saying how to get it, never an error.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from contrastkit.evaluate.retrieval import compare_runs
from contrastkit.report import plots
from contrastkit.report.collect import RunData

TABLE_METRICS = ("ndcg@10", "recall@10", "mrr@10", "recall@100")
HEADLINE = "ndcg@10"
SYSTEM_ORDER = ("bm25", "before", "after")
HEALTH_ROWS = (("alignment", "alignment ↓"), ("uniformity", "uniformity ↓"), ("pos_mean", "mean positive cos"),
               ("hardneg_mean", "mean hardest-negative cos"), ("neg_mean", "mean negative cos"),
               ("gap", "gap (positive − hardest negative) ↑"), ("separated", "positive beats hardest negative ↑"),
               ("effective_rank", "effective rank"))
SHOWN_QUERIES = 5


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table, as HTML: fixed digits; "–" for a missing or non-finite one; anything
    else (a run's files may hold text where a number belongs) escaped, shown as text."""
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else "–"
    return esc(value)


def signed(value: float, digits: int = 3) -> str:
    cls = "up" if value > 0 else "down" if value < 0 else "same"
    return f'<span class="delta {cls}">{value:+.{digits}f}</span>'


def plot_figure(name: str, svg: str, caption: str) -> str:
    return f'<figure class="plot" data-plot="{esc(name)}">{svg}<figcaption>{esc(caption)}</figcaption></figure>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """An HTML table; header cells are escaped here, body cells must already be HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def section(anchor: str, title: str, *parts: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{"".join(parts)}</section>'


# ---------------------------------------------------------------------------- sections
def summary_section(run: RunData) -> str:
    cards = []
    if run.steps:
        last = run.steps[-1]
        speed = [r["pairs_per_s"] for r in run.steps if isinstance(r.get("pairs_per_s"), (int, float))]
        cards += [("steps", fmt(last["step"])), ("final loss", fmt(last.get("loss"), 4)),
                  ("pairs / s (mean)", fmt(sum(speed) / len(speed), 1) if speed else "–")]
    systems = run.systems
    if "before" in systems and "after" in systems:
        before, after = systems["before"]["metrics"], systems["after"]["metrics"]
        if HEADLINE in before and HEADLINE in after:
            cards.append((f"{HEADLINE} before → after",
                          f"{before[HEADLINE]:.3f} → {after[HEADLINE]:.3f} {signed(after[HEADLINE] - before[HEADLINE])}"))
    if HEADLINE in systems.get("bm25", {}).get("metrics", {}):
        cards.append((f"BM25 {HEADLINE}", fmt(systems["bm25"]["metrics"][HEADLINE])))
    flags = sorted({f for _, h in run.health[-1:] for f in h.get("flags", [])})
    body = "".join(f'<div class="card"><div class="label">{esc(k)}</div><div class="value">{v}</div></div>'
                   for k, v in cards)
    warning = (f'<p class="warning">Embedding health at the end: {esc(", ".join(flags))} '
               f'(see <a href="#health">embedding space</a>).</p>') if flags else ""
    return f'<section id="summary"><div class="cards">{body}</div>{warning}</section>'


def training_section(run: RunData) -> str:
    steps = run.steps
    if not steps:
        return section("training", "Training", note("No training step was logged (metrics.jsonl has none)."))
    xs = [r["step"] for r in steps]

    def column(key: str) -> list[float]:
        return [float(r[key]) if isinstance(r.get(key), (int, float)) else math.nan for r in steps]

    window = max(2, len(steps) // 20)
    figures = [plot_figure("loss", plots.curve_plot("loss", xs, column("loss"), title="Training loss", ylabel="loss",
                                                    smooth_window=window), "Loss per optimizer step.")]
    tau = column("temperature")
    if any(math.isfinite(t) for t in tau):
        figures.append(plot_figure("temperature", plots.curve_plot("temperature", xs, tau, title="Temperature τ",
                                                                   ylabel="τ", colour=plots.PURPLE),
                                   "InfoNCE temperature (changes only when learnable)."))
    else:
        figures.append(note("No temperature: this loss has none (margin contrastive or triplet)."))
    figures.append(plot_figure("lr", plots.curve_plot("lr", xs, column("lr"), title="Learning rate", ylabel="lr",
                                                      colour=plots.GREEN), "Warm-up, then decay."))
    figures.append(plot_figure("throughput", plots.curve_plot(
        "throughput", xs, column("pairs_per_s"), title="Throughput", ylabel="pairs / s", colour=plots.ORANGE,
        smooth_window=window), "Training pairs per second, each step timed alone."))
    skipped = sum(1 for r in steps if r.get("skipped"))
    extra = note(f"{skipped} step(s) skipped because the loss or gradients were not finite.") if skipped else ""
    return section("training", "Training", f'<div class="grid">{"".join(figures)}</div>', extra)


def retrieval_table(systems: Mapping[str, dict]) -> str:
    roles = [r for r in SYSTEM_ORDER if r in systems] + [r for r in systems if r not in SYSTEM_ORDER]
    metrics = [m for m in TABLE_METRICS if any(m in systems[r]["metrics"] for r in roles)]
    rows = [[esc(systems[r].get("label", r))] + [fmt(systems[r]["metrics"].get(m)) for m in metrics] for r in roles]
    if "before" in systems and "after" in systems:
        b, a = systems["before"]["metrics"], systems["after"]["metrics"]
        rows.append(["change"] + [signed(a[m] - b[m]) if m in a and m in b else "–" for m in metrics])
    return table(["system", *metrics], rows, "numbers")


def comparison(systems: Mapping[str, dict]) -> dict | None:
    """compare_runs of after against before on the headline metric, or None when one is missing."""
    if "before" not in systems or "after" not in systems:
        return None
    try:
        return compare_runs(systems["before"]["per_query"], systems["after"]["per_query"], HEADLINE,
                            top=SHOWN_QUERIES)
    except ValueError:  # no common query, or the metric was not recorded
        return None


def retrieval_section(run: RunData) -> str:
    systems = run.systems
    if not systems and not run.evals:
        return section("retrieval", "Retrieval", note(
            "No evaluation data in this run: set eval_data (a BEIR folder) in the training config to see "
            "retrieval before and after training, next to BM25."))
    parts = []
    if systems:
        split = run.retrieval.get("split")
        parts.append(retrieval_table(systems))
        if split:
            parts.append(note(f"Evaluation split: {split}."))
        change = comparison(systems)
        if change:
            parts.append(f'<p>{esc(HEADLINE)} per query: <b>{change["wins"]}</b> better, <b>{change["losses"]}</b> '
                         f'worse, {change["ties"]} unchanged of {change["n"]} (sign test p = '
                         f'{change["sign_test_p"]:.3g}).</p>')
    if run.evals:
        metrics = [m for m in TABLE_METRICS if any(m in e for _, e in run.evals)]
        baseline = systems.get("bm25", {}).get("metrics")
        parts.append(plot_figure("eval", plots.metrics_plot("eval", run.evals, metrics, baseline=baseline),
                                 "Evaluation metrics over training steps (step 0: before training)."))
    return section("retrieval", "Retrieval", *parts)


def health_section(run: RunData) -> str:
    parts = []
    panels = {f"{role} training (step {run.similarities[role].get('step', '?')})": run.similarities[role]
              for role in ("before", "after") if role in run.similarities}
    if panels:
        parts.append(plot_figure("similarity-histograms", plots.histogram_plot("similarity-histograms", panels),
                                 "Cosine similarity of each sampled anchor to its positive, to its hardest "
                                 "negative and to all negatives (the other pairs' positives)."))
    if run.health:
        parts.append('<div class="grid">' + plot_figure(
            "alignment-uniformity", plots.health_plot("alignment-uniformity", run.health),
            "Wang & Isola (2020) on the same sample at every health step.") + plot_figure(
            "similarity-over-steps", plots.separation_plot("similarity-over-steps", run.health),
            "Positives should rise above the hardest negatives without everything collapsing together.")
            + "</div>")
        first, last = run.health[0], run.health[-1]
        rows = [[esc(label), fmt(first[1].get(key)), fmt(last[1].get(key))] for key, label in HEALTH_ROWS]
        rows.append(["flags", esc(", ".join(first[1].get("flags", [])) or "none"),
                     esc(", ".join(last[1].get("flags", [])) or "none")])
        n = last[1].get("n", "?")
        parts.append(table(["signal", f"step {first[0]}", f"step {last[0]}"], rows, "numbers"))
        parts.append(note(f"Computed on a fixed sample of {n} training pairs (config health_sample), in eval mode."))
    if not parts:
        parts.append(note("No embedding-health records: the run had health_sample = 0 or too few pairs."))
    return section("health", "Embedding space", *parts)


def result_list(run: RunData, role: str, query: str) -> str:
    system = run.systems[role]
    relevant = set(run.retrieval.get("relevant", {}).get(query, []))
    docs = run.retrieval.get("docs", {})
    items = "".join(
        f'<li class="{"rel" if d in relevant else ""}"><span class="score">{s:.3f}</span>'
        f'{"<b>✓</b> " if d in relevant else ""}<span class="doc">{esc(docs.get(d, d))}</span>'
        f' <span class="id">[{esc(d)}]</span></li>'
        for d, s in system["top"].get(query, []))
    value = system["per_query"].get(query, {}).get(HEADLINE)
    return (f'<div><h5>{esc(system.get("label", role))} · {esc(HEADLINE)} {fmt(value)}</h5>'
            f'<ol>{items}</ol></div>')


def query_cards(run: RunData, ranked: Sequence[Sequence], empty: str) -> str:
    if not ranked:
        return note(empty)
    queries = run.retrieval.get("queries", {})
    cards = []
    for query, delta in ranked:
        relevant = len(run.retrieval.get("relevant", {}).get(query, []))
        cards.append(f'<div class="query"><h4>{esc(queries.get(query, query))} {signed(delta)} '
                     f'<span class="id">[query {esc(query)}, {relevant} relevant]</span></h4>'
                     f'<div class="cols">{result_list(run, "before", query)}{result_list(run, "after", query)}</div></div>')
    return "".join(cards)


def queries_section(run: RunData) -> str:
    change = comparison(run.systems)
    if change is None:
        return section("queries", "Queries that changed most", note(
            "Needs retrieval before and after training (eval_data in the training config)."))
    return section("queries", "Queries that changed most",
                   "<p>Top results before and after; ✓ marks a document judged relevant.</p>",
                   f"<h3>Improved most ({esc(HEADLINE)})</h3>",
                   query_cards(run, change["top_wins"], "No query improved."),
                   f"<h3>Regressed most ({esc(HEADLINE)})</h3>",
                   query_cards(run, change["top_losses"], "No query regressed."))


def key_value_table(values: Mapping[str, Any]) -> str:
    return table(["key", "value"], ([esc(k), esc(format(v, ".6g") if isinstance(v, float) else v)]
                                    for k, v in values.items()), "kv")


def setup_section(run: RunData) -> str:
    def block(title: str, values: Mapping[str, Any], missing: str) -> str:
        return f"<div><h3>{esc(title)}</h3>{key_value_table(values) if values else note(missing)}</div>"

    parts = [block("Training config", run.config, "No train_config.yaml in the run folder.")]
    if run.demo.get("config"):
        parts.append(block("Demo config", run.demo["config"], ""))
    if run.demo.get("timings"):
        parts.append(block("Demo timings (s)", run.demo["timings"], ""))
    parts.append(block("Environment", run.environment,
                       "No environment.json in the run folder (a run from before the report existed)."))
    return section("setup", "Config and environment", f'<div class="grid">{"".join(parts)}</div>')


NAV = (("summary", "Summary"), ("training", "Training"), ("retrieval", "Retrieval"), ("health", "Embedding space"),
       ("queries", "Queries"), ("setup", "Config"))

CSS = """
:root { --fg: #1d232b; --muted: #5f6b7a; --line: #dde2e8; --bg: #f6f7f9; --up: #1e7d45; --down: #b3312b; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: var(--bg); }
header { background: #1d2b3a; color: #fff; padding: 18px 32px 10px; }
header h1 { margin: 0 0 2px; font-size: 20px; }
header .sub { color: #b9c4d0; font-size: 13px; word-break: break-all; }
nav a { color: #d4deea; margin-right: 16px; font-size: 13px; text-decoration: none; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 32px 48px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 20px 16px;
          margin: 16px 0; }
h2 { font-size: 17px; margin: 4px 0 10px; } h3 { font-size: 14px; margin: 16px 0 6px; }
h4 { font-size: 14px; margin: 0 0 6px; font-weight: 600; } h5 { font-size: 12px; margin: 0 0 4px; color: var(--muted); }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 150px; }
.card .label { color: var(--muted); font-size: 12px; } .card .value { font-size: 18px; font-weight: 600; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 12px 20px; }
figure.plot { margin: 0; } figure.plot svg { width: 100%; height: auto; display: block; }
section > figure.plot { max-width: 760px; margin: 8px 0; }  /* 7.5-inch figures at the grid's scale */
figcaption { color: var(--muted); font-size: 12px; margin-top: 2px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 12px 4px 0; text-align: left; vertical-align: top; }
table.numbers td:not(:first-child), table.numbers th:not(:first-child) { text-align: right; padding-left: 16px; }
table.kv td:last-child { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px;
                         word-break: break-all; }
.delta.up { color: var(--up); font-weight: 600; } .delta.down { color: var(--down); font-weight: 600; }
.delta.same { color: var(--muted); }
.note { color: var(--muted); font-style: italic; }
.warning { background: #fdf0ef; border-left: 4px solid var(--down); padding: 6px 10px; }
.query { border-top: 1px solid var(--line); padding: 10px 0; }
.query .cols { display: grid; grid-template-columns: 1fr 1fr; gap: 20px; }
.query ol { margin: 0; padding-left: 22px; font-size: 12.5px; } .query li { margin: 2px 0; }
.query li.rel { background: #eef8f1; }
.score { font-family: ui-monospace, "DejaVu Sans Mono", monospace; color: var(--muted); margin-right: 8px; }
.id { color: var(--muted); font-size: 11px; font-weight: normal; }
"""

# no script, no remote anything: the policy makes the browser refuse (and report) any load attempt
# nothing loads, runs, posts a form or changes the base address; the page's markup is still all escaped
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; base-uri 'none'"


def render_report(run: RunData) -> str:
    """The whole page for one run."""
    model = run.environment.get("model") or run.config.get("model", "")  # the encoder trained, by name or folder
    data = run.config.get("data") if run.config.get("data") not in (None, "(in memory)") else \
        run.demo.get("config", {}).get("data", "")
    subtitle = " · ".join(esc(x) for x in (f"model: {model}" if model else "", f"data: {data}" if data else "",
                                              str(run.run_dir.resolve())) if x)
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in NAV)
    body = "".join([summary_section(run), training_section(run), retrieval_section(run), health_section(run),
                    queries_section(run), setup_section(run)])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>contrastkit report · {esc(run.run_dir.resolve().name)}</title><style>{CSS}</style></head>'
            f'<body><header><h1>contrastkit training report</h1><div class="sub">{subtitle}</div>'
            f'<nav>{nav}</nav></header><main>{body}</main></body></html>\n')
