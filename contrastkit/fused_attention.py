"""Packed attention on the CPU in one compiled kernel per pass, bf16 and fp32 (contrastkit/attention_kernel.cpp).

The packed forward's attention (contrastkit/packing.py) otherwise runs as five steps: copy a slab's
q, k, v rows into zero-padded per-head blocks [b, h, T, d], q kᵀ (a batched product), softmax and
dropout (one compiled pass), the product with v, and a copy of the context back into rows; its
backward again writes every [b, h, T, T] block to memory. Here one C++ kernel does each pass per
(text, head), with the text's own length L instead of the slab's width:

    S = scale · q kᵀ          P = softmax(S) by rows          Y = keep · P / (1 - p')          out = Y v
    dY = dout vᵀ     dP = keep · dY / (1 - p')     dS = P ∘ (dP − Σ_row dP ∘ P)
    dv = Yᵀ dout     dq = scale · dS k             dk = scale · dSᵀ q

In bf16 the products run on AVX-512 BF16 dot-product instructions (bf16 inputs, fp32 sums), in fp32
on AVX-512 multiply-adds (CPUs without bf16 arithmetic train in fp32, where the written-out attention
spent about a quarter of a Cranfield step on the products, the softmax, the dropout of the
[b, h, T, T] probabilities and the layout copies; docs/benchmarks.md). The [L, L] scores stay in the
core's cache, q, k, v are read from the packed projection [n, 3D] and the
context written into packed rows [n, D]. As in FlashAttention (Dao et al. 2022) nothing of size
[L, L] is kept for the backward: it recomputes P from each query row's max and 1 / sum, takes
Σ_row dP ∘ P as dout · out (FlashAttention's D; in fp32 as Σ_row Y ∘ dY, the same sum from the row
at hand, where reading each head's 32 columns of the context's long rows was a cache miss a row),
and redraws the dropout mask (`keep`, FastDropout's, the very mask `softmax_dropout` draws for the
slab's padded block from the same seed) from the seed.

The kernel is compiled on first use with the system's C++ compiler (about two seconds) into a cache
folder (`cache.cache_root`: `$CONTRASTKIT_CACHE`, `$XDG_CACHE_HOME/contrastkit` or
`~/.cache/contrastkit`), and loaded with ctypes: no Python headers, no build tool. Where there is no
compiler, the CPU lacks AVX-512 (F, BW, VL, DQ; for bf16 inputs also AVX-512 BF16), or
`CONTRASTKIT_FUSED_ATTENTION=0` is set, the packed forward keeps its written-out attention (same mask,
same results to rounding).

@inproceedings{dao2022flashattention,
  title={FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness},
  author={Tri Dao and Daniel Y. Fu and Stefano Ermon and Atri Rudra and Christopher R{\'e}},
  booktitle={NeurIPS}, year={2022}
}
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from contrastkit.cache import cache_root, is_private, private_folder
from contrastkit.devices import cpu_flags
from contrastkit.dropout_kernels import parallel_ok
from contrastkit.fast_dropout import _unsigned, draw_seed, draws_from_torch, drop_threshold, fused_dropout_p

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("attention_kernel.cpp")
# what the kernels' sources include (from their own folder): part of every build's hash
HEADERS = (Path(__file__).with_name("kernel_common.h"),)
# the bf16 functions get AVX-512 BF16 by a target attribute in the source; they run only where the CPU has it
FLAGS = ("-O3", "-std=c++17", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-fopenmp", "-shared", "-fPIC")
CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})
BF16_FLAG = "avx512_bf16"
MAX_WIDTH = 1024  # the kernel keeps a row's keep bits in 64 groups of 16


def build(source: Path = SOURCE, folder: Path | None = None) -> Path:
    """Compile `source` into a shared library named by the hash of its text, the headers it includes
    (HEADERS) and the flags; return its path.

    A library already there is reused; a new one replaces the builds of earlier versions. It is
    written under a temporary name and renamed into place, so that a process never loads a
    half-written file. Raises RuntimeError where there is no compiler or it fails.
    """
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (c++ or g++) on PATH")
    text = source.read_bytes() + b"".join(header.read_bytes() for header in HEADERS)
    key = hashlib.sha256(text + " ".join(FLAGS).encode() + compiler.encode()).hexdigest()[:16]
    folder = private_folder(folder or cache_root())  # a library there runs in this process: this user's alone
    target = folder / f"{source.stem}-{key}.so"
    if target.exists() and is_private(target):
        return target
    target.unlink(missing_ok=True)  # not this user's own: built again
    handle, partial = tempfile.mkstemp(dir=folder, suffix=".so.partial")
    os.close(handle)
    try:
        includes = [f"-I{place}" for place in dict.fromkeys(header.parent for header in HEADERS)]
        done = subprocess.run([compiler, *FLAGS, *includes, "-o", partial, str(source)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {source.name}: {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)
        for stale in folder.glob(f"{source.stem}-*.so"):  # builds of earlier versions of the source
            if stale != target:
                stale.unlink(missing_ok=True)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, i64, i32, f32, u64, u16 = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float,
                                        ctypes.c_uint64, ctypes.c_uint16)
    library.attention_forward.argtypes = [pointer, i64, pointer, pointer, i32, i32, i32, f32, u64, u16, f32, i32,
                                          pointer, pointer, i64]
    library.attention_backward.argtypes = [pointer, pointer, pointer, pointer, i64, pointer, pointer, i32, i32, i32,
                                           f32, u64, u16, f32, i32, pointer, i64]
    # the fp32 passes take the projection's bias (or null) and, backward, where its column sums go
    library.attention_forward_f32.argtypes = library.attention_forward.argtypes + [pointer]
    library.attention_backward_f32.argtypes = library.attention_backward.argtypes + [pointer, pointer]
    library.attention_keep_mask.argtypes = [i64, u64, u16, pointer]
    for function in (library.attention_forward, library.attention_backward, library.attention_forward_f32,
                     library.attention_backward_f32, library.attention_keep_mask):
        function.restype = None
    return library


def switched_on(variable: str) -> bool:
    """False where the environment variable `variable` is 0 / false / no (read at every call)."""
    return os.environ.get(variable, "1").strip().lower() not in ("0", "false", "no")


def load(source: Path, declare: Callable[[ctypes.CDLL], ctypes.CDLL], fallback: str) -> ctypes.CDLL | None:
    """`source` built (`build`) and loaded with its functions declared, or None where this CPU lacks
    AVX-512 or it does not build (logged with what runs instead, `fallback`)."""
    if not CPU_FLAGS <= cpu_flags():
        return None
    try:
        built = build(source)
        try:
            return declare(ctypes.CDLL(str(built)))
        except (OSError, AttributeError):  # a cached build that does not load or lacks a function: once again
            built.unlink(missing_ok=True)
            return declare(ctypes.CDLL(str(build(source))))
    except (RuntimeError, OSError, AttributeError) as exc:
        log.warning("%s not available, using %s: %s", source.name, fallback, exc)
        return None


def enabled() -> bool:
    """False where CONTRASTKIT_FUSED_ATTENTION is 0 / false / no (read at every call)."""
    return switched_on("CONTRASTKIT_FUSED_ATTENTION")


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None where this CPU lacks AVX-512 or it does not build; built once."""
    return load(SOURCE, _declare, "the written-out attention")


# the dtypes the kernel computes in, and the head sizes it takes in each (bf16 multiplies pairs of
# values in 16 lanes, fp32 single values)
HEAD_MULTIPLE = {torch.bfloat16: 32, torch.float32: 16}


def computes_in(dtype: torch.dtype) -> bool:
    """Whether the kernel runs on `dtype` here: bf16 needs AVX-512 BF16 as well, fp32 AVX-512 alone."""
    if dtype not in HEAD_MULTIPLE or library() is None:
        return False
    return dtype != torch.bfloat16 or BF16_FLAG in cpu_flags()


def _address(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _threads() -> int:
    # one thread in a forked child: OpenMP's pool from the parent does not survive a fork
    return torch.get_num_threads() if parallel_ok() else 1


def keep_mask(shape: tuple[int, int, int, int], p: float, seed: int) -> Tensor:
    """The kernel's dropout mask for a slab's padded [b, h, W, W] block (True = kept), for tests."""
    keep = torch.empty(shape, dtype=torch.uint8)
    library().attention_keep_mask(keep.numel(), _unsigned(seed), drop_threshold(p)[0], _address(keep))
    return keep.bool()


def _passes(dtype: torch.dtype):
    """(forward, backward) of the kernel for `dtype`."""
    kernel = library()
    if dtype == torch.bfloat16:
        return kernel.attention_forward, kernel.attention_backward
    return kernel.attention_forward_f32, kernel.attention_backward_f32


def _pointer(t: Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else _address(t)


class _PackedAttention(torch.autograd.Function):
    """qkv [n, 3D] bf16 or fp32 (packed rows of texts laid end to end) → context [n, D], the same dtype; one
    kernel call per slab (its texts' starts and lengths among the n rows, its width, its seed). fp32
    only: `bias` [3D] (or None), the projection's bias, which the kernel adds to qkv's rows as it reads
    them and whose gradient it sums."""

    @staticmethod
    def forward(ctx, qkv: Tensor, bias: Tensor | None, slabs: tuple[tuple[Tensor, Tensor, int, int], ...],  # type: ignore[override]
                heads: int, scale: float, p: float) -> Tensor:
        n, head_size = qkv.shape[0], qkv.shape[1] // (3 * heads)
        threshold, keep_probability = drop_threshold(p)
        context = qkv.new_empty(n, heads * head_size)
        stats = torch.empty(2, heads, n, dtype=torch.float32)
        forward = _passes(qkv.dtype)[0]
        extra = (_pointer(bias),) if qkv.dtype == torch.float32 else ()
        for starts, lengths, width, seed in slabs:
            forward(_address(qkv), len(lengths), _address(starts), _address(lengths), heads, head_size, width, scale,
                    _unsigned(seed), threshold, 1.0 / keep_probability, _threads(), _address(context), _address(stats),
                    n, *extra)
        ctx.save_for_backward(qkv, stats, context, bias)
        ctx.slabs, ctx.heads, ctx.scale, ctx.p = slabs, heads, scale, p
        return context

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        qkv, stats, context, bias = ctx.saved_tensors
        grad = grad.to(qkv.dtype).contiguous()
        threshold, keep_probability = drop_threshold(ctx.p)
        grad_qkv = torch.empty_like(qkv)
        backward = _passes(qkv.dtype)[1]
        # every (text, head) writes its own columns of its text's row: nothing left unwritten
        sums = None if bias is None else qkv.new_empty(sum(len(lengths) for _, lengths, _, _ in ctx.slabs),
                                                       qkv.shape[1])
        first = 0
        for starts, lengths, width, seed in ctx.slabs:
            extra = ((_pointer(bias), _pointer(None if sums is None else sums[first:]))
                     if qkv.dtype == torch.float32 else ())
            backward(_address(qkv), _address(context), _address(grad), _address(stats), len(lengths), _address(starts),
                     _address(lengths), ctx.heads, qkv.shape[1] // (3 * ctx.heads), width, ctx.scale, _unsigned(seed),
                     threshold, 1.0 / keep_probability, _threads(), _address(grad_qkv), qkv.shape[0], *extra)
            first += len(lengths)
        return grad_qkv, None if sums is None else sums.sum(0), None, None, None, None


def runs_in(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether the packed forward of `model` computing in `dtype` takes the kernel here: a BERT encoder the
    packed forward takes (contrastkit.packing.can_pack), heads of a multiple of 32 dimensions in bf16 (16 in
    fp32), attention dropout the kernel draws (FastDropout, or none), and the kernel built for this CPU
    and dtype."""
    from contrastkit.packing import can_pack  # packing imports this module

    if not can_pack(model) or dtype not in HEAD_MULTIPLE:
        return False
    config = model.config
    droppers = [layer.attention.self.dropout for layer in model.encoder.layer]
    return ((config.hidden_size // config.num_attention_heads) % HEAD_MULTIPLE[dtype] == 0
            and all(isinstance(d, nn.Dropout) and not draws_from_torch(d) for d in droppers)
            and enabled() and computes_in(dtype))


def applies(qkv: Tensor, heads: int, width: int, dropout: nn.Module) -> bool:
    """Whether `packed_attention` runs for these inputs (else the caller keeps its own attention)."""
    return qkv.dim() == 2 and applies_to(qkv.dtype, qkv.device, qkv.shape[1], heads, width, dropout)


def applies_to(dtype: torch.dtype, device: torch.device, columns: int, heads: int, width: int,
               dropout: nn.Module) -> bool:
    """`applies` for a projection not yet computed: rows [n, columns] of `dtype` on `device`."""
    return (dtype in HEAD_MULTIPLE and device.type == "cpu" and columns % (3 * heads) == 0
            and (columns // (3 * heads)) % HEAD_MULTIPLE[dtype] == 0 and width <= MAX_WIDTH
            and fused_dropout_p(dropout) is not None and enabled() and computes_in(dtype))


def packed_attention(qkv: Tensor, slabs: Sequence[tuple[Tensor, Tensor, int]], heads: int, scale: float,
                     dropout: nn.Module, bias: Tensor | None = None) -> Tensor:
    """Multi-head attention of each text over its own tokens, with `dropout` on the probabilities.

    qkv [n, 3D] bf16 or fp32: the fused q, k, v projection of n packed rows; slabs: (starts, lengths,
    width) of each slab among those rows: text i of a slab starts at row starts[i] and has lengths[i]
    rows (int64 tensors), and the slab's padded width W indexes its dropout mask as the padded block
    [b, heads, W, W] (each slab draws a seed of its own, in order). bias [3D] (fp32 only): the
    projection's bias, when qkv holds the product without it: the kernel adds it as it reads the rows
    (no pass of its own over [n, 3D]) and sums its gradient. Returns the context [n, D] in qkv's
    dtype; rows of no text are left unwritten. Check `applies` with the widest slab first; texts
    that leave the rows or their width are refused here, before the C++ code could read or write past
    them.
    """
    if not slabs or not applies(qkv, heads, max(width for _, _, width in slabs), dropout):
        raise ValueError("packed_attention does not apply to these inputs (see fused_attention.applies)")
    if bias is not None and (qkv.dtype != torch.float32 or bias.dtype != torch.float32
                             or tuple(bias.shape) != (qkv.shape[1],) or bias.device.type != "cpu"):
        raise ValueError(f"bias must be fp32 [{qkv.shape[1]}] on the CPU beside fp32 q, k, v rows, got "
                         f"{bias.dtype} {tuple(bias.shape)} beside {qkv.dtype} rows")
    p = fused_dropout_p(dropout)
    checked = []
    for starts, lengths, width in slabs:
        starts, lengths = starts.to("cpu", torch.int64).contiguous(), lengths.to("cpu", torch.int64).contiguous()
        if starts.shape != lengths.shape or starts.dim() != 1 or len(lengths) == 0:
            raise ValueError(f"starts and lengths need one entry per text, got {tuple(starts.shape)} and "
                             f"{tuple(lengths.shape)}")
        first, count = starts.numpy(), lengths.numpy()  # a few numbers: numpy, not torch ops, for the checks
        if count.min() < 1 or count.max() > width or first.min() < 0 or (first + count).max() > qkv.shape[0]:
            raise ValueError(f"texts must have 1 to width = {width} tokens inside the {qkv.shape[0]} rows, got "
                             f"starts {starts.tolist()[:8]}, lengths {lengths.tolist()[:8]}")
        checked.append((starts, lengths, int(width), draw_seed() if p > 0.0 else 0))
    return _PackedAttention.apply(qkv.contiguous(), None if bias is None else bias.contiguous(), tuple(checked),
                                  heads, float(scale), p)
