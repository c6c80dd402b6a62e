"""The training configuration: every knob in one dataclass, validated once, before any training."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from contrastkit.errors import ConfigError, parse_error_text

LOSSES = ("infonce", "contrastive", "triplet")
SCHEDULERS = ("linear", "cosine", "constant")
# settings of the InfoNCE loss alone: refused with the margin losses, which would ignore them
INFONCE_ONLY = ("temperature", "learnable_temperature", "symmetric", "mask_margin")


def caching_mini_batch(mini_batch_size: int | None, batch_size: int) -> int | None:
    """The mini-batch gradient caching takes: None (no caching) when none is asked or the batch is no
    larger, for such a batch fits in memory as it is and caching would cost it an extra forward pass."""
    return mini_batch_size if mini_batch_size and mini_batch_size < batch_size else None


@dataclass
class TrainConfig:
    """What to train, on what, and how. Load from YAML/TOML with `load_config`; see docs/training.md."""

    # what and where
    model: str = "default"
    data: str | list[str] = ""          # pair file (JSONL/CSV/TSV/Parquet) or BEIR folder, or a list of them
    split: str = "train"                # qrels split, for a BEIR folder
    output_dir: str = "runs/contrastkit"
    max_seq_length: int | None = None   # None: the model's own
    dtype: str = "float32"              # weights' dtype: float32, or float64 for exact checks
    device: str = "auto"                # auto (CUDA when there), cpu, cuda
    # the objective
    loss: str = "infonce"
    temperature: float = 0.05
    learnable_temperature: bool = False
    symmetric: bool = False
    similarity: str = "cosine"
    margin: float = 0.5                 # contrastive / triplet margin, on the distance `similarity` names:
                                        # 1 - cosine (cosine) or euclidean (neg_euclidean)
    num_hard_negatives: int = 0         # per pair, from the data's `negatives` (InfoNCE: up to this many,
                                        # pooled over the batch; contrastive/triplet: exactly, at least 1); 0: in-batch only
    mask_margin: float | None = None    # false-negative masking by similarity (InfoNCE)
    mask_known_positives: bool = True   # InfoNCE: a candidate the data pairs with this anchor too (another
                                        # relevant document of the same query) is not its negative
    # batching
    batch_size: int = 32
    mini_batch_size: int | None = None  # gradient caching when set: memory bound by this, not batch_size
    chunk_size: int | None = 16         # on the CPU, without caching, for models that do not pack
                                        # (contrastkit/packing.py): forward in length-sorted chunks (None: one
                                        # pass). A GPU takes each group in one pass (train/grad_cache.py)
    cpu_streams: int | None = None      # CPU, packing models, without caching: the step's texts in this many
                                        # parts, each embedded and back-propagated by its own thread on its
                                        # share of the cores (train/streams.py); None: 2 where torch has
                                        # exactly 2 threads (measured there); 1: one pass on all threads
    drop_last: bool = True              # false: the pairs left at the end of a pass that clash (one query,
                                        # several documents) are kept, in as many small batches as it takes
    refill_epochs: bool = False         # epochs of len // batch_size batches even when no-duplicate batching
                                        # leaves pairs that cannot fill one (reshuffled passes, as
                                        # sentence-transformers' sampler; some pairs twice an epoch)
    group_by_source: bool = False       # each batch from one source: a pair's "source" field, else its data file
    # optimisation
    epochs: int = 1
    max_steps: int | None = None        # stop after this many steps (overrides epochs)
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: str = "linear"
    max_grad_norm: float | None = 1.0
    bf16: bool | None = None            # bf16 autocast; None: where the hardware multiplies bf16 (a GPU
                                        # with bf16, a CPU with AVX-512 BF16 or AMX; devices.native_bf16)
    attention_dropout: float | None = None  # dropout on attention probabilities in training (None: the
                                            # model's own); 0 lets the fused attention kernel run
    fast_dropout: bool = True           # CPU: dropout masks 16 bits per element of 64-bit draws (about 2x
                                        # faster than torch's, same Bernoulli law); False: nn.Dropout as is
    seed: int = 0
    max_nonfinite_steps: int = 5        # stop after this many non-finite steps in a row
    # bookkeeping
    checkpoint_every: int | None = 100  # and after the last step; null: never (a crash then loses the run)
    keep_checkpoints: int = 2
    log_every: int = 1
    eval_every: int | None = None
    eval_data: str | None = None        # BEIR folder evaluated every eval_every steps (and before and after)
    eval_split: str = "test"
    metric_for_best: str = "ndcg@10"
    tensorboard: bool = False
    show_progress: bool = True
    # the report (docs/report.md): embedding health of a fixed sample of training pairs at step 0,
    # every health_every steps (null: eval_every, else a tenth of the run, sparser where that would cost
    # over 5 % of the training time) and at the end; report.html
    health_every: int | None = None
    health_sample: int = 128            # pairs embedded for the health signals; 0: none
    report: bool = True                 # write report.html at the end of training
    # distributed (torchrun): collectives give up after this long, so a hung rank never hangs the rest
    # (a rank that dies is noticed at once); keep it above the evaluation time when evaluating
    dist_timeout_s: float = 60.0

    def validate(self, *, check_files: bool = True) -> "TrainConfig":
        """Raise ConfigError for any impossible setting; return self."""
        _check_types(self)
        _check_finite(self)
        def bad(msg: str) -> None:
            raise ConfigError(msg)
        if self.loss not in LOSSES:
            bad(f"loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        if self.scheduler not in SCHEDULERS:
            bad(f"scheduler must be one of {', '.join(SCHEDULERS)}; got {self.scheduler!r}")
        if self.dtype not in ("float32", "float64"):
            bad(f"dtype must be float32 or float64 (bf16 is the bf16 autocast switch); got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            bad(f"device must be auto, cpu or cuda; got {self.device!r}")
        if self.similarity not in ("cosine", "dot", "neg_euclidean"):
            bad(f"similarity must be cosine, dot or neg_euclidean; got {self.similarity!r}")
        for name in ("batch_size", "epochs", "log_every", "keep_checkpoints", "max_nonfinite_steps"):
            if getattr(self, name) < 1:
                bad(f"{name} must be at least 1; got {getattr(self, name)}")
        for name in ("mini_batch_size", "chunk_size", "max_steps", "eval_every", "checkpoint_every", "max_seq_length",
                     "health_every", "cpu_streams"):
            value = getattr(self, name)
            if value is not None and value < 1:
                bad(f"{name} must be at least 1 (or null); got {value}")
        if self.mini_batch_size is not None and self.mini_batch_size > self.batch_size:
            bad(f"batch_size ({self.batch_size}) is smaller than mini_batch_size ({self.mini_batch_size}); "
                f"the mini-batch is a slice of the batch")
        if self.loss == "infonce" and self.batch_size < 2 and self.num_hard_negatives == 0:
            bad("InfoNCE with in-batch negatives needs batch_size >= 2 (or hard negatives)")
        if self.loss == "contrastive" and self.num_hard_negatives < 1:
            bad("the contrastive loss learns from dissimilar pairs, each pair's negatives: set "
                "num_hard_negatives >= 1 (mine them with contrastkit mine), or use infonce for in-batch negatives")
        if self.loss == "triplet" and self.num_hard_negatives != 1:
            bad("the triplet loss takes exactly one negative per pair: set num_hard_negatives = 1")
        if not self.temperature > 0:
            bad(f"temperature must be > 0; got {self.temperature}")
        if self.loss != "infonce":  # settings of InfoNCE alone: accepted, they would change nothing
            defaults = TrainConfig()
            for name in INFONCE_ONLY:
                if getattr(self, name) != getattr(defaults, name):
                    bad(f"{name} applies to the infonce loss only; the {self.loss} loss would ignore it")
            if self.similarity == "dot":
                bad(f"the {self.loss} loss works on a distance: similarity cosine (1 - cosine) or "
                    f"neg_euclidean (euclidean distance), not dot")
        if self.refill_epochs and not self.drop_last:
            bad("refill_epochs tops epochs up with full batches, with drop_last true; drop_last false keeps "
                "every incomplete batch instead: set one of them")
        if not 0 <= self.seed < 2 ** 63:
            bad(f"seed must be in [0, 2**63); got {self.seed}")
        if not 0 <= self.warmup_ratio < 1:
            bad(f"warmup_ratio must be in [0, 1); got {self.warmup_ratio}")
        if not self.lr > 0:
            bad(f"lr must be > 0; got {self.lr}")
        if self.weight_decay < 0:
            bad(f"weight_decay must be >= 0; got {self.weight_decay}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            bad(f"max_grad_norm must be > 0 (or null: no clipping); got {self.max_grad_norm}")
        if not self.dist_timeout_s > 0:
            bad(f"dist_timeout_s must be > 0; got {self.dist_timeout_s}")
        if self.eval_data:  # the built-in retrieval evaluator (a Python evaluator may name its own metrics)
            _check_metric_for_best(self.metric_for_best)
        if isinstance(self.data, list) and not all(isinstance(p, str) and p for p in self.data):
            bad(f"data must be a path or a list of paths; got {self.data!r}")
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            bad(f"attention_dropout must be in [0, 1) (or null); got {self.attention_dropout}")
        if self.num_hard_negatives < 0:
            bad(f"num_hard_negatives must be >= 0; got {self.num_hard_negatives}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            bad("tensorboard = true needs the tensorboard package (pip install tensorboard)")
        if self.health_sample < 0:
            bad(f"health_sample must be >= 0 (0: no health signals); got {self.health_sample}")
        if check_files:
            if self.eval_data and not Path(self.eval_data).is_dir():
                bad(f"eval_data folder '{self.eval_data}' does not exist")
            if not self.data:
                bad("data is not set: give a pair file or a BEIR folder")
            for path in self.data_paths:
                if not Path(path).exists():
                    bad(f"data file '{path}' does not exist")
        return self

    @property
    def data_paths(self) -> list[str]:
        """`data` as a list of paths (one file or folder, or several)."""
        return [self.data] if isinstance(self.data, str) else list(self.data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _allowed_types(tp: object) -> tuple[type, ...]:
    if isinstance(tp, str):
        tp = eval(tp, vars(sys.modules[__name__]))  # resolve postponed annotations
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(tp) for t in _allowed_types(arg))
    if origin is not None:  # list[str] → list (the elements are checked in validate)
        return (origin,)
    return (type(None),) if tp is None or tp is type(None) else (tp,)


def _check_types(config: TrainConfig) -> None:
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        allowed = _allowed_types(f.type)
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            setattr(config, f.name, float(value))
            continue
        if float in allowed and isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                setattr(config, f.name, float(value))
                continue
            except ValueError:
                pass
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if not ok:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ConfigError(f"key '{f.name}' must be {names}; got {type(value).__name__} ({value!r})")


def _check_finite(config: TrainConfig) -> None:
    """Refuse inf and nan in every float setting (`lr: .inf`, `--set margin=nan`)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number; got {value}")


def best_metric_names() -> list[str]:
    """What metric_for_best may name with `eval_data`, a BEIR folder: the metrics of the training
    RetrievalEvaluator that reads it."""
    from contrastkit.evaluate.metrics import DEFAULT_KS, metric_names

    return metric_names(DEFAULT_KS)


def _check_metric_for_best(name: str) -> None:
    """An unknown name would never match an evaluation, so `best/` would silently never be written."""
    from contrastkit.evaluate.metrics import DEFAULT_KS, METRICS

    if name not in best_metric_names():
        ks = ", ".join(map(str, DEFAULT_KS))
        raise ConfigError(f"metric_for_best must be <metric>@<k> with metric one of {', '.join(METRICS)} and k "
                          f"one of {ks} (e.g. ndcg@10), what the evaluation of eval_data reports; got {name!r}")


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file '{path}' " + ("is a folder" if path.is_dir() else "does not exist"))
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10: the same parser, as a package (a dependency there)
                import tomli as tomllib

            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError
        raise ConfigError(f"{path}: {parse_error_text(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def parse_override(item: str) -> tuple[str, object]:
    """'key=value' → (key, value), the value typed as YAML reads it (1 → int, true → bool, null)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: dict | None = None, *,
                check_files: bool = True) -> TrainConfig:
    """Merge a YAML/TOML file and overrides into a validated TrainConfig.

    Unknown keys are refused with a suggestion (`unknown key 'lr_rate' (did you mean 'lr'?)`).
    """
    values: dict = {}
    source = "config"
    if path is not None:
        values.update(_read_file(Path(path)))
        source = str(path)
    values.update({k: v for k, v in (overrides or {}).items()})
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in values:
        if key not in known:
            close = [k for k in known if key.startswith(k + "_") or k.startswith(key)] or \
                difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
    try:
        return TrainConfig(**values).validate(check_files=check_files)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
