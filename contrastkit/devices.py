"""Moving tensors to the device without making the host wait for it.

On a GPU a training step of a small model is bound by the host (Python, kernel launches), not by
the arithmetic: the host runs ahead and queues work while the device computes. Anything that makes
the host wait until the device has run all it was given (a blocking copy from ordinary host
memory, indexing a GPU tensor with CPU indices, reading a GPU number into Python) costs that
overlap. bench/gpu_step_profile.py lists where a step still waits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


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
