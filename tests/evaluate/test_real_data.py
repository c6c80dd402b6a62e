"""End-to-end figures on the real data sets, against the READMEs' independent reference figures.

The references were measured with sentence-transformers + pytrec_eval (dense) and bm25s +
pytrec_eval (BM25); see ../shared/data/*/README.md. "MRR" there is recip_rank over the top 100.
"""

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cranfield(shared_data):
    from contrastkit.data.beir import load_beir

    return load_beir(shared_data / "cranfield", split="test")


def test_default_model_on_cranfield_matches_the_reference(cranfield):
    from contrastkit.encoder import Encoder
    from contrastkit.evaluate import evaluate_retrieval

    encoder = Encoder.from_pretrained("default", max_seq_length=256)
    result = evaluate_retrieval(encoder, cranfield, show_progress=False)
    assert result.num_queries == 75
    assert result.metrics["ndcg@10"] == pytest.approx(0.403, abs=0.005)
    assert result.metrics["recall@100"] == pytest.approx(0.785, abs=0.005)
    assert result.metrics["mrr@100"] == pytest.approx(0.553, abs=0.005)


def test_bm25_on_cranfield_matches_the_reference(cranfield):
    from contrastkit.evaluate import bm25_retrieval

    result = bm25_retrieval(cranfield)
    assert result.metrics["ndcg@10"] == pytest.approx(0.361, abs=0.005)
    assert result.metrics["recall@100"] == pytest.approx(0.723, abs=0.005)
    assert result.metrics["mrr@100"] == pytest.approx(0.506, abs=0.005)


def test_bm25_on_debian_packages_matches_the_reference(shared_data):
    from contrastkit.data.beir import load_beir
    from contrastkit.evaluate import bm25_retrieval

    result = bm25_retrieval(load_beir(shared_data / "debian-packages", split="test"))
    assert result.num_queries == 1000
    assert result.metrics["ndcg@10"] == pytest.approx(0.770, abs=0.005)
    assert result.metrics["recall@100"] == pytest.approx(0.938, abs=0.005)
    assert result.metrics["mrr@100"] == pytest.approx(0.743, abs=0.005)
