"""InfoNCE with in-batch negatives, hard negatives and false-negative masking (pure functions)."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, NamedTuple, ParamSpec

import torch
from torch import Tensor

from contrastkit.losses._common import check_embeddings, check_labels
from contrastkit.losses.similarity import SimilarityKind, rowwise_similarity, similarity_matrix

INFO_NCE_CITATION = """
@misc{oord2018representation,
    title={Representation Learning with Contrastive Predictive Coding},
    author={Aaron van den Oord and Yazhe Li and Oriol Vinyals},
    year={2018}, eprint={1807.03748}, archivePrefix={arXiv}, primaryClass={cs.LG}
}
@inproceedings{radford2021clip,
    title={Learning Transferable Visual Models From Natural Language Supervision},
    author={Alec Radford and Jong Wook Kim and Chris Hallacy and Aditya Ramesh and Gabriel Goh and
            Sandhini Agarwal and Girish Sastry and Amanda Askell and Pamela Mishkin and Jack Clark and
            Gretchen Krueger and Ilya Sutskever},
    booktitle={ICML}, year={2021}
}
@misc{moreira2024nvretriever,
    title={NV-Retriever: Improving text embedding models with effective hard-negative mining},
    author={Gabriel de Souza P. Moreira and Radek Osmulski and Mengyao Xu and Ronay Ak and
            Benedikt Schifferer and Even Oldridge},
    year={2024}, eprint={2407.15831}, archivePrefix={arXiv}, primaryClass={cs.IR}
}
"""


class InfoNCEOutput(NamedTuple):
    """The InfoNCE loss and what the false-negative masks did (counts are 0-dim integer tensors).

    Counts cover every direction the loss used (both when ``symmetric``). A candidate masked by id
    is not counted again by similarity, so ``num_masked = num_masked_by_id +
    num_masked_by_similarity``. ``num_candidates`` is the number of (row, negative candidate)
    slots before masking; each row's own positive is not a candidate.
    """

    loss: Tensor
    num_masked: Tensor
    num_masked_by_id: Tensor
    num_masked_by_similarity: Tensor
    num_candidates: Tensor


def info_nce_with_stats(
    anchors: Tensor,
    positives: Tensor,
    hard_negatives: Tensor | None = None,
    *,
    temperature: float | Tensor = 0.05,
    similarity: SimilarityKind = "cosine",
    symmetric: bool = False,
    label_smoothing: float = 0.0,
    anchor_ids: Tensor | None = None,
    positive_ids: Tensor | None = None,
    hard_negative_ids: Tensor | None = None,
    mask_margin: float | None = None,
    mask_ratio: float | None = None,
    known_positives: Tensor | None = None,
) -> InfoNCEOutput:
    r"""InfoNCE over in-batch and hard negatives, with false-negative masking; returns loss and counts.

    For anchor a_i with positive p_i, the candidates c are every positive in the batch (in-batch
    negatives) followed by the hard negatives, and

        L_i = -log( exp(s(a_i, p_i)/τ) / Σ_{j unmasked} exp(s(a_i, c_j)/τ) ),   L = mean_i L_i

    (van den Oord et al. 2018; with cosine similarity and scale 1/τ this is sentence-transformers'
    MultipleNegativesRankingLoss). ``symmetric=True`` also scores each positive against all
    anchors (CLIP, Radford et al. 2021) and returns the mean of the two directions; the reverse
    direction has no hard negatives.

    Args:
        anchors: [B, D].
        positives: [B, D]; row i is the positive of anchor i.
        hard_negatives: None; [B, K, D], K per anchor, seen only by their own anchor; or
            [M, D], shared: every anchor sees all M (pass ``h.flatten(0, 1)`` to share per-anchor ones).
        temperature: τ > 0, a float or a 0-dim tensor (a learnable one lives in ``InfoNCELoss``).
        similarity: ``"cosine"``, ``"dot"`` or ``"neg_euclidean"``.
        symmetric: add the positive→anchor direction and average.
        label_smoothing: ε in [0, 1): the target puts 1−ε on the positive and ε spread evenly
            over the row's unmasked candidates, positive included (as ``F.cross_entropy``).
        anchor_ids, positive_ids: integer [B]. Rows i ≠ j that share an anchor id or a positive
            id are not negatives of each other: p_j is masked out of anchor i's candidates.
        hard_negative_ids: integer [B, K] or [M] (the shape of ``hard_negatives`` minus D);
            needs ``positive_ids``. A hard negative whose id equals the row's positive id is masked.
        mask_margin: mask candidates with s(a_i, c_j) > s(a_i, p_i) − margin (near-duplicates of the
            positive, GISTEmbed style). None: off.
        mask_ratio: mask candidates with s(a_i, c_j) > ratio · s(a_i, p_i) (NV-Retriever's
            "percentage of the positive" for cosine; meant for positive similarities). None: off.
        known_positives: bool [B, C] over anchor i's candidates (the B in-batch positives, then
            the hard negatives), True where the training labels say candidate j is relevant to
            anchor i too (a query with several relevant documents: another row's positive, or
            a hard negative mined for another row, may be one of them). Masked like ids and
            counted with them; column i of row i (its own positive) is never masked. None: off.

    Masked candidates get logit −inf: they take no part in the loss and receive no gradient. The
    masks are decided without gradient. The positive itself is never masked.

    Returns:
        ``InfoNCEOutput(loss, num_masked, num_masked_by_id, num_masked_by_similarity, num_candidates)``.

    Example:
        >>> out = info_nce_with_stats(q, d, positive_ids=doc_ids, mask_margin=0.1)
        >>> out.loss.backward(); log(masked=out.num_masked.item())
    """
    hard_negative_mask = _check_inputs(anchors, positives, hard_negatives, temperature, label_smoothing,
                                       anchor_ids, positive_ids, hard_negative_ids, mask_margin, mask_ratio,
                                       known_positives)
    sims = similarity_matrix(anchors, positives, similarity)  # [B, B]
    in_batch_mask = None  # None: nothing masked, and no [B, B] mask built
    if anchor_ids is not None or positive_ids is not None:
        in_batch_mask = in_batch_id_mask(anchor_ids, positive_ids, anchors.shape[0], anchors.device)
    forward_sims, forward_mask = _with_hard_negatives(anchors, sims, in_batch_mask, hard_negatives,
                                                      hard_negative_mask, similarity)
    if known_positives is not None:
        known = known_positives.clone()
        in_batch_known = known[:, :known.shape[0]].fill_diagonal_(False)  # a view: clears known's diagonal too
        forward_mask = known if forward_mask is None else forward_mask | known
        in_batch_mask = in_batch_known if in_batch_mask is None else in_batch_mask | in_batch_known
    directions = [_one_direction(forward_sims, forward_mask, temperature, label_smoothing, mask_margin, mask_ratio)]
    if symmetric:
        # s is symmetric in its two arguments, so positive→anchor scores are the transpose.
        directions.append(_one_direction(sims.T, None if in_batch_mask is None else in_batch_mask.T,
                                         temperature, label_smoothing, mask_margin, mask_ratio))
    loss = torch.stack([d[0] for d in directions]).mean()
    by_id, by_sim, candidates = (sum(d[k] for d in directions) for k in (1, 2, 3))
    return InfoNCEOutput(loss, by_id + by_sim, by_id, by_sim, candidates)


_P = ParamSpec("_P")


def _loss_only(with_stats: Callable[_P, InfoNCEOutput]) -> Callable[_P, Tensor]:
    @functools.wraps(with_stats)
    def loss_only(*args: _P.args, **kwargs: _P.kwargs) -> Tensor:
        return with_stats(*args, **kwargs).loss

    return loss_only


info_nce = _loss_only(info_nce_with_stats)
info_nce.__name__ = info_nce.__qualname__ = "info_nce"
info_nce.__signature__ = (  # type: ignore[attr-defined]
    inspect.signature(info_nce_with_stats).replace(return_annotation="Tensor"))
info_nce.__doc__ = ("InfoNCE loss, a 0-dim tensor: ``info_nce_with_stats(...).loss``, with the same arguments.\n"
                    + (info_nce_with_stats.__doc__ or "").split("\n", 1)[1])


def in_batch_id_mask(anchor_ids: Tensor | None, positive_ids: Tensor | None, batch_size: int,
                     device: torch.device | None = None) -> Tensor:
    """Bool [B, B]: True at (i, j), i ≠ j, when rows i and j share an anchor id or a positive id."""
    mask = torch.zeros(batch_size, batch_size, dtype=torch.bool, device=device)
    for ids in (anchor_ids, positive_ids):
        if ids is not None:
            mask |= ids.unsqueeze(1) == ids.unsqueeze(0)
    return mask.fill_diagonal_(False)


def hard_negative_id_mask(positive_ids: Tensor, hard_negative_ids: Tensor) -> Tensor:
    """Bool [B, K] (ids [B, K]) or [B, M] (ids [M]): True where a hard negative is the row's positive."""
    if hard_negative_ids.dim() == 1:
        hard_negative_ids = hard_negative_ids.unsqueeze(0)  # shared: [1, M], broadcast over rows
    return hard_negative_ids == positive_ids.unsqueeze(1)


def similarity_mask(sims: Tensor, margin: float | None, ratio: float | None) -> Tensor:
    """Bool [B, C]: candidates too similar to the anchor, given ``sims`` [B, C] whose column i is row i's positive."""
    positive = sims.diagonal().unsqueeze(1)  # [B, 1]
    mask = torch.zeros_like(sims, dtype=torch.bool)
    if margin is not None:
        mask |= sims > positive - margin
    if ratio is not None:
        mask |= sims > positive * ratio
    return mask.fill_diagonal_(False)


def _with_hard_negatives(anchors: Tensor, sims: Tensor, in_batch_mask: Tensor | None, hard_negatives: Tensor | None,
                         hard_negative_mask: Tensor | None, similarity: SimilarityKind) -> tuple[Tensor, Tensor | None]:
    """Anchor→candidate similarities [B, B + K] or [B, B + M], and their id mask (None: nothing masked)."""
    if hard_negatives is None:
        return sims, in_batch_mask
    if hard_negatives.dim() == 3:
        hard_sims = rowwise_similarity(anchors, hard_negatives, similarity)  # [B, K]
    else:
        hard_sims = similarity_matrix(anchors, hard_negatives, similarity)  # [B, M]
    if in_batch_mask is None and hard_negative_mask is None:
        return torch.cat([sims, hard_sims], dim=1), None
    mask = torch.cat([_or_nothing_masked(in_batch_mask, sims), _or_nothing_masked(hard_negative_mask, hard_sims)], 1)
    return torch.cat([sims, hard_sims], dim=1), mask


def _one_direction(sims: Tensor, id_mask: Tensor | None, temperature: float | Tensor, label_smoothing: float,
                   mask_margin: float | None, mask_ratio: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Loss of one direction from similarities [B, C] (positive of row i in column i) and an id mask."""
    # Half-precision similarities are scaled by up to 100: take the softmax in float32 at least.
    logits = sims.to(torch.promote_types(sims.dtype, torch.float32)) / temperature
    masked, by_sim = id_mask, None
    if mask_margin is not None or mask_ratio is not None:
        with torch.no_grad():
            by_sim = similarity_mask(sims, mask_margin, mask_ratio)
            if id_mask is not None:
                by_sim &= ~id_mask
        masked = by_sim if id_mask is None else id_mask | by_sim
    if masked is not None:
        logits.masked_fill_(masked, -math.inf)  # a fresh tensor that backward does not need: no B×C copy
    log_probs = logits.log_softmax(dim=1)
    losses = -log_probs.diagonal()
    if label_smoothing > 0:
        if masked is None:
            uniform = -log_probs.mean(1)
        else:
            uniform = -log_probs.masked_fill(masked, 0.0).sum(1) / (~masked).sum(1)
        losses = (1 - label_smoothing) * losses + label_smoothing * uniform
    candidates = sims.new_full((), sims.shape[0] * (sims.shape[1] - 1), dtype=torch.long)  # no host-to-device copy
    return losses.mean(), _count(id_mask, sims), _count(by_sim, sims), candidates


def _or_nothing_masked(mask: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros(like.shape, dtype=torch.bool, device=like.device) if mask is None else mask


def _count(mask: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.long, device=like.device) if mask is None else mask.count_nonzero()


def _check_inputs(anchors: Tensor, positives: Tensor, hard_negatives: Tensor | None,
                  temperature: float | Tensor, label_smoothing: float, anchor_ids: Tensor | None,
                  positive_ids: Tensor | None, hard_negative_ids: Tensor | None,
                  mask_margin: float | None, mask_ratio: float | None,
                  known_positives: Tensor | None = None) -> Tensor | None:
    """Validate the arguments of ``info_nce``; return the hard-negative id mask (or None)."""
    check_embeddings("anchors", anchors)
    check_embeddings("positives", positives)
    if positives.shape != anchors.shape:
        raise ValueError(f"positives must match anchors [B, D]; got {tuple(positives.shape)} "
                         f"and {tuple(anchors.shape)}")
    batch, dim = anchors.shape
    if hard_negatives is not None:
        shape_ok = hard_negatives.dim() == 2 or (hard_negatives.dim() == 3 and hard_negatives.shape[0] == batch)
        if not (shape_ok and hard_negatives.shape[-1] == dim and hard_negatives.is_floating_point()):
            raise ValueError(f"hard_negatives must be [B, K, D] = [{batch}, K, {dim}] or [M, {dim}]; "
                             f"got {tuple(hard_negatives.shape)}")
    if isinstance(temperature, Tensor):
        if temperature.dim() != 0:
            raise ValueError(f"temperature must be a float or a 0-dim tensor; got shape {tuple(temperature.shape)}")
        # a learnable one (InfoNCELoss: exp of a parameter) is > 0 by construction; reading it every
        # step would make the host wait for a GPU
        value = None if temperature.requires_grad else float(temperature)
    else:
        value = temperature
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ValueError(f"temperature must be a finite number > 0; got {value}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}")
    for name, value in (("mask_margin", mask_margin), ("mask_ratio", mask_ratio)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number or None; got {value}")
    for name, ids in (("anchor_ids", anchor_ids), ("positive_ids", positive_ids)):
        if ids is not None:
            check_labels(name, ids, batch)
    if known_positives is not None:
        columns = batch + (0 if hard_negatives is None else hard_negatives.shape[-2])
        if known_positives.dtype != torch.bool or tuple(known_positives.shape) != (batch, columns):
            raise ValueError(f"known_positives must be a bool [B, C] = [{batch}, {columns}] mask over the "
                             f"in-batch positives and hard negatives; got {known_positives.dtype} "
                             f"{tuple(known_positives.shape)}")
    if hard_negative_ids is None:
        return None
    if hard_negatives is None or positive_ids is None:
        raise ValueError("hard_negative_ids needs hard_negatives and positive_ids (a hard negative is "
                         "masked when its id equals its row's positive id)")
    if tuple(hard_negative_ids.shape) != tuple(hard_negatives.shape[:-1]):
        raise ValueError(f"hard_negative_ids must have shape {tuple(hard_negatives.shape[:-1])} "
                         f"(hard_negatives without D); got {tuple(hard_negative_ids.shape)}")
    return hard_negative_id_mask(positive_ids, hard_negative_ids)
