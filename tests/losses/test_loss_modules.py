"""The nn.Module wrappers: same values as the functions, InfoNCE's learnable clamped temperature, the import rule."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import pytest
import torch

import contrastkit.losses as losses
from contrastkit.losses import (BatchHardTripletLoss, BatchSemiHardTripletLoss, InfoNCELoss, InfoNCEOutput,
                                MarginContrastiveLoss, OnlineContrastiveLoss, TripletLoss, batch_hard_triplet,
                                batch_semi_hard_triplet, info_nce, margin_contrastive, online_contrastive,
                                triplet_margin)

PACKAGE = Path(losses.__file__).parent


def noise(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_fixed_temperature_module_equals_the_function():
    a, p, h = noise(5, 4, seed=1), noise(5, 4, seed=2), noise(5, 2, 4, seed=3)
    ids = torch.tensor([0, 1, 1, 2, 3])
    module = InfoNCELoss(0.1, symmetric=True, label_smoothing=0.1, mask_margin=0.2)
    want = info_nce(a, p, h, temperature=0.1, symmetric=True, label_smoothing=0.1, mask_margin=0.2, positive_ids=ids)
    torch.testing.assert_close(module(a, p, h, positive_ids=ids), want, rtol=0, atol=1e-6)
    out = module.with_stats(a, p, h, positive_ids=ids)
    assert isinstance(out, InfoNCEOutput) and out.num_masked_by_id.item() == 4  # rows 1 and 2, both directions
    assert module.log_scale is None and module.temperature == 0.1 and not list(module.parameters())


def test_learnable_temperature_gradient_matches_finite_differences():
    a, p = noise(6, 4, seed=4), noise(6, 4, seed=5)
    module = InfoNCELoss(0.2, learnable_temperature=True).double()
    module(a, p).backward()
    step, log_scale = 1e-6, module.log_scale.item()

    def at(value: float) -> float:
        return info_nce(a, p, temperature=math.exp(-value)).item()

    numeric = (at(log_scale + step) - at(log_scale - step)) / (2 * step)
    assert module.log_scale.grad.item() == pytest.approx(numeric, rel=1e-6)
    assert module.temperature.item() == pytest.approx(0.2)


def test_learnable_temperature_is_clamped_at_scale_100():
    a, p = noise(6, 4, seed=6), noise(6, 4, seed=7)
    module = InfoNCELoss(0.05, learnable_temperature=True).double()
    with torch.no_grad():
        module.log_scale.fill_(math.log(400.0))
    assert module.temperature.item() == pytest.approx(0.01)
    loss = module(a, p)
    torch.testing.assert_close(loss, info_nce(a, p, temperature=0.01), rtol=0, atol=1e-9)
    loss.backward()
    assert module.log_scale.grad.item() == 0.0  # past the clamp the scale gets no push further
    assert "log_scale" in module.state_dict()


def test_a_scale_put_back_on_the_bound_can_come_down_again():
    """A step that overshoots 1/τ = 100 left the parameter where the forward clamp passes no gradient:
    frozen for good. clamp_scale_ (called by the trainers after each step) puts it back on the bound,
    where a batch that wants a smaller scale moves it down."""
    module = InfoNCELoss(0.05, learnable_temperature=True).double()
    with torch.no_grad():
        module.log_scale.fill_(math.log(150.0))
    module.clamp_scale_()
    assert module.log_scale.item() == pytest.approx(math.log(100.0), abs=1e-12)
    a = noise(8, 4, seed=11)
    loss = module(a, -a)  # every positive opposite its anchor: the loss wants a softer (smaller) scale
    loss.backward()
    assert module.log_scale.grad.item() > 0  # gradient descent lowers the scale
    fixed = InfoNCELoss(0.05)
    fixed.clamp_scale_()  # a fixed temperature: nothing to do
    assert fixed.temperature == 0.05


def test_temperature_out_of_range_is_refused():
    with pytest.raises(ValueError, match="1/temperature <= max_scale"):
        InfoNCELoss(0.005)
    with pytest.raises(ValueError, match="temperature > 0"):
        InfoNCELoss(0.0)


def test_pair_and_triplet_modules_equal_their_functions():
    a, b, c = noise(8, 5, seed=8), noise(8, 5, seed=9), noise(8, 5, seed=10)
    pairs, classes = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0]), torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    cases = [
        (MarginContrastiveLoss(0.8, pos_margin=0.1)(a, b, pairs),
         margin_contrastive(a, b, pairs, margin=0.8, pos_margin=0.1)),
        (OnlineContrastiveLoss(0.8)(a, b, pairs), online_contrastive(a, b, pairs, margin=0.8)),
        (TripletLoss(0.5, distance="cosine")(a, b, c), triplet_margin(a, b, c, margin=0.5, distance="cosine")),
        (BatchHardTripletLoss(2.0)(a, classes), batch_hard_triplet(a, classes, margin=2.0)),
        (BatchSemiHardTripletLoss(2.0)(a, classes), batch_semi_hard_triplet(a, classes, margin=2.0)),
    ]
    for got, want in cases:
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert got.item() > 0


@pytest.mark.parametrize("module", [InfoNCELoss, MarginContrastiveLoss, OnlineContrastiveLoss, TripletLoss,
                                    BatchHardTripletLoss, BatchSemiHardTripletLoss])
def test_every_module_carries_a_citation(module):
    assert "@" in module.citation and "year=" in module.citation


def test_every_public_name_is_exported():
    assert sorted(losses.__all__) == sorted(set(losses.__all__))
    assert all(hasattr(losses, name) for name in losses.__all__)


def test_the_package_imports_only_torch_the_standard_library_and_itself():
    allowed = set(sys.stdlib_module_names) | {"torch"}
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                ours = name.startswith("contrastkit.losses")
                assert name.split(".")[0] in allowed or ours, f"{path.name} imports {name}"
