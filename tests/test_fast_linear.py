"""Dense layers through oneDNN's fp32 matmul: same values and gradients as F.linear, used where it should be."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from contrastkit import fast_linear
from contrastkit.devices import cpu_flags, cpu_vendor
from contrastkit.encoder import Encoder
from contrastkit.fast_linear import dense, linear, onednn_linear_enabled

TEXTS = ["a short one", "a rather longer text about packing tokens end to end", "x",
         "retrieval with dense vectors", "the fourth text here", "and one more for the batch"]


def set_onednn(monkeypatch, value: str | None) -> None:
    """Force the rule's answer (None: the hardware's) for this test; the cached answer is cleared both ways."""
    if value is None:
        monkeypatch.delenv("CONTRASTKIT_ONEDNN_LINEAR", raising=False)
    else:
        monkeypatch.setenv("CONTRASTKIT_ONEDNN_LINEAR", value)
    onednn_linear_enabled.cache_clear()


@pytest.fixture
def onednn(monkeypatch):
    set_onednn(monkeypatch, "1")
    if not onednn_linear_enabled():
        pytest.skip("this torch has no oneDNN linear")
    yield
    onednn_linear_enabled.cache_clear()


def ran_onednn(out: torch.Tensor) -> bool:
    """Whether `out` came from the oneDNN function (directly, or through the view back to its shape)."""
    node = out.grad_fn
    if node.name() == "ViewBackward0":
        node = node.next_functions[0][0]
    return node.name() == "_OneDNNLinearBackward"


@pytest.fixture(autouse=True)
def _fresh_rule():
    yield
    onednn_linear_enabled.cache_clear()


def test_the_vendor_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx512f\n")
    assert cpu_vendor(cpuinfo) == "AuthenticAMD"
    assert cpu_vendor(tmp_path / "absent") == ""


@pytest.mark.parametrize("vendor, flags, expected", [("AuthenticAMD", {"avx2", "avx512f"}, True),
                                                     ("AuthenticAMD", {"avx2"}, False),
                                                     ("GenuineIntel", {"avx2", "avx512f"}, False), ("", set(), False)])
def test_the_rule_picks_oneDNN_on_AMD_with_AVX512_and_the_variable_overrides_it(monkeypatch, vendor, flags,
                                                                                  expected):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setattr(fast_linear, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(fast_linear, "cpu_flags", lambda: frozenset(flags))
    set_onednn(monkeypatch, None)
    assert onednn_linear_enabled() is expected
    for override, forced in (("1", True), ("0", False)):
        set_onednn(monkeypatch, override)
        assert onednn_linear_enabled() is forced


def test_the_tests_run_torchs_matmul_unless_they_ask():
    assert onednn_linear_enabled() is False  # tests/conftest.py pins it: same arithmetic on every machine


@pytest.mark.parametrize("outputs", [40, 16], ids=["widening", "narrowing"])  # the two weight-gradient forms
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(37, 24), (3, 5, 24)], ids=["2d", "3d"])
def test_values_and_gradients_equal_torchs_linear(onednn, bias, shape, outputs):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, requires_grad=True)
    weight = torch.randn(outputs, 24, generator=generator, requires_grad=True)
    b = torch.randn(outputs, generator=generator, requires_grad=True) if bias else None
    upstream = torch.randn(*shape[:-1], outputs, generator=generator)
    ours = linear(x, weight, b)
    assert ran_onednn(ours)  # the oneDNN path ran, not F.linear
    grads = torch.autograd.grad((ours * upstream).sum(), [t for t in (x, weight, b) if t is not None])
    reference = F.linear(x, weight, b)
    expected = torch.autograd.grad((reference * upstream).sum(), [t for t in (x, weight, b) if t is not None])
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_only_the_inputs_that_need_a_gradient_get_one(onednn):
    x = torch.randn(8, 6, requires_grad=True)
    weight = torch.randn(4, 6)  # frozen
    linear(x, weight).sum().backward()
    assert x.grad is not None and weight.grad is None
    torch.testing.assert_close(x.grad, weight.sum(0).expand(8, 6), rtol=1e-6, atol=1e-6)


def test_the_result_is_fp32_arithmetic_not_a_reduced_precision_shortcut(onednn):
    """Against float64: an error at fp32's scale (a bf16 or TF32 product would be ~1000 times larger)."""
    generator = torch.Generator().manual_seed(1)
    x, weight = torch.randn(256, 384, generator=generator), torch.randn(1536, 384, generator=generator)
    exact = x.double() @ weight.double().T
    scale = exact.abs().max().item()
    assert (linear(x, weight).double() - exact).abs().max().item() < 1e-5 * scale
    rounded = linear(x.bfloat16().float(), weight.bfloat16().float()).double()  # what bf16 inputs would give
    assert (rounded - exact).abs().max().item() > 1e-3 * scale


@pytest.mark.parametrize("case", ["float64", "autocast-bf16", "switched-off", "no-rows"])
def test_other_cases_take_torchs_linear(onednn, monkeypatch, case):
    x, weight = torch.randn(4, 6, requires_grad=True), torch.randn(3, 6, requires_grad=True)
    if case == "no-rows":
        out = linear(x[:0], weight)
        assert out.shape == (0, 3)
    elif case == "float64":
        out = linear(x.double(), weight.double())
        assert out.dtype == torch.float64
    elif case == "autocast-bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = linear(x, weight)
        assert out.dtype == torch.bfloat16
    else:
        set_onednn(monkeypatch, "0")
        out = linear(x, weight)
    assert not ran_onednn(out)


def test_dense_calls_any_other_module_as_it_is(onednn):
    plain = torch.nn.Linear(6, 3)
    x = torch.randn(4, 6, requires_grad=True)
    assert ran_onednn(dense(plain, x))
    seen = []
    plain.register_forward_hook(lambda module, args, out: seen.append(out))
    assert not ran_onednn(dense(plain, x)) and len(seen) == 1  # the hook ran

    class Adapter(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    adapter = Adapter(6, 3)
    torch.testing.assert_close(dense(adapter, x), adapter(x))


def test_the_packed_forward_with_onednn_equals_it_without(tiny_model_dir, monkeypatch):
    """The whole packed forward and backward, every dense layer through oneDNN: values and gradients as before."""
    results = []
    for setting in ("1", "0"):
        set_onednn(monkeypatch, setting)
        encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=64)
        for module in encoder.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        encoder.train()
        calls = []
        original = fast_linear._OneDNNLinear.apply
        monkeypatch.setattr(fast_linear._OneDNNLinear, "apply", lambda *a: calls.append(1) or original(*a))
        anchors, positives = encoder.embed(TEXTS[:3]), encoder.embed(TEXTS[3:])
        loss = F.cross_entropy(anchors @ positives.T * 20, torch.arange(3))
        loss.backward()
        layers = encoder.model.config.num_hidden_layers
        assert len(calls) == (2 * 4 * layers if setting == "1" else 0)  # qkv, out, intermediate, output per layer
        results.append((anchors.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters()
                                          if p.grad is not None}))
    (packed_dnn, grads_dnn), (packed_torch, grads_torch) = results
    torch.testing.assert_close(packed_dnn, packed_torch, rtol=1e-5, atol=1e-6)
    assert grads_dnn.keys() == grads_torch.keys()
    for name in grads_torch:
        torch.testing.assert_close(grads_dnn[name], grads_torch[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_trainer_says_which_kernel_multiplied(tiny_encoder, tmp_path, monkeypatch):
    from contrastkit.data import Pair
    from contrastkit.train import TrainConfig, Trainer

    pairs = [Pair(f"query {i}", f"document {i}") for i in range(8)]
    config = TrainConfig(data="-", output_dir=str(tmp_path), batch_size=4, max_steps=1, bf16=False,
                         show_progress=False, report=False, health_sample=0)
    set_onednn(monkeypatch, "1")
    if not onednn_linear_enabled():
        pytest.skip("this torch has no oneDNN linear")
    monkeypatch.setenv("CONTRASTKIT_FUSED_ATTENTION", "0")  # the dense layers alone in the words
    trainer = Trainer(config, tiny_encoder, pairs)
    assert trainer.precision == "fp32, dense layers by oneDNN"
    trainer.train()
    assert json.loads((tmp_path / "environment.json").read_text())["precision"] == "fp32, dense layers by oneDNN"
    set_onednn(monkeypatch, "0")
    assert trainer.precision == "fp32"


def test_the_trainer_gives_the_padded_forward_onednn_too(tiny_encoder, tmp_path, monkeypatch):
    """A model that does not pack: its nn.Linear layers become FastLinear, same weights and state dict."""
    from contrastkit.data import Pair
    from contrastkit.train import TrainConfig, Trainer

    set_onednn(monkeypatch, "1")
    if not onednn_linear_enabled():
        pytest.skip("this torch has no oneDNN linear")
    before = {k: v.clone() for k, v in tiny_encoder.state_dict().items()}
    tiny_encoder.packing = False
    pairs = [Pair(f"query {i}", f"document {i}") for i in range(8)]
    config = TrainConfig(data="-", output_dir=str(tmp_path), batch_size=4, max_steps=1, bf16=False,
                         show_progress=False, report=False, health_sample=0)
    trainer = Trainer(config, tiny_encoder, pairs)
    linears = [m for m in tiny_encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is fast_linear.FastLinear for m in linears)
    after = tiny_encoder.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    calls = []
    original = fast_linear._OneDNNLinear.apply
    monkeypatch.setattr(fast_linear._OneDNNLinear, "apply", lambda *a: calls.append(1) or original(*a))
    trainer.train()
    assert len(calls) >= len(linears)  # the padded forward's dense layers multiplied by oneDNN


def test_use_fast_linear_leaves_subclasses_alone():
    class Projection(torch.nn.Linear):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Projection(4, 2), torch.nn.ReLU())
    assert fast_linear.use_fast_linear(model) == 1
    assert type(model[0]) is fast_linear.FastLinear and type(model[1]) is Projection
    x = torch.randn(3, 4)
    torch.testing.assert_close(model[0](x), torch.nn.functional.linear(x, model[0].weight, model[0].bias))


CAPACITY = """
import os
import contrastkit.fast_linear  # noqa: F401  (sets the caches' capacities unless the environment has them)
print(os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"], os.environ["LRU_CACHE_CAPACITY"])
"""


@pytest.mark.parametrize("users", [None, "1024"], ids=["unset", "users-own"])
def test_the_caches_of_shapes_are_capped_on_import_unless_the_user_set_them(users):
    """oneDNN and ideep read their capacities at their first product: importing contrastkit sets them
    first (the memory they save: fast_linear's comment, and the next test for ideep's)."""
    import os
    import subprocess
    import sys

    names = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
    env = {k: v for k, v in os.environ.items() if k not in names}
    if users:
        env.update(dict.fromkeys(names, users))
    out = subprocess.run([sys.executable, "-c", CAPACITY], env=env, capture_output=True, text=True, check=True)
    expected = [users, users] if users else [fast_linear.PRIMITIVE_CACHE_CAPACITY, fast_linear.IDEEP_CACHE_CAPACITY]
    assert out.stdout.split() == expected


SHAPES = """
import ctypes
import contrastkit.encoder  # noqa: F401  (caps the caches of shapes unless the environment set them)
import torch
from contrastkit.encoder import Encoder, autocast


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2


def live() -> int:  # bytes malloc has handed out and not got back
    info = mallinfo2()
    return info.uordblks + info.hblkhd


encoder = Encoder.from_pretrained("default", max_seq_length=128)
with torch.no_grad(), autocast(True):
    encoder.embed(["warm up"])
    before = live()
    for words in range(20, 60):  # 40 row counts the products have not seen
        encoder.embed([" ".join(["word"] * words)] * 2)
print(live() - before)
"""


@pytest.mark.skipif("avx512_bf16" not in cpu_flags(), reason="bf16 products go through ideep where bf16 is the default")
def test_new_shapes_do_not_grow_memory_without_bound():
    """The packed forward's row count changes from slab to slab; ideep (torch's bf16 products) keeps a
    prepared product for each shape it has seen, 1,024 of them by default at a few MB each. With
    contrastkit's capacity 40 shapes leave a few MB behind; with the default (the control) several
    times more, so this test can fail."""
    import os
    import subprocess
    import sys

    def growth_mb(capacity: str | None) -> float:
        env = {k: v for k, v in os.environ.items() if k != "LRU_CACHE_CAPACITY"}
        if capacity:
            env["LRU_CACHE_CAPACITY"] = capacity
        out = subprocess.run([sys.executable, "-c", SHAPES], env=env, capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1]) / 1e6

    ours, uncapped = growth_mb(None), growth_mb("1024")
    assert uncapped > 30, f"the control grew only {uncapped:.1f} MB: the test no longer sees ideep's cache"
    assert ours < uncapped / 3, (ours, uncapped)
