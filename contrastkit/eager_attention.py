"""bf16 attention on the CPU: the written-out products, not torch's fused kernel, where it pays.

torch's fused CPU attention (`scaled_dot_product_attention`) is slow in bf16 training: at MiniLM's
12 heads of 32, for 16 × 128, 32 × 64 and 64 × 32 tokens, it took 2.1–2.4× as long as the written-out
products (scores, softmax, times v) forward, and 4.7–6.6× forward and backward, on the Zen 5 here
(bench/attention_kernel.py); in fp32 it is 0.9–1.4× as fast forward and 1.3–1.8× with the backward.
So in bf16 on the CPU:

- the packed forward (BERT encoders, contrastkit/packing.py) writes attention out itself
  (`packing.written_out_attention`);
- the padded forward of every other model runs Hugging Face's "eager" attention, its written-out
  form, instead of "sdpa" while the trainer runs a forward with a graph (`eager_attention`):
  Cranfield batch-32 bf16 steps of the default model through its padded forward, without
  attention dropout, 0.745 and 0.763 s eager against 1.069 and 1.060 s sdpa (1.41×), each run in
  its own process. Only there: without a graph Hugging Face's eager path was the slower one
  (encoding 1,500 debian texts at 256 tokens took 9.00 s eager against 6.68 s sdpa in bf16, 20.86
  against 17.49 in fp32), so encoding, evaluation and the gradient cache's first pass keep "sdpa".

The switch lasts for the block and is a runtime setting: nothing is saved with the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eager_attention(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block every Hugging Face model inside `model` whose attention runs "sdpa" runs "eager".

    Yields how many were switched, and switches them back on leaving. Models with another
    implementation (eager already, flash attention, a kernel of their own), models that refuse
    "eager", and transformers versions without `set_attn_implementation` are left as they are;
    `enabled=False` switches nothing.
    """
    switched = []
    if enabled:
        for module in model.modules():
            config = getattr(module, "config", None)
            setter = getattr(module, "set_attn_implementation", None)
            if setter is not None and getattr(config, "_attn_implementation", None) == "sdpa":
                try:
                    setter("eager")
                except (ValueError, NotImplementedError):  # a model (remote code) that has no eager path
                    continue
                switched.append(setter)
    try:
        yield len(switched)
    finally:
        for setter in switched:
            setter("sdpa")
