"""The training loop: one readable loop, every knob in `TrainConfig`, nothing hidden in callbacks."""

from __future__ import annotations

import bisect
import contextlib
import copy
import dataclasses
import functools
import hashlib
import json
import shutil
import math
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from tqdm.auto import tqdm

from contrastkit import fused_attention
from contrastkit.data import Pair, load_beir, pairs_from_beir, read_pairs
from contrastkit.data.subset import sample_indices
from contrastkit.devices import to_device, use_bf16
from contrastkit.eager_attention import eager_attention
from contrastkit.encoder import Encoder, autocast
from contrastkit.errors import ConfigError, ContrastkitError, DataError
from contrastkit.evaluate import embedding_health, similarity_values
from contrastkit.fast_dropout import use_fast_dropout
from contrastkit.fast_linear import onednn_linear_enabled, use_fast_linear
from contrastkit.files import open_no_follow, run_lock, save_files_whole, write_text_whole
from contrastkit.losses import InfoNCELoss, MarginContrastiveLoss, TripletLoss
from contrastkit.packing import PackPlan, plan_packing, sparse_gradient_parameters
from contrastkit.report.record import clear_records, record_environment, record_similarities
from contrastkit.train.checkpoint import (checkpoint_due, drop_log_records_after, list_checkpoints,
                                          restore_optimization, resume_point, save_checkpoint, write_atomically)
from contrastkit.train.config import TrainConfig
from contrastkit.train.streams import (Lookahead, StreamPool, balanced_cuts, coalesce_sparse_gradients,
                                       stream_backward, stream_count)
from contrastkit.train.distributed import (all_gather_objects, all_reduce_gradients, barrier, describe_failure,
                                           gather_with_local_grad, join_ranks, leave_ranks)
from contrastkit.train.evaluation import RetrievalEvaluator
from contrastkit.train.grad_cache import (RandState, embed_in_chunks, forward_chunks, grad_cache_backward,
                                         texts_per_forward)
from contrastkit.train.optim import adamw, read_scalars, step_if_finite, zero_grad_keeping
from contrastkit.train.sampler import no_duplicate_batches

Evaluator = Callable[[Encoder], dict[str, float]]


class TrainingError(ContrastkitError, RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite)."""


def load_training_pairs(source: str | Path | Sequence[str | Path], split: str = "train") -> list[Pair]:
    """Pairs from pair files (JSONL/CSV/TSV/Parquet) or BEIR folders' split, fully validated.

    A pair without a "source" field gets its file's (or folder's) path as source, for group_by_source.
    """
    if isinstance(source, (str, Path)):
        source = [source]
    pairs: list[Pair] = []
    for path in source:
        if Path(path).is_dir():
            found = pairs_from_beir(load_beir(path, split))
            if not found:  # said here, before a model loads: later it reads as a batch-size problem
                raise DataError("no judgement with grade > 0 of a non-empty document in this split: no training "
                                "pairs", path=str(Path(path) / "qrels" / f"{split}.tsv"))
        else:
            found = read_pairs(path)
        pairs.extend(p if p.source is not None else dataclasses.replace(p, source=str(path)) for p in found)
    return pairs


def default_health_every(total_steps: int, batch_size: int, texts_per_pair: int, health_sample: int,
                         budget: float = 0.05) -> int:
    """Health steps every tenth of the run, but sparser when they would cost more than `budget` of it.

    A health pass embeds 2 × health_sample texts forward only; a training step embeds texts_per_pair ×
    batch_size texts forward and backward (about three forward passes' work).
    """
    health_cost = 2 * health_sample
    step_cost = 3 * texts_per_pair * batch_size
    return max(1, total_steps // 10, math.ceil(health_cost / (budget * step_cost)))


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Learning-rate multiplier at `step`: linear warm-up, then linear or cosine decay to 0, or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return max(0.0, 1.0 - progress)


# a config's similarity → sentence-transformers' similarity_fn_name (its "euclidean" is the negative distance)
ST_SIMILARITY = {"cosine": "cosine", "dot": "dot", "neg_euclidean": "euclidean"}


def build_loss(config: TrainConfig) -> nn.Module:
    """The loss module the config names (InfoNCE holds the learnable temperature, in the config's dtype)."""
    if config.loss == "infonce":
        return InfoNCELoss(config.temperature, learnable_temperature=config.learnable_temperature,
                           similarity=config.similarity, symmetric=config.symmetric,
                           mask_margin=config.mask_margin, dtype=getattr(torch, config.dtype))
    distance = "euclidean" if config.similarity == "neg_euclidean" else "cosine"
    if config.loss == "triplet":
        return TripletLoss(config.margin, distance=distance)
    return MarginContrastiveLoss(config.margin, distance=distance)


def positives_by_anchor(examples: Sequence[Pair]) -> dict[str, set[str]]:
    """Anchor text → every positive text the data pairs it with; only anchors with more than one.

    A query with several relevant documents appears in several pairs: in a batch, one pair's positive
    (or a hard negative mined for another query) may be another relevant document of that query.
    """
    positives: dict[str, set[str]] = {}
    for ex in examples:
        positives.setdefault(ex.anchor, set()).add(ex.positive)
    return {anchor: texts for anchor, texts in positives.items() if len(texts) > 1}


def known_positive_mask(anchors: Sequence[str], candidates: Sequence[str],
                        positives_of: dict[str, set[str]]) -> Tensor | None:
    """Bool [len(anchors), len(candidates)]: True where candidate j is a known positive of anchor i.

    None when nothing is marked (no mask built). The loss never masks a row's own positive.
    """
    columns: dict[str, list[int]] = {}
    for j, text in enumerate(candidates):
        columns.setdefault(text, []).append(j)
    marked = [(i, j) for i, anchor in enumerate(anchors)
              for text in positives_of.get(anchor, ()) for j in columns.get(text, ())]
    if not marked:
        return None
    mask = torch.zeros(len(anchors), len(candidates), dtype=torch.bool)
    rows, cols = zip(*marked)
    mask[list(rows), list(cols)] = True
    return mask


def check_examples(examples: Sequence, config: TrainConfig) -> None:
    """Refuse, before training, data that cannot make a single batch or lacks the negatives asked for."""
    if len(examples) < config.batch_size and config.drop_last:
        raise ConfigError(f"only {len(examples)} training pairs, fewer than batch_size {config.batch_size}")
    k = config.num_hard_negatives
    brought = sum(len(ex.negatives) for ex in examples)
    if not k and brought:  # mined negatives, then a run that leaves them all out: said, not silent
        warnings.warn(f"the training pairs bring {brought:,} hard negatives, but num_hard_negatives = 0 trains on "
                      f"in-batch negatives alone; set num_hard_negatives (1 uses each pair's first) to train on "
                      f"them", stacklevel=3)
    if config.loss == "infonce":  # hard negatives are pooled: a pair may bring fewer than k, or none
        if k and not any(ex.negatives for ex in examples):
            raise ConfigError(f"num_hard_negatives = {k} but no training pair has negatives; mine them first "
                              f"(contrastkit mine) or set it to 0")
        return
    for i, ex in enumerate(examples):
        if len(ex.negatives) < k:
            raise ConfigError(f"training pair {i + 1} has {len(ex.negatives)} negatives but the {config.loss} "
                              f"loss takes exactly num_hard_negatives = {k}; mine negatives first "
                              f"(contrastkit mine) or drop such pairs")


def examples_digest(examples: Sequence) -> str:
    """16 hex digits of the training pairs' texts, in order (anchor, positive, negatives)."""
    h = hashlib.sha256()
    for ex in examples:
        for text in (ex.anchor, ex.positive, *ex.negatives):
            data = str(text).encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        h.update(b"\x00pair")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _saying(progress, what: str):
    """The progress bar's label says `what` while the block runs (work between steps), then goes back,
    and the bar's clock leaves the block's time out: its rate and time left are the steps' (an
    evaluation before the first step read as a 42-second step, and 16 minutes left for one)."""
    if getattr(progress, "disable", False):  # a disabled tqdm has no label
        yield
        return
    label = progress.desc
    progress.set_description_str(what, refresh=True)
    try:
        yield
    finally:
        progress.unpause()  # tqdm: the clock restarts from its last print, the block's start
        progress.set_description_str(label, refresh=True)


def own_memory(module: nn.Module) -> None:
    """Give every parameter of `module` memory of its own, a copy made in one pass.

    Weights loaded from safetensors share pages with the file (a private memory map): the optimizer's
    first write then copies them page by page (MiniLM's 90 MB, about 22,000 pages), which took the
    first optimizer step from 0.018 s to 0.19-0.25 s here; this copy takes 0.025 s (docs/training.md).
    """
    with torch.no_grad():
        for p in module.parameters():
            p.data = p.data.clone()


class Trainer:
    """Fine-tunes an Encoder on (anchor, positive[, negatives]) examples with a contrastive loss."""

    def __init__(self, config: TrainConfig, encoder: Encoder, examples: Sequence[Pair],
                 evaluator: Evaluator | None = None) -> None:
        config.validate(check_files=False)
        check_examples(examples, config)
        weights = next(encoder.parameters()).dtype
        if weights != getattr(torch, config.dtype):
            raise ConfigError(f"the encoder's weights are {str(weights).removeprefix('torch.')} but dtype is "
                              f"{config.dtype}: load the encoder in {config.dtype} (Encoder.from_pretrained(..., "
                              f"torch_dtype=torch.{config.dtype})) or set dtype to match it")
        if evaluator is None and config.eval_data:  # read and checked here, before any training
            evaluator = RetrievalEvaluator.from_folder(config.eval_data, config.eval_split)
        if config.eval_every and evaluator is None:
            raise ConfigError("eval_every is set but there is nothing to evaluate with: set eval_data (a BEIR "
                              "folder) or pass an evaluator")
        self.dist, self.device = join_ranks(config.batch_size, config.dist_timeout_s, config.device, config.drop_last)
        self.config = config
        self.bf16 = use_bf16(config.bf16, self.device)  # bf16 autocast: as set, or where the hardware has it
        self.encoder = encoder.to(self.device)
        if config.max_seq_length:
            encoder.max_seq_length = config.max_seq_length
        if config.attention_dropout is not None and not encoder.set_attention_dropout(config.attention_dropout):
            raise ConfigError(f"attention_dropout is set but no attention dropout was found in "
                              f"{type(encoder.model).__name__}; leave it null for this model")
        if config.fast_dropout:
            use_fast_dropout(encoder)
        use_fast_linear(encoder)  # the padded forward's dense layers too (oneDNN where it is faster)
        # the padded forward's training passes in bf16 on the CPU: Hugging Face's eager attention
        # (torch's fused CPU kernel is slow there; eager_attention.py)
        self._eager_attention = self.bf16 and self.device.type == "cpu"
        self.examples = list(examples)
        self._data_digest = examples_digest(self.examples)  # a resumed run must train on the same pairs
        self.evaluator = evaluator
        # the loss in the weights' precision: float32 (bf16 autocast's outputs too), or float64 for exact checks
        self._loss_dtype = getattr(torch, config.dtype)
        self.loss_fn = build_loss(config).to(self.device, self._loss_dtype)
        # the saved model says what it was trained to score with (sentence-transformers' model.similarity)
        encoder.similarity_fn_name = ST_SIMILARITY[config.similarity]
        self._positives_of = (positives_by_anchor(self.examples)
                              if config.loss == "infonce" and config.mask_known_positives else {})
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        # epochs may differ in length: the no-duplicates sampler drops what cannot fill a batch
        self._epoch_batches: tuple[int | None, list[list[int]]] = (None, [])
        self._epoch_starts = [0]
        self.total_steps = config.max_steps or self._locate_epoch_start(config.epochs)
        if not config.drop_last:
            short = [len(b) for b in self._batches(0) if len(b) < config.batch_size]
            sources = len({ex.source or "" for ex in self.examples}) if config.group_by_source else 1
            if len(short) > sources:  # beyond each source's last: a step of one pair has no in-batch negative
                warnings.warn(f"drop_last false: {len(short)} of the first epoch's {len(self._batches(0))} batches "
                              f"are incomplete (down to {min(short)} pair(s)): pairs that share a text (a query with "
                              f"several documents) cannot share a batch, so the end of each pass is cut into small "
                              f"ones; drop_last true (the default) leaves them out", stacklevel=2)
        self.optimizer = adamw(self._param_groups(), config.lr, self.device)
        # gradients kept allocated between steps, so that the packed forward adds its word-embedding
        # gradient into them as sparse rows (packing.embed_tokens); zeroed, not freed, after each step
        self._kept_grads = ([p for p in sparse_gradient_parameters(encoder.model) if p.requires_grad]
                            if encoder.packs else [])
        for p in self._kept_grads:
            p.grad = torch.zeros_like(p)
        # the step as parallel streams on the CPU (train/streams.py); their pool starts with train()
        self.streams = 1 if config.mini_batch_size else stream_count(config.cpu_streams, self.device,
                                                                     encoder.packs, encoder.model)
        if self.streams > 1:
            coalesce_sparse_gradients(self._kept_grads)
        self._stream_pool: StreamPool | None = None
        # the next step's texts tokenized and packed in the background (streams only; train/streams.py)
        self._lookahead: Lookahead | None = None
        self._lookahead_tokenizer = None
        warmup = int(config.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, warmup, config.scheduler))
        self.step = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self.best_metric: float | None = None
        self._warned_best = False  # metric_for_best missing from an evaluation: warned once
        self._lengths: dict[str, int] = {}
        # the report's health signals: a fixed sample of pairs, embedded now and then (main rank only)
        self._health_pairs = [self.examples[i] for i in sample_indices(len(self.examples), config.health_sample,
                                                                       config.seed)]
        self.health_every = config.health_every or config.eval_every or default_health_every(
            self.total_steps, config.batch_size, 2 + config.num_hard_negatives, config.health_sample)

    # ------------------------------------------------------------------ setup
    @property
    def precision(self) -> str:
        """How the step computes, in words: "bf16 autocast" or "fp32", then what runs it where not torch's
        own operators: oneDNN's dense layers (fp32), the fused attention kernel (either)."""
        cpu = self.device.type == "cpu"
        kernel = cpu and self.encoder.packs and self.config.dtype == "float32" and fused_attention.runs_in(
            self.encoder.model, torch.bfloat16 if self.bf16 else torch.float32)
        parts = ["bf16 autocast" if self.bf16 else "fp64" if self.config.dtype == "float64" else "fp32"]
        parts += ["dense layers by oneDNN"] if cpu and not self.bf16 and onednn_linear_enabled() else []
        parts += ["attention by the fused CPU kernel"] if kernel else []
        return ", ".join(parts)

    def _param_groups(self) -> list[dict]:
        decay, no_decay = [], []
        for name, param in self.encoder.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "LayerNorm" in name or "bias" in name else decay).append(param)
        loss_params = [p for p in self.loss_fn.parameters() if p.requires_grad]
        return [{"params": decay, "weight_decay": self.config.weight_decay},
                {"params": no_decay + loss_params, "weight_decay": 0.0}]

    def _batches(self, epoch: int) -> list[list[int]]:
        """The global batches of an epoch (the same on every rank; computed once per epoch)."""
        if self._epoch_batches[0] != epoch:
            self._epoch_batches = (epoch, self._sample_batches(epoch))
        return self._epoch_batches[1]

    def _locate_epoch_start(self, epoch: int) -> int:
        """The global step at which `epoch` starts (the sum of the earlier epochs' batch counts)."""
        while len(self._epoch_starts) <= epoch:
            done = len(self._epoch_starts) - 1
            count = len(self._batches(done))
            if count == 0:
                raise ConfigError(f"epoch {done} has no complete batch without repeating a text; lower batch_size")
            self._epoch_starts.append(self._epoch_starts[-1] + count)
        return self._epoch_starts[epoch]

    def _locate(self, step: int) -> tuple[int, int]:
        """(epoch, position in the epoch) of global step `step`."""
        while self._locate_epoch_start(len(self._epoch_starts)) <= step:
            pass
        epoch = bisect.bisect_right(self._epoch_starts, step) - 1
        return epoch, step - self._epoch_starts[epoch]

    def _sample_batches(self, epoch: int) -> list[list[int]]:
        k = self.config.num_hard_negatives
        texts = [(ex.anchor, ex.positive, *ex.negatives[:k]) for ex in self.examples]
        sources = [ex.source or "" for ex in self.examples] if self.config.group_by_source else None
        return no_duplicate_batches(texts, self.config.batch_size, self.config.seed, epoch,
                                    drop_last=self.config.drop_last, sources=sources,
                                    refill=self.config.refill_epochs)

    def _token_length(self, texts: Sequence[str]) -> list[int]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._lengths]
        if missing:
            self._lengths.update(zip(missing, self.encoder.token_lengths(missing)))
        return [self._lengths[t] for t in texts]

    # ------------------------------------------------------------------ one step
    def _groups(self, batch: list[int], shard: list[int] | None = None) -> list[list[str]]:
        """The texts of `shard` (default: all of `batch`) as groups: anchors, positives and, where the
        loss takes hard negatives and some pair of the whole batch brings one, the pooled negatives.

        Pooled negatives let a pair bring fewer than k, or none; a batch where no pair brings any
        is trained on in-batch negatives alone. That is decided on the whole batch, so that every
        rank holds the same groups (a rank whose shard brings none embeds an empty group).
        """
        k = self.config.num_hard_negatives
        rows = batch if shard is None else shard
        anchors = [self.examples[i].anchor for i in rows]
        positives = [self.examples[i].positive for i in rows]
        if not (k and any(self.examples[i].negatives for i in batch)):
            return [anchors, positives]
        return [anchors, positives, [n for i in rows for n in self.examples[i].negatives[:k]]]

    def _loss_on(self, groups: list[list[str]]) -> Callable[..., Tensor]:
        """loss(*embeddings of the groups): the configured loss, with ids for false-negative masking."""
        config = self.config
        if config.loss == "infonce":
            text_ids: dict[str, int] = {}
            ids = [to_device(torch.tensor([text_ids.setdefault(t, len(text_ids)) for t in g]), self.device)
                   for g in groups]
            known = known_positive_mask(groups[0], [t for g in groups[1:] for t in g], self._positives_of)
            known = None if known is None else to_device(known, self.device)
            self._stats = {}

            def infonce(anchors: Tensor, positives: Tensor, negatives: Tensor | None = None) -> Tensor:
                out = self.loss_fn.with_stats(anchors, positives, negatives, anchor_ids=ids[0], positive_ids=ids[1],
                                              hard_negative_ids=ids[2] if negatives is not None else None,
                                              known_positives=known)
                self._stats = {"masked": out.num_masked.detach()}  # read with the step's other numbers
                return out.loss
            return infonce
        if config.loss == "triplet":
            return lambda a, p, n: self.loss_fn(a, p, n)

        def contrastive(anchors: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
            # (anchor, positive) labelled similar, (anchor, each of its k negatives) dissimilar; k >= 1 (config)
            k = len(negatives) // len(anchors)
            left = torch.cat([anchors, anchors.repeat_interleave(k, dim=0)])
            labels = torch.cat([torch.ones(len(anchors)), torch.zeros(len(negatives))]).to(anchors.device)
            return self.loss_fn(left, torch.cat([positives, negatives]), labels.to(anchors.dtype))
        return contrastive

    def _embed(self, texts: list[str]) -> Tensor:
        # the packed forward writes its attention out itself: only the padded one runs Hugging Face's
        eager = self._eager_attention and torch.is_grad_enabled() and not self.encoder.packs
        if not texts:  # a rank's shard of a batch's negatives may be empty (see _groups)
            return torch.zeros(0, self.encoder.embedding_dim, dtype=self._loss_dtype, device=self.device,
                               requires_grad=torch.is_grad_enabled())
        with autocast(self.bf16, self.device.type), eager_attention(self.encoder, eager):
            return self.encoder.embed(texts).to(self._loss_dtype)

    def _stream_parts(self, groups: list[list[str]], tokenizer=None) -> list[tuple[PackPlan, list[int]]]:
        """parts[s] = (plan, counts): one packing plan of stream s's shares of every group, in group order,
        and how many texts of each group it holds; shares cut by token counts.

        The groups are cut longest texts first, each cut evening out the streams' token counts over
        the groups cut so far, so that the short texts (queries) even out what the long ones' coarse
        cuts left. A stream packs its shares of all groups together: one forward over its texts
        instead of one per group, half the operators, and the short texts fill slabs beside the
        long ones (Cranfield batch 32 +1-1.5 %, docs/benchmarks.md). Tokenized here, on the calling
        thread, by the encoder's tokenizer or `tokenizer` (a copy of it: a Hugging Face fast tokenizer is
        not to be called from two threads at once).
        """
        tokenized = [self.encoder.token_ids(g, tokenizer) for g in groups]
        lengths = [[len(i) for i in ids] for ids, _ in tokenized]
        loads = [0] * self.streams
        shares: list[list[tuple[int, int]]] = [[(0, 0)] * len(groups) for _ in range(self.streams)]
        for g in sorted(range(len(groups)), key=lambda g: -max(lengths[g])):
            cuts = balanced_cuts(lengths[g], self.streams, carried=loads)
            for s, (a, b) in enumerate(zip(cuts, cuts[1:])):
                shares[s][g] = (a, b)
                loads[s] += sum(lengths[g][a:b])
        parts = []
        for stream in shares:
            ids = [i for (ids, _), (a, b) in zip(tokenized, stream) for i in ids[a:b]]
            types = (None if tokenized[0][1] is None
                     else [t for (_, types), (a, b) in zip(tokenized, stream) for t in types[a:b]])
            parts.append((plan_packing(ids, types), [b - a for a, b in stream]))
        return parts

    def _embed_parts(self, part: tuple[PackPlan, list[int]]) -> list[Tensor]:
        # on a stream's thread (autocast is switched on per thread). Without autocast's cache of weight
        # casts: torch keeps one for all threads and empties it when any thread leaves its autocast
        # region, so a stream still embedding would cast its weights again and receive their gradients
        # in a timing-dependent number of parts (bf16 sums rounded otherwise: runs would not repeat)
        plan, counts = part
        with autocast(self.bf16, self.device.type, cache=False):
            return list(self.encoder.embed_packed(plan).to(self._loss_dtype).split(counts))

    def _pool(self) -> StreamPool:
        if self._stream_pool is None:
            self._stream_pool = StreamPool(self.streams)
        return self._stream_pool

    def _streams_take(self, local: list[list[str]]) -> bool:
        """Whether a step of these (this rank's) groups runs as parallel streams."""
        return not self.config.mini_batch_size and self.streams > 1 and min(len(g) for g in local) >= self.streams

    def _local_groups(self, batch: list[int]) -> list[list[str]]:
        shard = len(batch) // self.dist.world_size
        return self._groups(batch, batch[self.dist.rank * shard:(self.dist.rank + 1) * shard])

    def _look_ahead(self, step: int) -> None:
        """Tokenize and pack step `step`'s stream parts in the background (`Lookahead`), where it runs as streams."""
        if self.streams < 2 or step >= self.total_steps:
            return
        epoch, position = self._locate(step)
        batch = self._batches(epoch)[position]
        local = self._local_groups(batch)
        if not self._streams_take(local):
            return
        if self._lookahead is None:
            self._lookahead = Lookahead()
            self._lookahead_tokenizer = copy.deepcopy(self.encoder.tokenizer)
        self._lookahead.submit(tuple(batch), self._stream_parts, local, self._lookahead_tokenizer)

    def _texts_per_forward(self) -> int | None:
        return texts_per_forward(self.config.mini_batch_size, self.config.chunk_size, self.encoder.packs, self.device)

    def compute_gradients(self, batch: list[int]) -> Tensor:
        """Forward and backward for one global batch (gradient-cached or in length-sorted chunks); the loss.

        This rank embeds only its shard; the loss sees the whole global batch (gathered embeddings),
        and the encoder's gradients are summed over ranks, so every rank ends with the same ones.
        """
        local = self._local_groups(batch)
        global_loss = self._loss_on(self._groups(batch))

        def loss_on(*local_embeddings: Tensor) -> Tensor:
            return global_loss(*(gather_with_local_grad(e, self.dist) for e in local_embeddings))

        per_forward = self._texts_per_forward()
        chunks = [forward_chunks(len(g), per_forward, functools.partial(self._token_length, g)) for g in local]
        if self.config.mini_batch_size:
            loss = grad_cache_backward(self._embed, local, chunks, loss_on)
        elif self._streams_take(local):
            parts = (self._lookahead.take(tuple(batch)) if self._lookahead is not None else None
                     ) or self._stream_parts(local)
            loss = stream_backward(self._pool(), parts, self._embed_parts, loss_on)
        else:
            # one autocast region for all groups: autocast casts each weight to bf16 once per region
            with autocast(self.bf16, self.device.type):
                embeddings = [embed_in_chunks(self._embed, g, c) for g, c in zip(local, chunks)]
            loss = loss_on(*embeddings)
            loss.backward()
        all_reduce_gradients([p for p in self.encoder.parameters() if p.requires_grad], self.dist)
        return loss.detach()

    # ------------------------------------------------------------------ the loop
    def train(self, resume: bool = False) -> Path:
        """Train to the end (resuming from the newest complete checkpoint if asked); return the output folder."""
        with run_lock(self.output_dir, hold=self.dist.is_main):  # one run at a time in an output folder
            return self._train(resume)

    def _train(self, resume: bool) -> Path:
        config, main = self.config, self.dist.is_main
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed + self.dist.rank)
        # first: a checkpoint this run cannot take stops it with the old run's records intact
        resumed = self._resume() if resume else False
        if resume and not resumed and main:
            warnings.warn(f"--resume: no checkpoint in {self.checkpoint_dir} yet; training from the start", stacklevel=2)
        if not resumed and main:  # a fresh run: an old run's checkpoints and best model must never pass for this one's
            for stale in list_checkpoints(self.checkpoint_dir):
                shutil.rmtree(stale)
            shutil.rmtree(self.output_dir / "best", ignore_errors=True)
            clear_records(self.output_dir)
        if main:
            write_text_whole(self.output_dir / "train_config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
            record_environment(self.output_dir, model=str(self.encoder.name_or_path), device=str(self.device),
                               world_size=self.dist.world_size, cpu_streams=self.streams,
                               precision=self.precision)  # as resolved: `bf16: null` is never written here
        barrier(self.dist)
        if self.device.type == "cpu":
            own_memory(self.encoder)
        self.encoder.train()
        log = open_no_follow(self.output_dir / "metrics.jsonl", "a" if resumed else "w") if main else None
        writer = self._tensorboard() if main else None
        progress = tqdm(total=self.total_steps, initial=self.step, desc="training", unit="step",
                        disable=not (config.show_progress and main), dynamic_ncols=True)
        try:
            if main and self.step == 0:
                with _saying(progress, "training (evaluating before the first step)"):
                    self._before_training(log, writer)
            self._loop(log, writer, progress)
        except (dist.DistError, RuntimeError) as exc:
            if not self.dist.enabled or isinstance(exc, ContrastkitError):
                raise
            raise TrainingError(describe_failure(self.dist, exc)) from exc
        finally:
            progress.close()
            if log is not None:
                log.close()
            if writer is not None:
                writer.close()
            if self._stream_pool is not None:
                self._stream_pool.close()
                self._stream_pool = None
            if self._lookahead is not None:
                self._lookahead.close()
                self._lookahead = None
        leave_ranks(self.dist)
        self.encoder.eval()
        if main:
            save_files_whole(self.output_dir, self.encoder.save)  # each file whole, even if killed mid-save
            self._write_report()
        # the weights are now those of the output folder: caches keyed by model must not see the old name
        self.encoder.name_or_path = str(self.output_dir)
        return self.output_dir

    def _loop(self, log, writer, progress) -> None:
        config = self.config
        pairs_seen, stepping_s = 0, 0.0  # the steps' own time: evaluations and checkpoints are not training speed
        while self.step < self.total_steps:
            epoch, position = self._locate(self.step)
            batch = self._batches(epoch)[position]
            t0 = time.perf_counter()
            self._look_ahead(self.step + 1)  # while this step computes
            loss = self.compute_gradients(batch)
            record = self._optimizer_step(loss)
            self.step += 1
            pairs_seen += len(batch)
            step_s = time.perf_counter() - t0
            stepping_s += step_s
            record.update(step=self.step, epoch=epoch, pairs_per_s=len(batch) / step_s)
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}", tau=f"{record['temperature']:.4f}",
                                 pairs_s=f"{pairs_seen / stepping_s:.1f}")
            if log is not None and (self.step % config.log_every == 0 or self.step == self.total_steps):
                self._log(log, writer, record)
            final = self.step == self.total_steps
            if self.dist.is_main and self.evaluator and (
                    (config.eval_every and self.step % config.eval_every == 0)
                    or (final and isinstance(self.evaluator, RetrievalEvaluator))):
                with _saying(progress, "training (evaluating)"):  # an evaluation may take a minute
                    self._evaluate(log, writer)
            if self.dist.is_main and (self.step % self.health_every == 0 or final):
                with _saying(progress, "training (embedding health)"):
                    self._record_health(log, writer)
            if checkpoint_due(self.step, self.total_steps, config.checkpoint_every):
                self._checkpoint(epoch, position + 1)

    def _optimizer_step(self, loss: Tensor) -> dict:
        config = self.config
        lr = self.scheduler.get_last_lr()[0]  # the rate this step uses (the scheduler then moves to the next)
        result = step_if_finite(self.optimizer, loss, config.max_grad_norm)
        if hasattr(self.loss_fn, "clamp_scale_"):
            self.loss_fn.clamp_scale_()  # a learnable temperature stays where its gradient can reach it
        self.scheduler.step()
        zero_grad_keeping(self.optimizer, self._kept_grads)
        temperature = getattr(self.loss_fn, "temperature", None)
        # the step's numbers in one read from the device: the host waits for the GPU once a step
        record = read_scalars({"loss": loss, "grad_norm": result.grad_norm, "skipped": result.skipped,
                               "temperature": torch.as_tensor(temperature).detach() if temperature is not None
                               else float("nan"), **getattr(self, "_stats", {})})
        finite = not record["skipped"]
        if finite:
            self.nonfinite_in_a_row = 0
        else:
            self.nonfinite_in_a_row += 1
            self.nonfinite_total += 1
            if self.nonfinite_in_a_row >= config.max_nonfinite_steps:
                raise TrainingError(
                    f"the loss or gradients were not finite for {self.nonfinite_in_a_row} steps in a row "
                    f"(last at step {self.step + 1}); lower lr, raise temperature or try --fp32")
        if "masked" in record:
            record["masked"] = int(record["masked"])
        return {**record, "lr": lr, "skipped": not finite,
                "nonfinite_total": self.nonfinite_total}

    def _log(self, log, writer, record: dict) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()
        if writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    writer.add_scalar(f"train/{key}", value, self.step)

    def _tensorboard(self):
        if not self.config.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError("tensorboard = true needs the tensorboard package (pip install tensorboard)") from exc
        return SummaryWriter(str(self.output_dir / "tensorboard"))

    def _log_section(self, log, writer, section: str, values: dict) -> None:
        """One {"step": …, section: values} record, e.g. "eval" or "health"; scalars to tensorboard."""
        self._log(log, None, {"step": self.step, section: values})
        if writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(f"{section}/{key}", value, self.step)

    def _run_evaluator(self, role: str | None = None) -> dict[str, float]:
        """The evaluator's metrics; a RetrievalEvaluator's full result is also recorded as `role`."""
        self.encoder.eval()
        try:
            if not isinstance(self.evaluator, RetrievalEvaluator):
                return self.evaluator(self.encoder)
            result = self.evaluator.evaluate(self.encoder)
        finally:
            self.encoder.train()
        if role:
            self.evaluator.record(self.output_dir, role, result, step=self.step)
        return result.metrics

    def _evaluate(self, log, writer) -> None:
        metrics = self._run_evaluator("after" if self.step == self.total_steps else None)
        self._log_section(log, writer, "eval", metrics)
        value = metrics.get(self.config.metric_for_best)
        if value is None and self.config.eval_every and not self._warned_best:
            self._warned_best = True  # a caller's evaluator names its own metrics: say it once, train on
            warnings.warn(f"metric_for_best {self.config.metric_for_best!r} is not among the evaluator's metrics "
                          f"({', '.join(sorted(metrics))}): best/ is not kept", stacklevel=2)
        if self.config.eval_every and value is not None and (self.best_metric is None or value > self.best_metric):
            self.best_metric = value
            write_atomically(self.output_dir / "best", lambda tmp: self.encoder.save(tmp))

    # ------------------------------------------------------------------ what the report shows
    def _before_training(self, log, writer) -> None:
        """Step 0: health of the untouched model; with a RetrievalEvaluator, its retrieval and BM25's."""
        self._record_health(log, writer)
        if isinstance(self.evaluator, RetrievalEvaluator):
            self.evaluator.record_bm25(self.output_dir)
            self._run_evaluator("before")

    def _record_health(self, log, writer) -> None:
        """Alignment, uniformity and similarities of the fixed pair sample (cheap: no grad, eval mode).

        At step 0 and at the end the raw similarities are kept too, for the report's histograms.
        """
        pairs = self._health_pairs
        groups = [p.anchor for p in pairs]  # pairs of one anchor are not each other's negatives
        if len(set(groups)) < 2:
            return
        anchors = self.encoder.encode(groups)
        positives = self.encoder.encode([p.positive for p in pairs])
        self._log_section(log, writer, "health", embedding_health(anchors, positives, groups).to_dict())
        if self.step in (0, self.total_steps):
            record_similarities(self.output_dir, "before" if self.step == 0 else "after", self.step,
                                similarity_values(anchors, positives, groups), seed=self.config.seed)

    def _write_report(self) -> None:
        if not self.config.report:
            return
        from contrastkit.report import ReportError, write_report

        try:
            write_report(self.output_dir)
        except ReportError as exc:  # e.g. matplotlib missing: the model is saved, the report is extra
            warnings.warn(f"no report.html written: {exc}", stacklevel=2)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, epoch: int, next_position: int) -> None:
        state = {"step": self.step, "epoch": epoch, "next_position": next_position,
                 "total_steps": self.total_steps, "nonfinite_in_a_row": self.nonfinite_in_a_row,
                 "nonfinite_total": self.nonfinite_total, "best_metric": self.best_metric,
                 "config": self.config.to_dict(), "data_digest": self._data_digest, "bf16": self.bf16,
                 "torch": torch.__version__, "python": platform.python_version()}
        rng_per_rank = all_gather_objects(RandState().to_dict(), self.dist)
        if not self.dist.is_main:
            return
        tensors = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                   "loss": self.loss_fn.state_dict(), "torch_rng_per_rank": rng_per_rank}
        save_checkpoint(self.checkpoint_dir, self.step, self.encoder, state, tensors, self.config.keep_checkpoints)

    def _resume(self) -> bool:
        """Load the newest usable checkpoint into this trainer; False when there is none (a fresh run)."""
        found = resume_point(self.checkpoint_dir, self.total_steps, self.dist.world_size, self.config.to_dict(),
                             self._data_digest, self.bf16)
        if found is None:
            return False
        path, state, tensors = found
        restored = Encoder.from_pretrained(path / "model", torch_dtype=getattr(torch, self.config.dtype))
        self.encoder.model.load_state_dict(restored.model.state_dict())
        self.loss_fn.load_state_dict(tensors["loss"])
        restore_optimization(tensors, self.optimizer, self.scheduler, self.dist.rank)
        self.step = state["step"]
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]
        self.nonfinite_total = state["nonfinite_total"]
        if self.dist.is_main:
            drop_log_records_after(self.output_dir / "metrics.jsonl", self.step)
        self.best_metric = state["best_metric"]
        return True
