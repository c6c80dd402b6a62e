"""bf16 on the CPU: the padded forward runs Hugging Face's eager attention (contrastkit.eager_attention)."""

from __future__ import annotations

import json

import pytest
import torch

from contrastkit.data import Pair
from contrastkit.eager_attention import use_eager_attention
from contrastkit.train import TrainConfig, Trainer

TEXTS = ["shock waves in a supersonic nozzle", "x", "heat transfer at hypersonic speeds over a blunt body"]


def test_sdpa_becomes_eager_with_the_same_outputs_and_nothing_saved(tiny_encoder, tmp_path):
    tiny_encoder.packing = False
    tiny_encoder.eval()
    assert tiny_encoder.model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        before = tiny_encoder.embed(TEXTS)
        assert use_eager_attention(tiny_encoder) == 1
        assert tiny_encoder.model.config._attn_implementation == "eager"
        after = tiny_encoder.embed(TEXTS)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    assert use_eager_attention(tiny_encoder) == 0  # eager already: left alone
    tiny_encoder.save(tmp_path)
    assert not [k for k in json.loads((tmp_path / "config.json").read_text()) if "attn" in k]


@pytest.mark.parametrize("bf16", [True, False])
def test_the_trainer_switches_only_for_bf16_on_the_cpu(tiny_encoder, tmp_path, bf16):
    pairs = [Pair(f"query {i}", f"document {i}") for i in range(8)]
    config = TrainConfig(data="-", output_dir=str(tmp_path), batch_size=4, max_steps=1, bf16=bf16,
                         show_progress=False, report=False, health_sample=0)
    Trainer(config, tiny_encoder, pairs)
    assert tiny_encoder.model.config._attn_implementation == ("eager" if bf16 else "sdpa")
