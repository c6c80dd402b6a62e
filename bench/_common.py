"""Shared bits of the benchmarks: real pairs, peak RSS, machine description, JSON results."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data"
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))


def debian_pairs(n: int):
    """The first n (anchor, positive) pairs of ../shared/data/debian-packages/train_pairs.jsonl."""
    from contrastkit.data import read_pairs

    return read_pairs(SHARED / "debian-packages" / "train_pairs.jsonl")[:n]


def peak_rss_gb() -> float:
    """This process's peak resident set size in GB (GiB, as Linux counts KiB).

    VmHWM of /proc/self/status: getrusage's ru_maxrss survives exec, so a child started by a big
    parent would report the parent's size at the fork.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def machine() -> dict:
    import torch

    from contrastkit.devices import cpu_flags, cpu_vendor

    flags = cpu_flags()
    return {"date": date.today().isoformat(), "cpu_count": os.cpu_count(), "cpu_vendor": cpu_vendor(),
            "torch": torch.__version__,
            "cpu_bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx") or f == "avx512_vnni"),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform()}


def run_child(script: str, args: list[str], env: dict | None = None, what: str = "child run") -> dict:
    """Run `python script *args` in a fresh process (from the repo root) and return the JSON object on
    the last line of its output; stop the benchmark with its error output if it fails."""
    import subprocess

    out = subprocess.run([sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_results(name: str, rows: list[dict], meta: dict | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / f"{name}.meta.json").write_text(json.dumps({**machine(), **(meta or {})}, indent=2) + "\n")
    return path


def best_rate(fn, work: float, repeats: int = 10, rounds: int = 3) -> float:
    """`work` per second of `fn` (after one warm-up call): the best of `rounds` timings of `repeats` calls."""
    fn()
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = max(best, work * repeats / (time.perf_counter() - t0))
    return best


def call_ms(fn) -> float:
    """Milliseconds a call of fn: `best_rate`'s best of three rounds of ten calls, as a time."""
    return 1e3 / best_rate(fn, 1.0)


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.rjust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(widths[c]) for c in columns))


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
