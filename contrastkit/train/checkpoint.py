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
import pickle
import re
import shutil
import warnings
from pathlib import Path

import torch

from contrastkit.errors import ConfigError
from contrastkit.files import failed_writes_named, give_default_modes, write_text_whole
from contrastkit.train.config import INFONCE_ONLY
from contrastkit.train.grad_cache import RandState

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
TENSORS_FILE = "trainer.pt"
_NAME = re.compile(rf"{PREFIX}(\d{{8,}})")  # checkpoint-00000100; a copy ("... (copy)", ".bak") is not one
# TrainConfig fields a resumed run may set differently from the run it continues: what it shows, logs,
# keeps and evaluates, not what it trains (the rest must match, or the resumed run is another run).
# bf16 is compared as resolved instead (resume_point): null and the value it resolved to are one setting
MAY_CHANGE_ON_RESUME = frozenset({
    "output_dir", "data", "show_progress", "log_every", "checkpoint_every", "keep_checkpoints", "tensorboard",
    "report", "health_every", "health_sample", "eval_every", "eval_data", "eval_split", "metric_for_best",
    "dist_timeout_s", "max_nonfinite_steps", "device", "bf16"})


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
    try:
        with failed_writes_named(target):
            write(tmp)
        give_default_modes(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not stay full of half a checkpoint
        raise
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
    found = [p for p in checkpoint_dir.glob(f"{PREFIX}*") if _NAME.fullmatch(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(checkpoint_dir)
    return checkpoints[-1] if checkpoints else None


def _what_trained(config: dict) -> dict:
    """`config` with the settings that changed nothing in its run taken out: InfoNCE's own under the
    margin losses (and similarity dot, which they read as cosine), refill_epochs without drop_last.
    Earlier versions accepted such settings and ignored them: a run saved with them resumes under a
    config that leaves them at their defaults, as the config check now asks."""
    config = dict(config)
    if config.get("loss", "infonce") != "infonce":
        for name in INFONCE_ONLY:
            config.pop(name, None)
        if config.get("similarity") == "dot":
            config["similarity"] = "cosine"
    if config.get("drop_last") is False:
        config.pop("refill_epochs", None)
    return config


def config_changes(saved: dict, now: dict) -> list[str]:
    """The training settings of `now` that differ from the checkpoint's `saved` config, as "name: a → b"
    (settings that changed nothing in the run, `_what_trained`, left out)."""
    saved, now = _what_trained(saved), _what_trained(now)
    return [f"{name}: {saved[name]!r} then, {now.get(name)!r} now" for name in sorted(saved)
            if name not in MAY_CHANGE_ON_RESUME and name in now and saved[name] != now[name]]


def _readable(path: Path) -> tuple[dict, dict]:
    """load_checkpoint, after checking every safetensors file of its model reads (header and size)."""
    from safetensors import safe_open

    for weights in sorted((path / "model").rglob("*.safetensors")):
        with safe_open(str(weights), framework="pt"):
            pass
    return load_checkpoint(path)


def resume_point(checkpoint_dir: Path, total_steps: int, world_size: int, config: dict | None = None,
                 data_digest: str | None = None, bf16: bool | None = None) -> tuple[Path, dict, dict] | None:
    """(path, state, tensors) of the newest complete, readable checkpoint, checked to fit this run; None
    if there is none.

    A damaged checkpoint (a file cut short by a full disk or an outside hand) is passed over, with a
    warning, for the one before it. One made for another number of steps or ranks, with other training
    settings (`config`, the TrainConfig as a dict; MAY_CHANGE_ON_RESUME may differ) or other data
    (`data_digest`) is refused with a ConfigError: resuming it would silently train a different run.
    So is one made in another precision (`bf16`, as this run resolved it): `bf16: null` follows the
    hardware, and another machine may resolve it otherwise.
    """
    for path in reversed(list_checkpoints(checkpoint_dir)):
        try:
            state, tensors = _readable(path)
            break
        except pickle.UnpicklingError as exc:  # weights_only refused an object: say so, not torch's advice
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            warnings.warn(f"{path / TENSORS_FILE} holds pickled objects other than tensors"
                          f"{f' ({found.group(1)})' if found else ''}: refused, never loaded; resuming from the "
                          f"checkpoint before it", stacklevel=2)
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises: JSON, zip, safetensors
            warnings.warn(f"{path} cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                          f"resuming from the checkpoint before it", stacklevel=2)
    else:
        return None
    if state["total_steps"] != total_steps:
        raise ConfigError(f"{path}: the checkpoint was made for {state['total_steps']} steps, this run has "
                          f"{total_steps}; resume with the same data and config")
    ranks = len(tensors["torch_rng_per_rank"])
    if ranks != world_size:
        raise ConfigError(f"{path}: the checkpoint was made with {ranks} ranks, this run has {world_size}")
    if config is not None and state.get("config") and (changed := config_changes(state["config"], config)):
        raise ConfigError(f"{path}: this run's settings differ from the checkpoint's ({'; '.join(changed)}); "
                          f"resume with the same config, or train afresh without --resume")
    if bf16 is not None and state.get("bf16") not in (None, bf16):
        said = {True: "bf16 autocast", False: "full precision"}
        raise ConfigError(f"{path}: the checkpoint trained in {said[state['bf16']]}, this run would train in "
                          f"{said[bf16]} (bf16: null follows the hardware); set bf16: {str(state['bf16']).lower()} "
                          f"to resume it")
    if data_digest is not None and state.get("data_digest") not in (None, data_digest):
        raise ConfigError(f"{path}: the checkpoint was made on other training data; resume with the same "
                          f"data, or train afresh without --resume")
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
