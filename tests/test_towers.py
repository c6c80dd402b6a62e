"""DualEncoder: shared towers with prefixes, separate text/vision/module towers, projections, save/load."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from _image_support import tiny_clip_vision_config, tiny_vit_config, write_shapes_dataset
from contrastkit.data.images import read_image_captions
from contrastkit.encoder import Encoder
from contrastkit.errors import ModelLoadError
from contrastkit.towers import DualEncoder, ModuleTower, Projection, TextTower, VisionTower

TEXTS = ["lift of thin wings", "shock waves in nozzles", "boundary layer transition at high speed"]


@pytest.fixture
def clip_like(tiny_model_dir):
    torch.manual_seed(0)
    return DualEncoder(TextTower.from_pretrained(tiny_model_dir, max_seq_length=16),
                       VisionTower.from_config(tiny_clip_vision_config()), dim=16)


def test_shared_tower_prefixes_each_side_and_equals_the_encoder_with_that_prompt(tiny_model_dir):
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    model = DualEncoder.shared(encoder, query_prefix="query: ", document_prefix="passage: ")
    assert model.is_shared and not model.project and model.tower("query") is model.tower("document")
    assert model.prepare("query", ["x"]) == ["query: x"] and model.prepare("document", ["x"]) == ["passage: x"]
    np.testing.assert_allclose(model.encode_queries(TEXTS), encoder.encode(TEXTS, prompt="query: "), atol=1e-6)
    np.testing.assert_allclose(model.encode_documents(TEXTS), encoder.encode(TEXTS, prompt="passage: "), atol=1e-6)
    # the prefix changes the embedding: the two sides differ for the same text
    assert not np.allclose(model.encode_queries(TEXTS), model.encode_documents(TEXTS), atol=1e-3)


def test_projection_is_identity_for_equal_widths_and_random_otherwise():
    torch.manual_seed(0)
    torch.testing.assert_close(Projection(8, 8).weight, torch.eye(8))
    wide = Projection(64, 8).weight.detach()
    assert wide.shape == (8, 64) and 0.5 < float(wide.std() * 64 ** 0.5) < 1.5


def test_logit_scale_starts_at_one_over_007_and_is_clamped_at_100(clip_like):
    assert math.isclose(float(clip_like.logit_scale.detach()), 1 / 0.07, rel_tol=1e-6)
    with torch.no_grad():
        clip_like.log_logit_scale.fill_(math.log(500.0))
    scale = clip_like.logit_scale
    assert math.isclose(float(scale.detach()), 100.0, rel_tol=1e-6)
    scale.backward()
    assert float(clip_like.log_logit_scale.grad) == 0.0  # past the clamp, no push further up
    with pytest.raises(ValueError, match="logit_scale"):
        DualEncoder(clip_like.tower("query"), logit_scale=200.0)


def test_separate_text_and_vision_towers_project_to_one_unit_space(clip_like, tmp_path):
    records = read_image_captions(write_shapes_dataset(tmp_path))
    images = clip_like.encode_images([r.image for r in records])
    texts = clip_like.encode_queries([r.caption for r in records])
    assert images.shape == texts.shape == (24, 16) and images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    assert clip_like.image_side == "document"
    np.testing.assert_array_equal(clip_like.encode_documents([r.image for r in records]), images)
    # batching does not change results: one by one equals batched (texts are length-sorted)
    np.testing.assert_allclose(clip_like.encode_images([r.image for r in records], batch_size=5), images, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([clip_like.encode_queries([r.caption]) for r in records[:4]]),
                               texts[:4], atol=1e-6)


def test_a_bert_text_tower_packs_and_a_vision_tower_does_not(clip_like):
    assert clip_like.packs("query") and not clip_like.packs("document")
    clip_like.tower("query").encoder.packing = False
    assert not clip_like.packs("query")


def test_save_and_load_both_towers(clip_like, tmp_path):
    records = read_image_captions(write_shapes_dataset(tmp_path / "data"))
    with torch.no_grad():
        clip_like.log_logit_scale.fill_(3.0)
        clip_like.projections["document"].weight.mul_(2.0)
    clip_like.save(tmp_path / "model")
    loaded = DualEncoder.load(tmp_path / "model")
    assert isinstance(loaded.tower("document"), VisionTower) and loaded.dim == 16
    assert float(loaded.log_logit_scale.detach()) == 3.0
    paths = [r.image for r in records]
    np.testing.assert_allclose(loaded.encode_images(paths), clip_like.encode_images(paths), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_queries(TEXTS), clip_like.encode_queries(TEXTS), atol=1e-6)


def test_a_saved_shared_tower_is_a_sentence_transformers_model_with_the_prefixes_as_prompts(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = DualEncoder.shared(Encoder.from_pretrained(tiny_model_dir, max_seq_length=32))
    model.save(tmp_path / "m")
    loaded = DualEncoder.load(tmp_path / "m")
    assert loaded.is_shared and loaded.prefixes == {"query": "query: ", "document": "passage: "}
    st = SentenceTransformer(str(tmp_path / "m" / "query"), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS, prompt_name="query"), model.encode_queries(TEXTS), atol=1e-5)
    np.testing.assert_allclose(st.encode(TEXTS, prompt_name="document"), model.encode_documents(TEXTS), atol=1e-5)


def test_a_shared_tower_saved_again_with_other_prefixes_keeps_no_old_prompt(tiny_model_dir, tmp_path):
    """The prompts were updated in place: an empty prefix left the folder's old "document" prompt."""
    from sentence_transformers import SentenceTransformer

    base = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    base.prompts = {"query": "query: ", "passage": "passage: "}  # an E5 folder's names
    base.save(tmp_path / "first")
    again = DualEncoder.shared(Encoder.from_pretrained(tmp_path / "first"),
                               query_prefix="search_query: ", document_prefix="")
    again.save(tmp_path / "second")
    assert Encoder.from_pretrained(tmp_path / "second" / "query").prompts == {"query": "search_query: ", "document": ""}
    st = SentenceTransformer(str(tmp_path / "second" / "query"), device="cpu")
    np.testing.assert_allclose(st.encode_document(TEXTS), again.encode_documents(TEXTS), atol=1e-5)
    np.testing.assert_allclose(st.encode_query(TEXTS), again.encode_queries(TEXTS), atol=1e-5)


def test_vit_and_plain_module_towers(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 12))
    model = DualEncoder(ModuleTower(net, 12), VisionTower.from_config(tiny_vit_config()), dim=8)
    records = read_image_captions(write_shapes_dataset(tmp_path / "data"))
    vectors = [torch.randn(6) for _ in range(5)]
    assert model.encode_queries(vectors).shape == (5, 8)
    assert model.encode_images([r.image for r in records[:3]]).shape == (3, 8)
    model.save(tmp_path / "m")
    with pytest.raises(ModelLoadError, match="pass the module itself"):
        DualEncoder.load(tmp_path / "m")
    fresh = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 12))
    loaded = DualEncoder.load(tmp_path / "m", modules={"query": fresh})
    np.testing.assert_allclose(loaded.encode_queries(vectors), model.encode_queries(vectors), atol=1e-6)


def test_a_vit_saved_without_its_pooler_embeds_by_cls_the_same_at_every_load(tmp_path):
    """ViTForImageClassification's checkpoints hold no pooler: transformers made a random one, the
    default output, so the same folder embedded otherwise at each load."""
    from transformers import ViTModel

    from contrastkit.towers import image_processor_for

    torch.manual_seed(0)
    ViTModel(tiny_vit_config(), add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    image_processor_for(tiny_vit_config()).save_pretrained(tmp_path / "vit")
    records = read_image_captions(write_shapes_dataset(tmp_path / "data"))[:3]
    first, second = (VisionTower.from_pretrained(tmp_path / "vit") for _ in range(2))
    a = first(first.prepare([r.image for r in records]))
    torch.testing.assert_close(a, second(second.prepare([r.image for r in records])), rtol=0, atol=0)
    cls = VisionTower.from_pretrained(tmp_path / "vit", pooling="cls")
    torch.testing.assert_close(a, cls(cls.prepare([r.image for r in records])), rtol=0, atol=0)


def test_clear_errors(tiny_model_dir, tmp_path):
    text_only = DualEncoder.shared(Encoder.from_pretrained(tiny_model_dir))
    with pytest.raises(ValueError, match="no vision tower"):
        text_only.encode_images([tmp_path / "x.png"])
    with pytest.raises(ValueError, match="side must be one of query, document"):
        text_only.tower("image")
    net = ModuleTower(nn.Linear(3, 5), 5)
    with pytest.raises(ValueError, match="without projections both towers must have width"):
        DualEncoder(net, ModuleTower(nn.Linear(3, 4), 4), project=False)
    with pytest.raises(ModelLoadError, match="not a DualEncoder folder"):
        DualEncoder.load(tmp_path)
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="safetensors only"):
        VisionTower.from_pretrained(tmp_path / "vit")


def test_evaluate_retrieval_encodes_queries_and_documents_through_their_own_sides(tiny_model_dir, tmp_path):
    from _support import make_beir
    from contrastkit.data import load_beir
    from contrastkit.evaluate import evaluate_retrieval

    dataset = load_beir(make_beir(tmp_path / "beir"))
    model = DualEncoder.shared(Encoder.from_pretrained(tiny_model_dir), query_prefix="q> ", document_prefix="d> ")
    result = evaluate_retrieval(model, dataset, ks=[1, 4], show_progress=False)
    doc_ids = list(dataset.corpus)
    scores = (model.encode_queries(["wing lift"]) @ model.encode_documents(
        [dataset.doc_text(d) for d in doc_ids]).T)[0]
    top = [(d, s) for d, s in sorted(zip(doc_ids, scores), key=lambda x: -x[1])]
    assert [d for d, _ in result.run["q1"]] == [d for d, _ in top]
    np.testing.assert_allclose([s for _, s in result.run["q1"]], [s for _, s in top], atol=1e-5)
    assert 0.0 <= result.metrics["ndcg@4"] <= 1.0
