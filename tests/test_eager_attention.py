"""bf16 on the CPU: the padded forward's training passes run Hugging Face's eager attention."""

from __future__ import annotations

import json

import pytest
import torch

from contrastkit.data import Pair
from contrastkit.eager_attention import eager_attention
from contrastkit.train import TrainConfig, Trainer

TEXTS = ["shock waves in a supersonic nozzle", "x", "heat transfer at hypersonic speeds over a blunt body"]


def test_sdpa_becomes_eager_within_the_block_with_the_same_outputs_and_nothing_saved(tiny_encoder, tmp_path):
    tiny_encoder.packing = False
    tiny_encoder.eval()
    model = tiny_encoder.model
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        before = tiny_encoder.embed(TEXTS)
        with eager_attention(tiny_encoder) as switched:
            assert switched == 1 and model.config._attn_implementation == "eager"
            inside = tiny_encoder.embed(TEXTS)
            with eager_attention(tiny_encoder) as again:
                assert again == 0  # eager already: left alone
            assert model.config._attn_implementation == "eager"
            tiny_encoder.save(tmp_path)
        assert model.config._attn_implementation == "sdpa"
        with eager_attention(tiny_encoder, enabled=False) as none:
            assert none == 0 and model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-6)
    assert not [k for k in json.loads((tmp_path / "config.json").read_text()) if "attn" in k]


def test_a_model_that_refuses_eager_is_left_on_sdpa():
    class NoEager(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"_attn_implementation": "sdpa"})()

        def set_attn_implementation(self, name):
            raise ValueError(f"{name} is not supported by this remote-code model")

    model = NoEager()
    with eager_attention(model) as switched:
        assert switched == 0 and model.config._attn_implementation == "sdpa"


def test_the_switch_is_undone_when_the_block_raises(tiny_encoder):
    with pytest.raises(RuntimeError), eager_attention(tiny_encoder):
        raise RuntimeError("a failing forward")
    assert tiny_encoder.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("bf16", [True, False])
@pytest.mark.parametrize("mini_batch", [None, 2])
def test_the_trainer_runs_eager_in_its_bf16_graph_passes_only(tiny_encoder, tmp_path, bf16, mini_batch):
    """bf16: forwards with a graph run eager; the gradient cache's first pass and anything after, sdpa."""
    tiny_encoder.packing = False  # the padded forward: Hugging Face's attention
    pairs = [Pair(f"query {i}", f"document {i}") for i in range(8)]
    config = TrainConfig(data="-", output_dir=str(tmp_path), batch_size=4, mini_batch_size=mini_batch, max_steps=1,
                         bf16=bf16, show_progress=False, report=False, health_sample=0)
    trainer = Trainer(config, tiny_encoder, pairs)
    seen = set()
    tiny_encoder.model.register_forward_pre_hook(
        lambda module, args: seen.add((torch.is_grad_enabled(), module.config._attn_implementation)))
    trainer.train()
    graph = "eager" if bf16 else "sdpa"
    assert seen == ({(True, graph), (False, "sdpa")} if mini_batch else {(True, graph)})
    assert tiny_encoder.model.config._attn_implementation == "sdpa"


def test_the_trainer_leaves_the_attention_of_a_packing_encoder_alone(tiny_encoder, tmp_path, monkeypatch):
    """The packed forward writes its attention out itself: no switch around it (it would be wasted work)."""
    import contrastkit.train.trainer as trainer_module

    switches = []
    real = trainer_module.eager_attention
    monkeypatch.setattr(trainer_module, "eager_attention",
                        lambda model, enabled=True: (switches.append(enabled), real(model, enabled))[1])
    assert tiny_encoder.packs
    # one stream: the step goes through Trainer._embed (two streams embed through Encoder.embed_packed,
    # which never switches)
    config = TrainConfig(data="-", output_dir=str(tmp_path), batch_size=4, max_steps=1, bf16=True,
                         show_progress=False, report=False, health_sample=0, cpu_streams=1)
    Trainer(config, tiny_encoder, [Pair(f"query {i}", f"document {i}") for i in range(8)]).train()
    assert switches and not any(switches)
