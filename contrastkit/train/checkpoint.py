"""Checkpoints that survive a kill: written to a temporary folder, then renamed into place.

A checkpoint folder `checkpoint-00000100/` holds `model/` (a sentence-transformers folder,
safetensors), `trainer.pt` (optimizer, scheduler, RNG, loss state; loaded with weights_only=True)
and `trainer_state.json` (step, epoch, position in the epoch). `os.replace` of a complete folder is
atomic, so a folder named `checkpoint-*` is always whole; leftovers of a killed write are
`.tmp-*` folders, which are ignored and cleaned up.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from contrastkit.errors import ConfigError
from contrastkit.files import write_text_whole
from contrastkit.train.grad_cache import RandState

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
TENSORS_FILE = "trainer.pt"


def _fsync_tree(path: Path) -> None:
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(target: Path, write: callable) -> Path:
    """Call write(tmp_folder), fsync it, then rename it to `target` (replacing an old one)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    _fsync_tree(tmp)
    if target.exists():
        old = target.parent / f".tmp-old-{target.name}-{os.getpid()}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    _fsync_dir(target.parent)
    return target


def drop_log_records_after(log: Path, step: int) -> None:
    """Keep the records of metrics.jsonl up to `step` (the checkpoint a run resumes from), so that the
    steps the crashed run logged after it, which the resumed run does again, are not logged twice
    (the report would draw them twice). A line that does not parse, as a kill mid-write can leave, goes
    too. The file is rewritten whole (`files.write_whole`): a kill here loses nothing."""
    log = Path(log)
    if not log.is_file():
        return
    kept = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    write_text_whole(log, "".join(kept))


def checkpoint_due(step: int, total_steps: int, every: int | None) -> bool:
    """A checkpoint follows `step` every `every` steps and after the last one; never when `every` is None."""
    return every is not None and (step % every == 0 or step == total_steps)


def save_checkpoint(checkpoint_dir: Path, step: int, encoder, state: dict, tensors: dict, keep: int) -> Path:
    """Write checkpoint `step` atomically and keep only the newest `keep` checkpoints."""
    def write(tmp: Path) -> None:
        encoder.save(tmp / "model")
        torch.save(tensors, tmp / TENSORS_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")

    path = write_atomically(Path(checkpoint_dir) / f"{PREFIX}{step:08d}", write)
    for old in list_checkpoints(checkpoint_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in Path(checkpoint_dir).glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    return path


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.glob(f"{PREFIX}*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(checkpoint_dir)
    return checkpoints[-1] if checkpoints else None


def resume_point(checkpoint_dir: Path, total_steps: int, world_size: int) -> tuple[Path, dict, dict] | None:
    """(path, state, tensors) of the newest complete checkpoint, checked to fit this run; None if there is none.

    A checkpoint made for another number of steps or ranks is refused with a ConfigError: resuming
    it would silently train a different run.
    """
    path = latest_checkpoint(checkpoint_dir)
    if path is None:
        return None
    state, tensors = load_checkpoint(path)
    if state["total_steps"] != total_steps:
        raise ConfigError(f"{path}: the checkpoint was made for {state['total_steps']} steps, this run has "
                          f"{total_steps}; resume with the same data and config")
    ranks = len(tensors["torch_rng_per_rank"])
    if ranks != world_size:
        raise ConfigError(f"{path}: the checkpoint was made with {ranks} ranks, this run has {world_size}")
    return path, state, tensors


def restore_optimization(tensors: dict, optimizer, scheduler, rank: int) -> None:
    """Put a checkpoint's optimizer and scheduler state, and this rank's RNG state, back in place."""
    optimizer.load_state_dict(tensors["optimizer"])
    scheduler.load_state_dict(tensors["scheduler"])
    RandState.from_dict(tensors["torch_rng_per_rank"][rank]).restore()


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state from JSON, tensors) of a checkpoint; tensors load with weights_only=True."""
    state = json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))
    tensors = torch.load(Path(path) / TENSORS_FILE, weights_only=True, map_location="cpu")
    return state, tensors
