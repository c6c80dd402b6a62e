"""Moving tensors to the device without making the host wait for it; whether it computes in bf16.

On a GPU a training step of a small model is bound by the host (Python, kernel launches), not by
the arithmetic: the host runs ahead and queues work while the device computes. Anything that makes
the host wait until the device has run all it was given (a blocking copy from ordinary host
memory, indexing a GPU tensor with CPU indices, reading a GPU number into Python) costs that
overlap. bench/gpu_step_profile.py lists where a step still waits.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# the x86 CPU flags of instructions that multiply bf16 numbers (AVX-512 BF16's dot product, AMX tiles)
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """`tensor` on `device`; from the CPU to a GPU through pinned memory, without waiting.

    A plain copy from ordinary (pageable) host memory waits until the GPU has run everything
    queued before it. The pinned buffer lives until the copy is done (torch's caching host
    allocator records it on the stream).
    """
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def index_on(indices: np.ndarray | list[int], device: torch.device) -> Tensor:
    """Integer indices as a tensor on `device`, to index a tensor there (CPU indices would make a GPU wait)."""
    return to_device(torch.as_tensor(np.asarray(indices, dtype=np.int64)), device)


def _cpuinfo_value(keys: tuple[str, ...], cpuinfo: Path) -> str | None:
    """The value of the first /proc/cpuinfo line whose key is in `keys` (None where there is none)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


@functools.lru_cache(maxsize=1)
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is not there)."""
    return frozenset((_cpuinfo_value(("flags", "Features"), cpuinfo) or "").split())


@functools.lru_cache(maxsize=1)
def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's vendor as Linux names it ("GenuineIntel", "AuthenticAMD"; empty where unknown)."""
    return _cpuinfo_value(("vendor_id",), cpuinfo) or ""


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware, so that bf16 autocast makes training faster.

    A GPU: `torch.cuda.is_bf16_supported` without emulation. A CPU: the avx512_bf16 or amx_bf16 flag.
    It matters both ways (bench/results/plain_loop_zen5.json, vs_sentence_transformers.json): on the
    2-core AMD Zen 5 here (avx512_bf16) a bf16 matmul ran at 900 GFLOP/s against fp32's 210, and a
    training step at batch 64 2.45x as fast; on an earlier 2-core machine with AVX-512 but no bf16
    instructions, bf16 autocast trained 2.5-2.8x *slower* than fp32. The environment variable
    CONTRASTKIT_NATIVE_BF16=1 or 0 overrides the answer (the tests pin it to 0, so that they
    compute the same on every machine).
    """
    override = os.environ.get("CONTRASTKIT_NATIVE_BF16")
    if override is not None:
        return override.strip().lower() in ("1", "true", "yes")
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(cpu_flags() & BF16_CPU_FLAGS)
    return False


def use_bf16(setting: bool | None, device: torch.device) -> bool:
    """A `bf16` setting resolved: true or false as given; None (the default) where `native_bf16(device)`."""
    return native_bf16(device) if setting is None else setting
