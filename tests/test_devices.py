"""Whether the hardware computes in bf16, and the `bf16` setting that defaults to it."""

from __future__ import annotations

import json

import pytest
import torch

from contrastkit import devices, fused_attention
from contrastkit.devices import cpu_flags, native_bf16, use_bf16
from contrastkit.errors import ConfigError
from contrastkit.train import TrainConfig, Trainer
from contrastkit.train.dual_trainer import check_dual_settings

CPU = torch.device("cpu")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse avx512f avx512_bf16\n"
                       "processor\t: 1\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize("flags, expected", [({"avx512f", "avx512_vnni"}, False), ({"avx512f", "avx512_bf16"}, True),
                                             ({"amx_tile", "amx_bf16"}, True), (set(), False)])
def test_a_cpu_has_bf16_when_it_has_the_instructions(monkeypatch, flags, expected):
    monkeypatch.delenv("CONTRASTKIT_NATIVE_BF16")
    monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset(flags))
    assert native_bf16(CPU) is expected
    for override, forced in (("1", True), ("0", False)):
        monkeypatch.setenv("CONTRASTKIT_NATIVE_BF16", override)
        assert native_bf16(CPU) is forced


def test_the_setting_wins_over_the_hardware(monkeypatch):
    for hardware in ("0", "1"):
        monkeypatch.setenv("CONTRASTKIT_NATIVE_BF16", hardware)
        assert use_bf16(True, CPU) is True and use_bf16(False, CPU) is False
        assert use_bf16(None, CPU) is (hardware == "1")


@pytest.mark.parametrize("hardware, setting, expected", [("1", None, True), ("0", None, False), ("1", False, False),
                                                         ("0", True, True)])
def test_the_trainer_trains_in_bf16_by_default_where_the_hardware_has_it(tiny_encoder, tmp_path, monkeypatch,
                                                                         hardware, setting, expected):
    from contrastkit.data import Pair

    monkeypatch.setenv("CONTRASTKIT_NATIVE_BF16", hardware)
    pairs = [Pair(f"query {i}", f"document {i}") for i in range(8)]
    config = TrainConfig(data="-", output_dir=str(tmp_path), batch_size=4, max_steps=1, bf16=setting,
                         show_progress=False, report=False, health_sample=0)  # only the training step embeds
    assert TrainConfig().bf16 is None
    trainer = Trainer(config, tiny_encoder, pairs)
    assert trainer.bf16 is expected
    dtypes = []
    handle = tiny_encoder.model.encoder.layer[0].intermediate.dense.register_forward_hook(
        lambda module, args, out: dtypes.append(out.dtype))
    trainer.train()
    handle.remove()
    assert set(dtypes) == {torch.bfloat16 if expected else torch.float32}
    environment = json.loads((tmp_path / "environment.json").read_text())
    kernel = fused_attention.runs_in(tiny_encoder.model, torch.bfloat16 if expected else torch.float32)
    assert environment["precision"] == ("bf16 autocast" if expected else "fp32") + (
        ", attention by the fused CPU kernel" if kernel else "")


def test_the_two_tower_trainer_takes_fp32_and_refuses_bf16():
    check_dual_settings(TrainConfig(data="-", bf16=False))
    check_dual_settings(TrainConfig(data="-"))
    with pytest.raises(ConfigError, match="bf16"):
        check_dual_settings(TrainConfig(data="-", bf16=True))
