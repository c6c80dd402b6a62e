"""bf16 attention on the CPU: the written-out products, not torch's fused kernel.

torch's fused CPU attention (`scaled_dot_product_attention`) is slow in bf16: at MiniLM's 12 heads
of 32, for 16 × 128, 32 × 64 and 64 × 32 tokens, it took 2.1–2.5× as long as the written-out
products (scores, softmax, times v) forward, and 5.1–8.0× forward and backward, on the Zen 5 here
(bench/attention_kernel.py); in fp32 it is 0.8–1.1× forward and 1.2–1.8× faster with the backward. So in bf16
on the CPU:

- the packed forward (BERT encoders, contrastkit/packing.py) writes attention out itself
  (`packing.written_out_attention`);
- the padded forward of every other model runs Hugging Face's "eager" attention, its written-out
  form, instead of "sdpa": `use_eager_attention`, which the trainer calls when it trains in bf16 on
  the CPU. Cranfield batch-32 bf16 steps of the default model through its padded forward, without
  attention dropout: 0.78 and 0.85 s eager against 1.12 and 1.22 s sdpa (1.43×), each run in its own
  process.

The switch is a runtime setting of the loaded model: nothing is saved with it (a saved model's
config.json does not record it), and `model.set_attn_implementation("sdpa")` gives it back.
"""

from __future__ import annotations

from torch import nn


def use_eager_attention(model: nn.Module) -> int:
    """Every Hugging Face model inside `model` whose attention runs "sdpa" runs "eager"; return how many.

    Models with another implementation (eager already, flash attention, a kernel of their own) and
    transformers versions without `set_attn_implementation` are left as they are.
    """
    switched = 0
    for module in model.modules():
        config = getattr(module, "config", None)
        setter = getattr(module, "set_attn_implementation", None)
        if setter is None or getattr(config, "_attn_implementation", None) != "sdpa":
            continue
        setter("eager")
        switched += 1
    return switched
