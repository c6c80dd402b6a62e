"""InfoNCE against sentence-transformers, pytorch-metric-learning, F.cross_entropy and a naive loop; properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity, LpDistance
from pytorch_metric_learning.losses import NTXentLoss
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

from contrastkit.losses import info_nce, info_nce_with_stats

from _support import naive_similarity

KINDS = ["cosine", "dot", "neg_euclidean"]
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None)  # the same examples each run


def noise(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def ids(n: int, high: int, seed: int) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- a naive reference, written from the docstring

sim = naive_similarity


def naive_direction(a, p, hard, tau, kind, anchor_ids, positive_ids, hard_ids, margin, ratio, smoothing, known=None):
    """(mean loss, masked by id, masked by similarity, candidates) by building each row's candidate list.

    known[i][c]: column c of row i's candidates (B positives, then hard negatives) is a known positive.
    """
    losses, by_id, by_sim, candidates = [], 0, 0, 0
    for i in range(len(a)):
        s_pos = sim(a[i], p[i], kind)
        listed = []  # (similarity, masked by id)
        for j in range(len(p)):
            if j != i:
                same = any(ids_ is not None and ids_[i] == ids_[j] for ids_ in (anchor_ids, positive_ids))
                same = same or (known is not None and known[i][j])
                listed.append((sim(a[i], p[j], kind), same))
        if hard is not None:
            row_hard = hard[i] if isinstance(hard[0][0], list) else hard  # per-anchor [K][D] or shared [M][D]
            row_ids = (hard_ids[i] if isinstance(hard_ids[0], list) else hard_ids) if hard_ids is not None else None
            for k, h in enumerate(row_hard):
                same = row_ids is not None and row_ids[k] == positive_ids[i]
                listed.append((sim(a[i], h, kind), same or (known is not None and known[i][len(p) + k])))
        kept = [s_pos]
        for s, same_id in listed:
            candidates += 1
            if same_id:
                by_id += 1
            elif (margin is not None and s > s_pos - margin) or (ratio is not None and s > ratio * s_pos):
                by_sim += 1
            else:
                kept.append(s)
        top = max(kept) / tau
        log_z = top + math.log(sum(math.exp(s / tau - top) for s in kept))
        nll = log_z - s_pos / tau
        uniform = sum(log_z - s / tau for s in kept) / len(kept)
        losses.append((1 - smoothing) * nll + smoothing * uniform)
    return sum(losses) / len(losses), by_id, by_sim, candidates


def naive_info_nce(a, p, hard=None, *, tau=0.05, kind="cosine", symmetric=False, smoothing=0.0, anchor_ids=None,
                   positive_ids=None, hard_ids=None, margin=None, ratio=None, known=None):
    as_list = lambda t: None if t is None else t.tolist()  # noqa: E731
    reverse_known = None if known is None else as_list(known[:, :len(a)].T)
    a, p, hard, anchor_ids, positive_ids, hard_ids, known = map(
        as_list, (a, p, hard, anchor_ids, positive_ids, hard_ids, known))
    results = [naive_direction(a, p, hard, tau, kind, anchor_ids, positive_ids, hard_ids, margin, ratio, smoothing,
                               known)]
    if symmetric:
        results.append(naive_direction(p, a, None, tau, kind, positive_ids, anchor_ids, None, margin, ratio, smoothing,
                                       reverse_known))
    loss = sum(r[0] for r in results) / len(results)
    return (loss, *(sum(r[k] for r in results) for k in (1, 2, 3)))


@given(seed=st.integers(0, 10_000), batch=st.integers(1, 5), k=st.integers(0, 3), shared=st.booleans(),
       kind=st.sampled_from(KINDS), symmetric=st.booleans(), smoothing=st.sampled_from([0.0, 0.1]),
       id_range=st.sampled_from([None, 2, 4]), margin=st.sampled_from([None, 0.0, 0.3]),
       ratio=st.sampled_from([None, 0.9]), with_known=st.booleans())
@PROPERTY
def test_matches_the_naive_reference_with_every_option(seed, batch, k, shared, kind, symmetric, smoothing, id_range,
                                                      margin, ratio, with_known):
    a, p = noise(batch, 3, seed=seed), noise(batch, 3, seed=seed + 1)
    hard = None if k == 0 else noise(*((2 * k,) if shared else (batch, k)), 3, seed=seed + 2)
    anchor_ids = positive_ids = hard_ids = None
    if id_range is not None:
        anchor_ids, positive_ids = ids(batch, id_range, seed + 3), ids(batch, id_range, seed + 4)
        if hard is not None:
            hard_ids = torch.randint(0, id_range, hard.shape[:-1], generator=torch.Generator().manual_seed(seed + 5))
    known = None
    if with_known:  # random marks, the diagonal included: the loss must ignore a row's own positive
        columns = batch + (0 if hard is None else hard.shape[-2])
        known = torch.rand(batch, columns, generator=torch.Generator().manual_seed(seed + 6)) < 0.3
    out = info_nce_with_stats(a, p, hard, temperature=0.1, similarity=kind, symmetric=symmetric,
                              label_smoothing=smoothing, anchor_ids=anchor_ids, positive_ids=positive_ids,
                              hard_negative_ids=hard_ids, mask_margin=margin, mask_ratio=ratio, known_positives=known)
    loss, by_id, by_sim, candidates = naive_info_nce(
        a, p, hard, tau=0.1, kind=kind, symmetric=symmetric, smoothing=smoothing, anchor_ids=anchor_ids,
        positive_ids=positive_ids, hard_ids=hard_ids, margin=margin, ratio=ratio, known=known)
    assert out.loss.item() == pytest.approx(loss, abs=1e-9)
    assert (out.num_masked_by_id.item(), out.num_masked_by_similarity.item()) == (by_id, by_sim)
    assert (out.num_masked.item(), out.num_candidates.item()) == (by_id + by_sim, candidates)


# ---------------------------------------------------------------- sentence-transformers' MultipleNegativesRankingLoss

@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_in_batch_matches_multiple_negatives_ranking_loss(tau, st_loss):
    a, p = noise(8, 16, seed=1), noise(8, 16, seed=2)
    want = st_loss(MultipleNegativesRankingLoss, [a, p], scale=1 / tau)
    torch.testing.assert_close(info_nce(a, p, temperature=tau), want, rtol=0, atol=1e-6)


def test_shared_hard_negatives_match_multiple_negatives_ranking_loss(st_loss):
    a, p, n1, n2 = (noise(6, 12, seed=s) for s in (3, 4, 5, 6))
    want = st_loss(MultipleNegativesRankingLoss, [a, p, n1, n2], scale=20.0)
    torch.testing.assert_close(info_nce(a, p, torch.cat([n1, n2])), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("with_hard_negatives", [False, True])
def test_symmetric_matches_bidirectional_multiple_negatives_ranking_loss(with_hard_negatives, st_loss):
    a, p, n = noise(7, 10, seed=7), noise(7, 10, seed=8), noise(7, 10, seed=9)
    columns = [a, p, n] if with_hard_negatives else [a, p]
    want = st_loss(MultipleNegativesRankingLoss, columns, scale=1 / 0.07,
                   directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
    got = info_nce(a, p, n if with_hard_negatives else None, temperature=0.07, symmetric=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- pytorch-metric-learning's NTXentLoss

PML_SIMILARITY = {"cosine": CosineSimilarity(), "dot": DotProductSimilarity(normalize_embeddings=False),
                  "neg_euclidean": LpDistance(normalize_embeddings=False)}


@pytest.mark.parametrize("kind", KINDS)
def test_shared_hard_negatives_match_ntxent_with_labels(kind):
    """Labels make row i's only positive p_i; every other positive and every hard negative is a negative."""
    a, p, hard = noise(6, 5, seed=34), noise(6, 5, seed=35), noise(4, 5, seed=36)
    ntxent = NTXentLoss(temperature=0.1, distance=PML_SIMILARITY[kind])
    want = ntxent(a, torch.arange(6), ref_emb=torch.cat([p, hard]), ref_labels=torch.arange(10))
    torch.testing.assert_close(info_nce(a, p, hard, temperature=0.1, similarity=kind), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_per_anchor_hard_negatives_and_id_masking_match_ntxent(kind):
    """NTXent computes the loss from the (anchor, negative) index pairs we list by hand from the ids."""
    batch, k, tau = 8, 3, 0.2
    a, p, hard = noise(batch, 6, seed=10), noise(batch, 6, seed=11), noise(batch, k, 6, seed=12)
    anchor_ids, positive_ids = ids(batch, 5, seed=13), ids(batch, 5, seed=14)
    hard_ids = torch.randint(0, 5, (batch, k), generator=torch.Generator().manual_seed(15))
    reference = torch.cat([p, hard.flatten(0, 1)])  # positives, then row i's hard negatives at batch + i*k + j
    negatives = [(i, j) for i in range(batch) for j in range(batch)
                 if j != i and anchor_ids[i] != anchor_ids[j] and positive_ids[i] != positive_ids[j]]
    negatives += [(i, batch + i * k + j) for i in range(batch) for j in range(k) if hard_ids[i, j] != positive_ids[i]]
    assert len(negatives) < batch * (batch - 1 + k), "the ids should mask something"
    anchor_index, negative_index = (torch.tensor(column) for column in zip(*negatives))
    rows = torch.arange(batch)
    ntxent = NTXentLoss(temperature=tau, distance=PML_SIMILARITY[kind])
    want = ntxent(a, indices_tuple=(rows, rows, anchor_index, negative_index), ref_emb=reference)
    got = info_nce(a, p, hard, temperature=tau, similarity=kind, anchor_ids=anchor_ids, positive_ids=positive_ids,
                   hard_negative_ids=hard_ids)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_label_smoothing_matches_cross_entropy():
    a, p, hard = noise(5, 8, seed=16), noise(5, 8, seed=17), noise(5, 2, 8, seed=18)
    unit = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    logits = torch.cat([unit(a) @ unit(p).T, torch.einsum("bd,bkd->bk", unit(a), unit(hard))], dim=1) / 0.05
    want = F.cross_entropy(logits, torch.arange(5), label_smoothing=0.2)
    torch.testing.assert_close(info_nce(a, p, hard, label_smoothing=0.2), want, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_with_hard_negatives_masks_and_both_directions(kind):
    a, p, hard = noise(4, 5, seed=19), noise(4, 5, seed=20), noise(4, 2, 5, seed=21)
    tau = torch.tensor(0.3, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (a, p, hard, tau))
    positive_ids, hard_ids = torch.tensor([0, 1, 1, 2]), torch.tensor([[0, 5], [6, 7], [1, 8], [9, 9]])

    def loss(a, p, hard, tau):
        return info_nce(a, p, hard, temperature=tau, similarity=kind, symmetric=True, label_smoothing=0.1,
                        positive_ids=positive_ids, hard_negative_ids=hard_ids, mask_margin=0.05)

    assert torch.autograd.gradcheck(loss, inputs)


def test_gradcheck_shared_hard_negatives():
    inputs = tuple(noise(*shape, seed=s).requires_grad_() for shape, s in (((3, 4), 22), ((3, 4), 23), ((5, 4), 24)))
    assert torch.autograd.gradcheck(lambda a, p, h: info_nce(a, p, h, temperature=0.5, mask_ratio=0.95), inputs)


# ---------------------------------------------------------------- properties

@given(seed=st.integers(0, 10_000), m=st.integers(1, 6), dim=st.integers(2, 6),
       steps=st.tuples(st.floats(-2, 2), st.floats(0.01, 2)))
@PROPERTY
def test_loss_falls_as_the_positive_similarity_rises(seed, m, dim, steps):
    a, p0, hard = noise(1, dim, seed=seed), noise(1, dim, seed=seed + 1), noise(m, dim, seed=seed + 2)
    start, rise = steps  # p = p0 + t·a raises s(a, p) = a·p by rise·‖a‖² (dot similarity)
    before = info_nce(a, p0 + start * a, hard, temperature=1.0, similarity="dot")
    after = info_nce(a, p0 + (start + rise) * a, hard, temperature=1.0, similarity="dot")
    assert after < before or before < 1e-12


@given(seed=st.integers(0, 10_000), batch=st.integers(1, 5), k=st.integers(0, 3), kind=st.sampled_from(KINDS))
@PROPERTY
def test_small_temperature_approaches_the_hinge_on_the_hardest_negative(seed, batch, k, kind):
    """τ·L → mean_i max(0, max_j s(a_i, c_j) − s(a_i, p_i)) as τ → 0, within τ·log(#candidates)."""
    a, p, hard = noise(batch, 4, seed=seed), noise(batch, 4, seed=seed + 1), noise(batch, k, 4, seed=seed + 2)
    tau = 1e-6
    hinges = []
    for i in range(batch):
        s_pos = sim(a[i].tolist(), p[i].tolist(), kind)
        negatives = [p[j] for j in range(batch) if j != i] + list(hard[i])
        hardest = max((sim(a[i].tolist(), n.tolist(), kind) for n in negatives), default=-math.inf)
        hinges.append(max(0.0, hardest - s_pos))
    gap = tau * info_nce(a, p, hard if k else None, temperature=tau, similarity=kind).item() - sum(hinges) / batch
    assert -1e-9 <= gap <= tau * math.log(batch + k) + 1e-9


@given(seed=st.integers(0, 10_000), batch=st.integers(1, 5), k=st.integers(1, 4), id_range=st.integers(1, 3))
@PROPERTY
def test_candidates_masked_by_id_get_zero_gradient(seed, batch, k, id_range):
    a, p = noise(batch, 4, seed=seed), noise(batch, 4, seed=seed + 1)
    hard = noise(batch, k, 4, seed=seed + 2).requires_grad_()
    positive_ids = ids(batch, id_range, seed + 3)
    hard_ids = torch.randint(0, id_range, (batch, k), generator=torch.Generator().manual_seed(seed + 4))
    masked = hard_ids == positive_ids.unsqueeze(1)
    info_nce(a, p, hard, temperature=0.5, positive_ids=positive_ids, hard_negative_ids=hard_ids).backward()
    assert (hard.grad[masked] == 0).all()
    assert (hard.grad[~masked].abs().sum(-1) > 0).all()


@given(seed=st.integers(0, 10_000), batch=st.integers(1, 5), m=st.integers(1, 5), margin=st.floats(-0.5, 1.0))
@PROPERTY
def test_candidates_masked_by_similarity_get_zero_gradient(seed, batch, m, margin):
    a, p = noise(batch, 3, seed=seed), noise(batch, 3, seed=seed + 1)
    hard = noise(m, 3, seed=seed + 2).requires_grad_()
    rows, columns, positives = a.tolist(), hard.detach().tolist(), p.tolist()
    too_close = torch.tensor([[sim(row, h, "cosine") > sim(row, positive, "cosine") - margin for h in columns]
                              for row, positive in zip(rows, positives)])
    info_nce(a, p, hard, temperature=0.5, mask_margin=margin).backward()
    masked_everywhere = too_close.all(dim=0)  # a shared hard negative is silent only if every row masks it
    assert (hard.grad[masked_everywhere] == 0).all()
    assert (hard.grad[~masked_everywhere].abs().sum(-1) > 0).all()


@given(seed=st.integers(0, 10_000), batch=st.integers(1, 5), k=st.integers(0, 2), kind=st.sampled_from(KINDS),
       id_range=st.sampled_from([None, 2, 3]), margin=st.sampled_from([None, 0.2]))
@PROPERTY
def test_symmetric_is_the_mean_of_both_directions(seed, batch, k, kind, id_range, margin):
    a, p, hard = noise(batch, 4, seed=seed), noise(batch, 4, seed=seed + 1), noise(batch, k, 4, seed=seed + 2)
    hard = hard if k else None
    anchor_ids = None if id_range is None else ids(batch, id_range, seed + 3)
    positive_ids = None if id_range is None else ids(batch, id_range, seed + 4)
    options = dict(temperature=0.1, similarity=kind, mask_margin=margin)
    both = info_nce(a, p, hard, symmetric=True, anchor_ids=anchor_ids, positive_ids=positive_ids, **options)
    forward = info_nce(a, p, hard, anchor_ids=anchor_ids, positive_ids=positive_ids, **options)
    backward = info_nce(p, a, anchor_ids=positive_ids, positive_ids=anchor_ids, **options)
    torch.testing.assert_close(both, (forward + backward) / 2, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- errors and small cases

def test_known_positives_are_masked_and_a_candidate_masked_in_every_row_gets_no_gradient():
    a, p, hard = noise(4, 5, seed=40), noise(4, 5, seed=41), noise(3, 5, seed=42)
    known = torch.zeros(4, 7, dtype=torch.bool)
    known[0, 2] = known[1, 5] = True
    known[:, 6] = True  # hard negative 2 is a known positive of every anchor
    known[3, 3] = True  # a row's own positive: ignored
    p, hard = p.requires_grad_(), hard.requires_grad_()
    loss = info_nce(a, p, hard, temperature=0.5, known_positives=known)
    loss.backward()
    kept = ~known
    kept[3, 3] = True
    an, pn, hn = (F.normalize(t.detach(), dim=-1) for t in (a, p, hard))
    logits = torch.cat([an @ pn.T, an @ hn.T], 1) / 0.5
    want = -logits.masked_fill(~kept, -math.inf).log_softmax(1).diagonal().mean()
    assert loss.item() == pytest.approx(want.item(), abs=1e-12)
    assert (hard.grad[2] == 0).all() and (hard.grad[:2].abs().sum(-1) > 0).all()
    with pytest.raises(ValueError, match=r"known_positives must be a bool \[B, C\] = \[4, 7\]"):
        info_nce(a, p, hard, known_positives=known[:, :4])


def test_half_precision_embeddings_get_a_float32_softmax():
    a, p = noise(64, 16, seed=32).bfloat16(), noise(64, 16, seed=33).bfloat16()
    loss = info_nce(a, p)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(info_nce(a.double(), p.double()).item(), rel=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_embeddings_work_with_every_similarity(dtype):
    """torch.cdist has no half-precision kernel on the CPU: euclidean similarities run in float32."""
    from contrastkit.losses import batch_hard_triplet
    a, p = noise(16, 8, seed=34).to(dtype), noise(16, 8, seed=35).to(dtype)
    for kind in ("cosine", "dot", "neg_euclidean"):
        got = info_nce(a, p, similarity=kind)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(info_nce(a.double(), p.double(), similarity=kind).item(), rel=2e-3)
    labels = torch.arange(16) // 2
    assert batch_hard_triplet(a, labels).item() == pytest.approx(batch_hard_triplet(a.double(), labels).item(), rel=1e-5)


def test_a_row_whose_candidates_are_all_masked_costs_nothing():
    a, p = noise(3, 4, seed=25), noise(3, 4, seed=26)
    out = info_nce_with_stats(a, p, positive_ids=torch.tensor([7, 7, 7]))
    assert out.loss.item() == 0.0 and out.num_masked.item() == 6 == out.num_candidates.item()


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=0.0), "temperature must be a finite number > 0"),
    (dict(temperature=torch.tensor(-0.05)), "temperature must be a finite number > 0; got -0.05"),
    (dict(temperature=torch.tensor(math.nan)), "temperature must be a finite number > 0; got nan"),
    (dict(temperature=torch.tensor([0.05])), "temperature must be a float or a 0-dim tensor"),
    (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\)"),
    (dict(mask_margin=math.nan), "mask_margin must be a finite number"),
    (dict(positive_ids=torch.tensor([1, 2])), r"positive_ids must have shape \[3\]"),
    (dict(hard_negative_ids=torch.tensor([1, 2, 3])), "hard_negative_ids needs hard_negatives and positive_ids"),
    (dict(similarity="l2"), "unknown similarity kind 'l2'"),
])
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, message):
    a = noise(3, 4, seed=27)
    with pytest.raises(ValueError, match=message):
        info_nce(a, a, **kwargs)


def test_bad_shapes_are_refused():
    a = noise(3, 4, seed=28)
    with pytest.raises(ValueError, match="positives must match anchors"):
        info_nce(a, noise(2, 4, seed=29))
    with pytest.raises(ValueError, match=r"hard_negatives must be \[B, K, D\]"):
        info_nce(a, a, noise(2, 2, 4, seed=30))
    with pytest.raises(ValueError, match=r"hard_negative_ids must have shape \(3, 2\)"):
        info_nce(a, a, noise(3, 2, 4, seed=31), positive_ids=torch.arange(3), hard_negative_ids=torch.arange(6))
