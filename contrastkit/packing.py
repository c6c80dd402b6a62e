"""Packed (unpadded) forward of a BERT encoder: the dense layers see only real tokens.

A padded batch [B, T] runs every matrix multiply over B · T positions, padding included. Here the
texts' tokens are laid end to end ([N, D], N = the real token count) for the embeddings, the
feed-forward and projection layers, layer norms and dropout, the way unpadded BERT kernels do it
(Zeng et al. 2022, "Boosting Distributed Training Performance of the Unpadded BERT Model"; FlashAttention's
varlen path). Only attention works text by text, a slab of similar-length texts at a time. In bf16 on a
CPU with AVX-512 BF16 one C++ kernel per pass does a slab's attention straight from the packed q, k, v
rows into packed context rows, each text over its own tokens (contrastkit/fused_attention.py). Elsewhere
each slab is copied into zero-padded per-head blocks [b, h, T, d] for attention and its output back
into rows (one compiled copy each way on the CPU, contrastkit/layout_kernels.py), and on the CPU the
attention is written out (`written_out_attention`) instead of PyTorch's fused kernel in two cases:
with dropout on the attention probabilities and the trainer's CPU dropout (contrastkit.fast_dropout),
where PyTorch's kernel would run its unfused path and draw the mask with its slower `bernoulli_`; and
in bf16 (bf16 autocast included), where PyTorch's fused CPU kernel ran 2-8x slower than the
written-out products (forward and backward, contrastkit/eager_attention.py).

Texts are sorted longest first and cut into slabs of at most `slab_tokens` padded positions
(b · T ≤ slab_tokens), so that attention pads little and a padded slab's blocks stay small enough
for the CPU's caches (bigger slabs ran slower on the 2-core CPU here). Consecutive slabs are then
joined into groups of at most `dense_tokens` real tokens: the dense layers, layer norms and dropout
take a group's rows in one call each, and attention runs slab by slab inside it (one kernel call
for all of a group's slabs where the fused kernel runs).

The result equals the model's padded forward (to float rounding, tests/test_packing.py) and its
gradients flow to the same parameters, so what is trained and saved is the unchanged Hugging Face
model. Supported: `transformers.BertModel` as an encoder (absolute positions, no decoder, no
feed-forward chunking, no activation checkpointing), which covers BERT-architecture checkpoints such
as all-MiniLM-L6-v2, bge-*-en-v1.5 and e5-*-v2; any other model takes its own padded forward
(`can_pack`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from contrastkit import fused_attention
from contrastkit.fast_dropout import FastDropout, compiled_loop, kernels
from contrastkit.fast_gelu import linear_gelu
from contrastkit.fast_layer_norm import dense_dropout_add_layer_norm
from contrastkit.fast_linear import linear
from contrastkit.fast_softmax import key_padding, softmax_dropout

# padded positions per slab; in a round-robin of forward + backward on 64 debian pairs (docs/training.md)
# 1,024-4,096 ran within 4 % of each other, 512 and one slab for the whole batch 7-9 % slower
SLAB_TOKENS = 2048
# real tokens the dense layers take at once (consecutive slabs joined, `Group`): on the Xeon here
# Cranfield batch-32 fp32 steps ran 1-2 % faster with each stream's ~2,300 tokens in one product than
# in two slabs' (docs/training.md, "The packed forward"; not measured on the Zen 5); 4,096 fp32 rows of
# the feed-forward's 1,536 columns are 25 MB
DENSE_TOKENS = 4096


def can_pack(model: nn.Module) -> bool:
    """True when `model` is a BERT encoder whose forward `packed_hidden_states` reproduces."""
    from transformers import BertModel

    config = getattr(model, "config", None)
    return (type(model) is BertModel
            and not getattr(config, "is_decoder", False)
            and not getattr(config, "add_cross_attention", False)
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
            and not getattr(config, "chunk_size_feed_forward", 0)
            and not _checkpointing(model))


def _checkpointing(model: nn.Module) -> bool:
    """Activation (gradient) checkpointing is on: the packed path would ignore it, so it must not run."""
    flag = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x; the old name warns
    return bool(getattr(model, "is_gradient_checkpointing", False) if flag is None else flag)


@dataclass
class Slab:
    """Consecutive texts of the packed order: their tokens are rows [first, last) of the packed tensor."""

    first: int
    last: int
    lengths: Tensor   # [b] token counts, longest first
    width: int        # T: the longest text of the slab
    slots: Tensor     # [n] where each real token sits in the slab's flattened [b · T] padded block
    key_mask: Tensor  # [b, 1, 1, T] True at real tokens
    sizes: tuple[int, ...]  # the texts' token counts (`lengths`) as Python ints
    starts: Tensor    # [b] where each text's rows begin among the slab's packed rows


@dataclass
class Group:
    """Consecutive slabs whose rows [first, last) of the packed tensor the dense layers take at once;
    attention still runs slab by slab."""

    first: int
    last: int
    slabs: list[Slab]
    spans: list[tuple[Tensor, Tensor, int]]  # each slab's (texts' starts among the group's rows, lengths, width)


@dataclass
class PackPlan:
    """Where every token of a list of texts goes when packed; built once per call, no weights involved."""

    input_ids: Tensor       # [N] all real tokens, texts longest first, end to end
    token_type_ids: Tensor  # [N]
    position_ids: Tensor    # [N] each token's position within its own text
    slabs: list[Slab]
    order: Tensor           # [n_texts] packed position k holds text order[k]
    groups: list[Group]     # the slabs, joined up to `dense_tokens` real tokens


def group_slabs(slabs: Sequence[Slab], dense_tokens: int | None = None) -> list[Group]:
    """Consecutive slabs joined while their real tokens total at most `dense_tokens` (a larger slab alone;
    None: the module's DENSE_TOKENS, read at the call, so that setting it takes effect).

    A slab's padded block bounds attention's work and memory; the dense layers see no padding and run
    as well or better on more rows: one product per layer instead of one per slab, and one weight
    gradient to add into `.grad` instead of one per slab.
    """
    dense_tokens = DENSE_TOKENS if dense_tokens is None else dense_tokens
    groups: list[list[Slab]] = []
    for slab in slabs:
        if groups and slab.last - groups[-1][0].first <= dense_tokens:
            groups[-1].append(slab)
        else:
            groups.append([slab])
    return [Group(g[0].first, g[-1].last, g,
                  [(s.starts + (s.first - g[0].first) if s.first != g[0].first else s.starts, s.lengths, s.width)
                   for s in g])
            for g in groups]


def plan_packing(input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]] | None = None,
                 slab_tokens: int | None = None, dense_tokens: int | None = None) -> PackPlan:
    """Sort texts longest first, lay their tokens end to end, cut slabs of ≤ slab_tokens padded positions
    and join consecutive slabs into groups of ≤ dense_tokens real tokens (`group_slabs`).

    A text longer than slab_tokens gets a slab of its own. None takes the module's SLAB_TOKENS and
    DENSE_TOKENS as they are at the call (setting them changes every later plan).
    """
    slab_tokens = SLAB_TOKENS if slab_tokens is None else slab_tokens
    if not input_ids:
        raise ValueError("nothing to pack: no texts")
    lengths = [len(ids) for ids in input_ids]
    if min(lengths) < 1:
        raise ValueError("cannot pack a text of zero tokens")
    order = np.argsort([-n for n in lengths], kind="stable")
    sorted_lengths = [lengths[i] for i in order]
    flat_ids = [t for i in order for t in input_ids[i]]
    flat_types = [t for i in order for t in token_type_ids[i]] if token_type_ids is not None else [0] * len(flat_ids)
    positions = np.concatenate([np.arange(n) for n in sorted_lengths])

    slabs, start, first = [], 0, 0
    while start < len(sorted_lengths):
        width = sorted_lengths[start]  # the longest of the slab: texts are sorted longest first
        end = start + max(1, slab_tokens // width)
        lengths_t = torch.tensor(sorted_lengths[start:end])
        real = torch.arange(width)[None, :] < lengths_t[:, None]  # [b, T]
        slots = torch.arange(real.numel()).view(real.shape)[real]
        sizes = tuple(sorted_lengths[start:end])
        starts = torch.as_tensor(np.cumsum((0,) + sizes[:-1]), dtype=torch.int64)
        slabs.append(Slab(first, first + sum(sizes), lengths_t, width, slots, real[:, None, None, :], sizes, starts))
        start, first = end, first + sum(sizes)
    return PackPlan(torch.tensor(flat_ids), torch.tensor(flat_types), torch.as_tensor(positions), slabs,
                    torch.as_tensor(order), group_slabs(slabs, dense_tokens))


def _padded_block(rows: Tensor, sizes: Sequence[int]) -> Tensor:
    """rows [n, C] of texts of `sizes` rows laid end to end, longest first → their zero-padded [b · T, C] block.

    Text i's rows land at [i · T, i · T + sizes[i]), T = sizes[0]. By `pad_sequence` (a copy per
    text): 3.4x faster than scattering rows with `index_copy_` and zeroing the rest with
    `index_fill_` (a slab of 25 texts of 20-79 tokens, 1,152 bf16 columns: 140 against 480 µs).
    """
    return pad_sequence(rows.split(list(sizes)), batch_first=True).view(-1, rows.shape[1])


def _words(t: Tensor, unit: int) -> np.ndarray:
    """A contiguous CPU tensor's memory as a flat numpy array of `unit`-byte unsigned integers."""
    signed = {2: torch.int16, 4: torch.int32, 8: torch.int64}[unit]
    return t.detach().reshape(-1).view(torch.uint8).view(signed).numpy().view(kernels("layout_kernels").BITS[unit])


def _unit(rows: Tensor, head_size: int, *others: Tensor) -> int:
    """The widest word (8, 4 or 2 bytes) that a row, a head's columns and where each tensor starts are whole
    numbers of (0: none, or not a CPU tensor)."""
    size = rows.element_size()
    starts = [t.storage_offset() * size for t in (rows, *others)]
    for unit in (8, 4, 2):
        if (head_size * size) % unit == 0 and (rows.shape[1] * size) % unit == 0 and all(s % unit == 0 for s in starts):
            return unit if rows.device.type == "cpu" else 0
    return 0


def _to_heads(rows: Tensor, offset: int, slab: Slab, heads: int, head_size: int) -> Tensor:
    """Columns [offset, offset + heads · head_size) of a slab's packed rows [n, C] → [b, heads, T, head_size],
    zero-padded (contrastkit/layout_kernels.py; on other devices by pad_sequence and a strided copy)."""
    b, width, columns, size = len(slab.sizes), slab.width, rows.shape[1], rows.element_size()
    rows = rows.contiguous()
    unit = _unit(rows, head_size)
    if not unit:
        part = rows[:, offset:offset + heads * head_size]
        return _padded_block(part, slab.sizes).view(b, width, heads, head_size).transpose(1, 2).contiguous()
    out = rows.new_empty(b, heads, width, head_size)
    per = unit // size  # elements per word
    compiled_loop("layout_kernels", "to_heads")(
        _words(rows, unit), columns // per, offset // per, slab.starts.numpy(), slab.lengths.numpy(), heads, width,
        head_size // per, _words(out, unit))
    return out


def _from_heads(blocks: Tensor, rows: Tensor, offset: int, slab: Slab) -> None:
    """The inverse: blocks [b, heads, T, head_size]'s real positions into columns [offset, offset + heads ·
    head_size) of the packed rows [n, C], in place (the padding is dropped)."""
    b, heads, width, head_size = blocks.shape
    columns, size = rows.shape[1], rows.element_size()
    blocks = blocks.contiguous()
    unit = _unit(rows, head_size, blocks) if rows.is_contiguous() else 0
    if not unit:
        rows[:, offset:offset + heads * head_size] = (
            blocks.transpose(1, 2).reshape(b * width, heads * head_size).index_select(0, slab.slots))
        return
    per = unit // size
    compiled_loop("layout_kernels", "from_heads")(
        _words(blocks, unit), columns // per, offset // per, slab.starts.numpy(), slab.lengths.numpy(), heads, width,
        head_size // per, _words(rows, unit))


class _PackedToHeads(torch.autograd.Function):
    """A fused projection's packed rows [n, parts · D] → `parts` tensors [b, heads, T, head_size] (q, k, v).

    One copy each way (the backward writes each part's gradient into its columns of one [n, parts · D]
    gradient), where the padded block, an unbind and three strided copies took four forward and the
    stack of the three gradients and a gather two backward.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, slab: Slab, parts: int, heads: int,  # type: ignore[override]
                head_size: int) -> tuple[Tensor, ...]:
        ctx.slab, ctx.shape = slab, rows.shape
        return tuple(_to_heads(rows, i * heads * head_size, slab, heads, head_size) for i in range(parts))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor):  # type: ignore[override]
        given = [g for g in grads if g is not None]  # autograd calls this only when one part has a gradient
        # every column written when every part has its gradient; the columns of a part without one are 0
        grad_rows = given[0].new_empty(ctx.shape) if len(given) == len(grads) else given[0].new_zeros(ctx.shape)
        for i, grad in enumerate(grads):
            if grad is not None:
                _from_heads(grad, grad_rows, i * grad.shape[1] * grad.shape[3], ctx.slab)
        return grad_rows, None, None, None, None


class _HeadsToPacked(torch.autograd.Function):
    """Attention's output [b, heads, T, head_size] → the slab's packed rows [n, heads · head_size]."""

    @staticmethod
    def forward(ctx, blocks: Tensor, slab: Slab) -> Tensor:  # type: ignore[override]
        b, heads, width, head_size = blocks.shape
        ctx.slab, ctx.heads, ctx.head_size = slab, heads, head_size
        rows = blocks.new_empty(slab.last - slab.first, heads * head_size)
        _from_heads(blocks, rows, 0, slab)
        return rows

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _to_heads(grad, 0, ctx.slab, ctx.heads, ctx.head_size), None


def _fused_qkv(layer: nn.Module) -> tuple[Tensor, Tensor]:
    """The layer's query, key and value projections stacked into one [3D, D] weight and [3D] bias."""
    attention = layer.attention.self
    return (torch.cat([attention.query.weight, attention.key.weight, attention.value.weight]),
            torch.cat([attention.query.bias, attention.key.bias, attention.value.bias]))


def written_out_attention(q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor, dropout: nn.Module,
                          scale: float) -> Tensor:
    """Scaled dot-product attention with dropout on the probabilities (Vaswani et al. 2017):

        A = dropout(softmax(s · q kᵀ, keys past the text's length at -inf)),    out = A v

    q, k, v [b, h, T, d]; key_lengths [b] the texts' real tokens (keys [key_lengths[i], T) of text i
    are padding); `dropout` the layer's own module (an identity out of training or at p = 0). The math
    of PyTorch's unfused path, for the two cases its fused CPU kernel does badly: dropout drawn by the
    trainer's FastDropout (torch's `bernoulli_` on the [b, h, T, T] probabilities took 9 % of a
    Cranfield batch-32 step, more than the attention's matrix multiplies, bench/profile_step.py), and
    bf16 inputs (the fused kernel's bf16 path took 2-8x as long, forward and backward, at MiniLM's
    shapes on the Zen 5 here; bench/attention_kernel.py). In bf16 the scale, the padding keys, the
    softmax and FastDropout's mask are one compiled pass over q kᵀ (contrastkit/fast_softmax.py).
    """
    b, h, width, d = q.shape
    p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
    fused_pass = (q.dtype == torch.bfloat16 and q.device.type == "cpu" and isinstance(dropout, nn.Dropout)
                  and (p == 0.0 or isinstance(dropout, FastDropout)))
    if fused_pass:
        # a plain product: the pass scales it and skips the padding keys, where a baddbmm adding a
        # -inf bias first copied the bias broadcast to the whole [b · h, T, T] block (7.5 ms of a
        # Cranfield batch-32 step, docs/benchmarks.md)
        scores = torch.bmm(q.reshape(b * h, width, d), k.reshape(b * h, width, d).transpose(1, 2))
        return torch.matmul(softmax_dropout(scores.view(b, h, width, width), p, alpha=scale,
                                            key_lengths=key_lengths), v)
    # padding keys get -inf added (every text has a real token, so no row is empty): an added
    # constant's backward passes the gradient as it is, where masked_fill's would mask it again
    # (softmax's gradient is already 0 there). One baddbmm scales q kᵀ and adds the bias: no pass of
    # its own over the [b, h, T, T] scores (fp32 Cranfield batch 32: 1.29 against 1.32 s a step)
    key_bias = torch.zeros(b, 1, 1, width, dtype=q.dtype, device=q.device).masked_fill_(
        key_padding(key_lengths.to(q.device), width)[:, None, None, :], float("-inf"))
    scores = torch.baddbmm(key_bias.expand(b, h, 1, width).reshape(b * h, 1, width), q.reshape(b * h, width, d),
                           k.reshape(b * h, width, d).transpose(1, 2), alpha=scale)
    return torch.matmul(dropout(torch.softmax(scores.view(b, h, width, width), dim=-1)), v)


def _slab_attention(attention: nn.Module, qkv: Tensor, slab: Slab) -> Tensor:
    """Self-attention of one slab's texts from their fused projection's rows [n, 3D] → [n, D], by way of the
    zero-padded per-head blocks."""
    heads, head_size = attention.num_attention_heads, attention.attention_head_size
    q, k, v = _PackedToHeads.apply(qkv, slab, 3, heads, head_size)
    dropout = attention.dropout.p if attention.training else 0.0
    fast_masks = dropout > 0.0 and isinstance(attention.dropout, FastDropout)
    if qkv.device.type == "cpu" and (fast_masks or q.dtype == torch.bfloat16):
        out = written_out_attention(q, k, v, slab.lengths, attention.dropout, attention.scaling)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=slab.key_mask, dropout_p=dropout,
                                             scale=attention.scaling)
    return _HeadsToPacked.apply(out, slab)


def _attention(layer: nn.Module, qkv_weights: tuple[Tensor, Tensor], x: Tensor, group: Group) -> Tensor:
    """BertAttention's self-attention on a group's packed rows: [n, D] → [n, D] (before the output projection);
    each slab's texts attend within the slab."""
    attention = layer.attention.self
    heads = attention.num_attention_heads
    weight, bias = qkv_weights
    width = group.slabs[0].width  # slabs go longest first
    if (x.dtype == weight.dtype == bias.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type)
            and fused_attention.applies_to(torch.float32, x.device, weight.shape[0], heads, width, attention.dropout)):
        # fp32 on the kernel: it adds the bias as it reads q, k, v (no copy of the bias into the product's
        # output) and sums the bias's gradient (no pass of its own over the [n, 3D] gradient)
        return fused_attention.packed_attention(linear(x, weight), group.spans, heads, attention.scaling,
                                                attention.dropout, bias=bias)
    qkv = linear(x, weight, bias)
    if fused_attention.applies(qkv, heads, width, attention.dropout):
        return fused_attention.packed_attention(qkv, group.spans, heads, attention.scaling, attention.dropout)
    if len(group.slabs) == 1:
        return _slab_attention(attention, qkv, group.slabs[0])
    rows = qkv.split([slab.last - slab.first for slab in group.slabs])  # its backward: one cat of the parts
    return torch.cat([_slab_attention(attention, r, slab) for r, slab in zip(rows, group.slabs)])


def _layer(layer: nn.Module, qkv_weights: tuple[Tensor, Tensor], x: Tensor, group: Group) -> Tensor:
    """One BertLayer on a group's packed rows [n, D]: attention block, then feed-forward block, post-norm.

    Each block's exit, LayerNorm(dropout(out) + x), and the feed-forward's bias + GELU are one
    compiled pass each on the CPU under bf16 autocast (contrastkit/fast_layer_norm.py, fast_gelu.py)
    and in fp32 (with the output projection's bias; contrastkit/fused_layer.py), and exactly those
    compositions otherwise.
    """
    out = layer.attention.output
    x = dense_dropout_add_layer_norm(_attention(layer, qkv_weights, x, group), out.dense, x, out.LayerNorm,
                                     out.dropout)
    hidden = linear_gelu(x, layer.intermediate.dense, layer.intermediate.intermediate_act_fn)
    out = layer.output
    return dense_dropout_add_layer_norm(hidden, out.dense, x, out.LayerNorm, out.dropout)


def embed_tokens(word: nn.Embedding, ids: Tensor) -> Tensor:
    """word(ids); in training, its weight's gradient added as sparse rows when `.grad` is already there.

    The dense gradient of an embedding lookup is a zeroed [V, D] tensor with the looked-up rows added
    (47 MB for MiniLM's 30,522 × 384), allocated, filled and then added into `.grad` at every backward:
    every group of a step, every chunk of the gradient cache. Where the weight already holds a dense
    `.grad` (the trainer keeps it, zeroed in place: `sparse_gradient_parameters`; or an earlier
    backward of the same step left it), the lookup's gradient is sparse and autograd adds its rows
    into that `.grad`: the same sum, without the [V, D] temporary (docs/training.md). Without a
    `.grad` the gradient stays dense: a sparse one would become `.grad`, which AdamW refuses.
    """
    weight = word.weight
    sparse = (torch.is_grad_enabled() and weight.requires_grad and weight.grad is not None
              and weight.grad.layout == torch.strided and word.max_norm is None)
    if not sparse:
        return word(ids)
    return F.embedding(ids, weight, word.padding_idx, scale_grad_by_freq=word.scale_grad_by_freq, sparse=True)


def sparse_gradient_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters whose gradient the packed forward adds sparsely (`embed_tokens`): the word embeddings."""
    return [model.embeddings.word_embeddings.weight] if can_pack(model) else []


def packed_hidden_states(model: nn.Module, plan: PackPlan) -> Tensor:
    """The last hidden state of every real token, packed: [N, D] in `plan`'s order (texts longest first)."""
    device = model.embeddings.word_embeddings.weight.device
    embeddings = model.embeddings
    ids, types, positions = (t.to(device) for t in (plan.input_ids, plan.token_type_ids, plan.position_ids))
    x = (embed_tokens(embeddings.word_embeddings, ids) + embeddings.token_type_embeddings(types)
         + embeddings.position_embeddings(positions))
    x = embeddings.dropout(embeddings.LayerNorm(x))
    # stacked once per call, not per slab; under autocast also cast once, as autocast casts the other
    # (leaf) weights once per autocast region, where it would cast the stacked one again for every slab
    cast = torch.get_autocast_dtype("cpu") if device.type == "cpu" and torch.is_autocast_enabled("cpu") else None
    layers = [(layer, tuple(t.to(cast) for t in _fused_qkv(layer)) if cast else _fused_qkv(layer))
              for layer in model.encoder.layer]
    outputs = []
    for group in plan.groups:
        for slab in group.slabs:
            if slab.slots.device != device:
                slab.slots, slab.key_mask = slab.slots.to(device), slab.key_mask.to(device)
        h = x[group.first:group.last]
        for layer, qkv_weights in layers:
            h = _layer(layer, qkv_weights, h, group)
        outputs.append(h)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def packed_pool(hidden: Tensor, plan: PackPlan, mode: str) -> Tensor:
    """Pool packed token states [N, D] into one row per text [n_texts, D], in the texts' original order.

    mean: Σ_t h_t / length (Reimers & Gurevych 2019); cls: the first token; last: the last token.
    """
    lengths = torch.cat([slab.lengths for slab in plan.slabs]).to(hidden.device)
    ends = lengths.cumsum(0)
    if mode == "mean":
        text_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=hidden.device), lengths)
        pooled = hidden.new_zeros(len(lengths), hidden.shape[1]).index_add_(0, text_of_token, hidden)
        pooled = pooled / lengths[:, None].to(hidden.dtype)
    elif mode == "cls":
        pooled = hidden[ends - lengths]
    elif mode == "last":
        pooled = hidden[ends - 1]
    else:
        raise ValueError(f"unknown pooling mode {mode!r}")
    return pooled[torch.argsort(plan.order.to(hidden.device))]
