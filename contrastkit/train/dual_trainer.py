r"""The two-tower training loop: CLIP-style symmetric InfoNCE with the model's learnable logit scale.

For a batch of B aligned (query, document) pairs — or (caption, image) — with embeddings
q_i = DualEncoder.embed("query", ·), d_i = DualEncoder.embed("document", ·) (unit vectors) and
logit scale s = exp(t) ≤ 100 held by the model:

    L = ½ [ −1/B Σ_i log softmax_j(s · q_i·d_j)_i  −  1/B Σ_i log softmax_j(s · d_i·q_j)_i ]

(Radford et al. 2021; `contrastkit.losses.info_nce` with symmetric=True and τ = 1/s). As in the
text trainer (`mask_known_positives`, on by default), a document the data pairs with query i too
(another relevant document of the same query, another image of the same caption) is not one of
q_i's negatives, nor q_i one of its: those logits are masked in both directions. Everything
else is the text trainer's machinery, reused: the batches come from `no_duplicate_batches` (no
caption or image twice in a batch), both towers go through `grad_cache_backward` with one embed
function per side (gradient caching when `mini_batch_size` is set), under torchrun the embeddings
are gathered across ranks (`gather_with_local_grad`: every anchor sees the global batch), and the
loop keeps AdamW, warm-up + decay (`lr_factor`), clipping, metrics.jsonl and atomic checkpoints
(model, optimizer, scheduler, every rank's RNG; `train(resume=True)` continues from the newest one
and ends with the weights of an uninterrupted run).

The knobs are a `TrainConfig`; those this loop does not use (`temperature`, `learnable_temperature`,
`symmetric`: the logit scale lives in the `DualEncoder`; `bf16`, evaluation during training and a few
more, `UNUSED_SETTINGS`) are refused when set, not ignored.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import yaml
from torch import Tensor
from tqdm.auto import tqdm

from contrastkit.data import Pair
from contrastkit.data.images import ImageCaption
from contrastkit.devices import to_device
from contrastkit.errors import ConfigError
from contrastkit.fast_dropout import use_fast_dropout
from contrastkit.fast_linear import use_fast_linear
from contrastkit.files import open_no_follow, run_lock, save_files_whole, write_text_whole
from contrastkit.losses import info_nce
from contrastkit.towers import SIDES, DualEncoder, ModuleTower, TextTower
from contrastkit.train.checkpoint import (checkpoint_due, drop_log_records_after, list_checkpoints,
                                          restore_optimization, resume_point, save_checkpoint)
from contrastkit.train.config import TrainConfig
from contrastkit.train.distributed import (all_gather_objects, all_reduce_gradients, barrier, gather_with_local_grad,
                                           join_ranks, leave_ranks)
from contrastkit.train.grad_cache import (RandState, embed_in_chunks, forward_chunks, grad_cache_backward,
                                         texts_per_forward)
from contrastkit.train.optim import adamw, read_scalars, step_if_finite
from contrastkit.train.sampler import no_duplicate_batches
from contrastkit.train.trainer import (TrainingError, examples_digest, known_positive_mask, lr_factor,
                                       positives_by_anchor)


def clip_loss(queries: Tensor, documents: Tensor, logit_scale: Tensor, known_positives: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE of aligned rows [B, D] × [B, D] at logit scale s (CLIP; 0-dim tensor).

    L = ½ (CE(s·Q Dᵀ, I) + CE(s·D Qᵀ, I)); embeddings unit-normalised (cosine). Radford et al. 2021.
    known_positives: bool [B, B], True where document j is relevant to query i too (i ≠ j): masked
    out of row i of s·Q Dᵀ and out of row j of s·D Qᵀ.
    """
    return info_nce(queries, documents, temperature=1.0 / logit_scale, symmetric=True, similarity="dot",
                    known_positives=known_positives)


def sides_from_pairs(pairs: Sequence[Pair]) -> tuple[list[str], list[str]]:
    """(queries, documents) of text pairs: anchors to the query tower, positives to the document tower."""
    return [p.anchor for p in pairs], [p.positive for p in pairs]


def sides_from_image_captions(records: Sequence[ImageCaption], model: DualEncoder) -> tuple[list, list]:
    """(queries, documents) of image–caption records, the images on the model's vision side."""
    captions, images = [r.caption for r in records], [r.image for r in records]
    return (captions, images) if model.image_side == "document" else (images, captions)


def check_sides(model: DualEncoder, queries: Sequence, documents: Sequence) -> None:
    """Refuse, before training, items a side's tower cannot take: text for a vision tower (an image
    path that is not a file, often the two sides swapped) or an image path for a text tower."""
    from contrastkit.towers import VisionTower

    for side, items in (("query", queries), ("document", documents)):
        tower = model.tower(side)
        for i, item in enumerate(items, 1):
            if isinstance(tower, VisionTower) and not isinstance(item, (str, Path)):
                raise ConfigError(f"{side} {i} goes to a vision tower as {type(item).__name__}: the trainer takes "
                                  f"image files (it reads each when its batch comes)")
            if isinstance(tower, VisionTower) and not _is_file(item):
                swapped = " (are the queries and documents swapped?)" if isinstance(item, str) else ""
                raise ConfigError(f"{side} {i} goes to a vision tower but is not an image file: {str(item)[:80]!r}"
                                  f"{swapped}")
            if isinstance(tower, TextTower) and not isinstance(item, str):
                raise ConfigError(f"{side} {i} goes to a text tower but is {type(item).__name__} "
                                  f"{str(item)[:80]!r}, not a text (are the queries and documents swapped?)")


def _is_file(item: str | Path) -> bool:
    try:
        return Path(item).is_file()
    except OSError:  # a caption longer than a file name may be ("File name too long"): not a file
        return False


# TrainConfig settings this loop does not use, and why; set away from their defaults, they are refused
# rather than silently ignored
UNUSED_SETTINGS = {
    "temperature": "the logit scale lives in the DualEncoder (learnt)",
    "learnable_temperature": "the DualEncoder's logit scale is always learnt",
    "symmetric": "the CLIP loss is always symmetric",
    "similarity": "the towers' outputs meet by dot product (cosine when the DualEncoder normalises)",
    "margin": "no margin loss here",
    "mask_margin": "no similarity masking in the CLIP loss",
    "group_by_source": "no per-source batches here",
    "bf16": "no bf16 autocast in this loop",
    "attention_dropout": "set each tower's dropout on its model",
    "eval_every": "no evaluation during training here",
    "eval_data": "no evaluation during training here",
    "tensorboard": "metrics.jsonl only",
    "eval_split": "no evaluation during training here",
    "metric_for_best": "no evaluation during training here",
    "health_every": "no embedding-health records here",
    "health_sample": "no embedding-health records here",
    "report": "no report.html here",
    "cpu_streams": "the two-tower step runs as one stream",
    "dtype": "load each tower in the dtype you want",
}


# an unused setting asked for what the loop does anyway is accepted: fp32, no report, no health, one stream
WHAT_IT_DOES = {"bf16": False, "report": False, "health_sample": 0, "cpu_streams": 1}


def check_dual_settings(config: TrainConfig) -> None:
    """Raise ConfigError naming every setting of `config` the two-tower loop would ignore."""
    defaults = TrainConfig()
    unused = [f"{name} ({why})" for name, why in UNUSED_SETTINGS.items()
              if getattr(config, name) != getattr(defaults, name)
              and getattr(config, name) != WHAT_IT_DOES.get(name, getattr(defaults, name))]
    if unused:
        raise ConfigError("the two-tower trainer does not use these settings; leave them at their defaults: "
                          + "; ".join(unused))


class DualTrainer:
    """Trains a `DualEncoder` on aligned (query, document) items with the symmetric CLIP loss.

    `queries[i]` and `documents[i]` are a positive pair; every other document of the global batch
    is a negative (and every other query, in the reverse direction).

    Example:
        >>> records = read_image_captions("captions.jsonl")
        >>> DualTrainer(TrainConfig(output_dir="runs/clip", batch_size=256, mini_batch_size=32),
        ...             model, *sides_from_image_captions(records, model)).train()
    """

    def __init__(self, config: TrainConfig, model: DualEncoder, queries: Sequence, documents: Sequence) -> None:
        config.validate(check_files=False)
        check_dual_settings(config)
        if config.loss != "infonce" or config.num_hard_negatives:
            raise ConfigError("the two-tower trainer trains with symmetric InfoNCE on in-batch negatives (CLIP): "
                              "set loss = infonce and num_hard_negatives = 0")
        if len(queries) != len(documents):
            raise ConfigError(f"{len(queries)} queries but {len(documents)} documents: they must be aligned pairs")
        if len(queries) < config.batch_size and config.drop_last:
            raise ConfigError(f"only {len(queries)} training pairs, fewer than batch_size {config.batch_size}")
        check_sides(model, queries, documents)
        self.dist, self.device = join_ranks(config.batch_size, config.dist_timeout_s, config.device, config.drop_last)
        self.config = config
        self.model = model.to(self.device)
        if config.fast_dropout:
            use_fast_dropout(model)
        use_fast_linear(model)  # fp32 dense layers by oneDNN on the CPUs where it is faster (fast_linear)
        if config.max_seq_length:
            for side in SIDES:
                tower = model.tower(side)
                if isinstance(tower, TextTower):
                    tower.encoder.max_seq_length = config.max_seq_length
        self.queries, self.documents = list(queries), list(documents)
        # batches never repeat a text or an image file: a repeat would be its own false negative
        # (an image file by its resolved path: "images/a.png" and its absolute path are one image)
        images = {side for side in SIDES if model.tower(side).modality == "image"}
        self._keys = [(_key(q, i, "query", "query" in images), _key(d, i, "document", "document" in images))
                      for i, (q, d) in enumerate(zip(queries, documents))]
        self._data_digest = examples_digest([Pair(q, d) for q, d in self._keys])  # resume refuses other data
        self._positives_of: dict[str, set[str]] = {}  # query key → its documents' keys, where it has several
        if config.mask_known_positives:
            self._positives_of = positives_by_anchor([Pair(q, d) for q, d in self._keys])
        self.output_dir = Path(config.output_dir)
        self.total_steps = config.max_steps or sum(len(self._batches(e)) for e in range(config.epochs))
        if self.total_steps == 0:
            raise ConfigError("no complete batch without repeating a text or image; lower batch_size")
        self.optimizer = adamw(self._param_groups(), config.lr, self.device)
        warmup = int(config.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, warmup, config.scheduler))
        self.step = 0

    def _param_groups(self) -> list[dict]:
        """AdamW groups: weight decay on matrices only (not on biases, norms or the logit scale)."""
        decay, no_decay = [], []
        for param in self.model.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        return [{"params": decay, "weight_decay": self.config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def _batches(self, epoch: int) -> list[list[int]]:
        return no_duplicate_batches(self._keys, self.config.batch_size, self.config.seed, epoch,
                                    drop_last=self.config.drop_last, refill=self.config.refill_epochs)

    def _schedule(self) -> Iterator[tuple[int, list[int]]]:
        """(epoch, global batch) for every step of the run, epoch after epoch."""
        epoch = 0
        while True:
            batches = self._batches(epoch)
            if not batches:
                raise ConfigError(f"epoch {epoch} has no complete batch without repeating a text; lower batch_size")
            for batch in batches:
                yield epoch, batch
            epoch += 1

    # ------------------------------------------------------------------ one step
    def compute_gradients(self, batch: list[int]) -> Tensor:
        """Forward and backward of both towers for one global batch; returns the loss.

        This rank embeds its shard; the loss sees the gathered global batch; tower gradients are
        summed over ranks. The logit scale already sees the whole loss on every rank: not summed.
        """
        shard = len(batch) // self.dist.world_size
        local = batch[self.dist.rank * shard:(self.dist.rank + 1) * shard]
        groups = [self.model.prepare("query", [self.queries[i] for i in local]),
                  self.model.prepare("document", [self.documents[i] for i in local])]

        known = known_positive_mask([self._keys[i][0] for i in batch], [self._keys[i][1] for i in batch],
                                    self._positives_of)  # over the global batch, the order the gather gives
        known = None if known is None else to_device(known, self.device)

        def loss_on(queries: Tensor, documents: Tensor) -> Tensor:
            return clip_loss(gather_with_local_grad(queries, self.dist), gather_with_local_grad(documents, self.dist),
                             self.model.logit_scale, known)

        chunks = [forward_chunks(len(g), texts_per_forward(self.config.mini_batch_size, self.config.chunk_size,
                                                          self.model.packs(side), self.device),
                                 functools.partial(self.model.lengths, side, g)) for side, g in zip(SIDES, groups)]
        embed_fns = [functools.partial(self.model.embed_prepared, side) for side in SIDES]
        if self.config.mini_batch_size:
            loss = grad_cache_backward(embed_fns, groups, chunks, loss_on)
        else:
            loss = loss_on(*(embed_in_chunks(f, g, c) for f, g, c in zip(embed_fns, groups, chunks)))
            loss.backward()
        tower_params = [p for p in self.model.parameters() if p.requires_grad and p is not self.model.log_logit_scale]
        all_reduce_gradients(tower_params, self.dist)
        return loss.detach()

    # ------------------------------------------------------------------ the loop
    def train(self, resume: bool = False) -> Path:
        """Train for `max_steps` (or `epochs`), checkpoint, save the model (`DualEncoder.load(folder)`); the folder.

        With `resume`, continue from the newest complete checkpoint in `output_dir/checkpoints`
        (a fresh run when there is none); without it, old checkpoints there are removed first.
        """
        with run_lock(self.output_dir, hold=self.dist.is_main):  # one run at a time in an output folder
            return self._train(resume)

    def _train(self, resume: bool) -> Path:
        config, main = self.config, self.dist.is_main
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed + self.dist.rank)
        self.nonfinite_in_a_row = 0
        resumed = self._resume() if resume else False  # first: a checkpoint it cannot take leaves the run intact
        if not resumed and main:  # a fresh run: an old run's checkpoints must never be resumed into this one
            for stale in list_checkpoints(self.checkpoint_dir):
                shutil.rmtree(stale)
        if main:
            write_text_whole(self.output_dir / "train_config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        barrier(self.dist)
        self.model.train()
        log = open_no_follow(self.output_dir / "metrics.jsonl", "a" if resumed else "w") if main else None
        progress = tqdm(total=self.total_steps, initial=self.step, desc="training two towers", unit="step",
                        disable=not (config.show_progress and main), dynamic_ncols=True)
        try:
            for epoch, batch in itertools.islice(self._schedule(), self.step, None):  # resumed: skip the done steps
                if self.step >= self.total_steps:
                    break
                started = time.perf_counter()
                loss = self.compute_gradients(batch)
                lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
                result = step_if_finite(self.optimizer, loss, config.max_grad_norm)
                self.model.clamp_scale_()  # the logit scale stays where its gradient can reach it
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                # the step's numbers in one read from the device: the host waits for the GPU once a step
                numbers = read_scalars({"loss": loss, "logit_scale": self.model.logit_scale.detach(),
                                        "grad_norm": result.grad_norm, "skipped": result.skipped})
                finite = not numbers["skipped"]
                self.nonfinite_in_a_row = 0 if finite else self.nonfinite_in_a_row + 1
                if self.nonfinite_in_a_row >= config.max_nonfinite_steps:
                    raise TrainingError(f"the loss or gradients were not finite for {self.nonfinite_in_a_row} steps "
                                        f"in a row (last at step {self.step}); lower lr")
                record = {"step": self.step, "epoch": epoch, "loss": numbers["loss"], "lr": lr,
                          "logit_scale": numbers["logit_scale"], "grad_norm": numbers["grad_norm"],
                          "skipped": not finite, "pairs_per_s": len(batch) / (time.perf_counter() - started)}
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.4f}", scale=f"{record['logit_scale']:.1f}")
                if log is not None and (self.step % config.log_every == 0 or self.step == self.total_steps):
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if checkpoint_due(self.step, self.total_steps, config.checkpoint_every):
                    self._checkpoint(epoch)
        finally:
            progress.close()
            if log is not None:
                log.close()
        leave_ranks(self.dist)
        self.model.eval()
        if main:
            save_files_whole(self.output_dir, self.model.save)  # each file whole, even if killed mid-save
        return self.output_dir

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def _checkpoint(self, epoch: int) -> None:
        """An atomic checkpoint: the model (both towers), optimizer, scheduler and every rank's RNG state."""
        rng = all_gather_objects(RandState().to_dict(), self.dist)  # every rank takes part
        if not self.dist.is_main:
            return
        state = {"step": self.step, "epoch": epoch, "total_steps": self.total_steps,
                 "nonfinite_in_a_row": self.nonfinite_in_a_row, "config": self.config.to_dict(),
                 "data_digest": self._data_digest}
        tensors = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                   "torch_rng_per_rank": rng}
        save_checkpoint(self.checkpoint_dir, self.step, self.model, state, tensors, self.config.keep_checkpoints)

    def _resume(self) -> bool:
        """Load the newest usable checkpoint into this trainer: weights, optimizer, scheduler, RNG, step;
        False when there is none (a fresh run)."""
        found = resume_point(self.checkpoint_dir, self.total_steps, self.dist.world_size, self.config.to_dict(),
                             self._data_digest)
        if found is None:
            return False
        path, state, tensors = found
        modules = {side: copy.deepcopy(self.model.tower(side).module) for side in SIDES
                   if isinstance(self.model.tower(side), ModuleTower)}  # torch modules are rebuilt, never unpickled
        restored = DualEncoder.load(path / "model", modules=modules, torch_dtype=next(self.model.parameters()).dtype)
        self.model.load_state_dict(restored.state_dict())
        restore_optimization(tensors, self.optimizer, self.scheduler, self.dist.rank)
        self.step = state["step"]
        self.nonfinite_in_a_row = state["nonfinite_in_a_row"]
        if self.dist.is_main:
            drop_log_records_after(self.output_dir / "metrics.jsonl", self.step)
        return True


def _key(item: object, index: int, side: str, image: bool = False) -> str:
    """What identifies an item for the no-duplicates sampler: a text as itself, an image file by its
    resolved path (two spellings of one file are one image), anything else by its index."""
    if not isinstance(item, (str, Path)):
        return f"{side}#{index}"
    return f"{side}:{Path(item).resolve() if image else item}"
