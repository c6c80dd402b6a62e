import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from torch import Tensor

from contrastkit import fused_attention
from contrastkit.encoder import Encoder, position_limit
from contrastkit.errors import ConfigError, ModelLoadError

TEXTS = [
    "what is the lift of a thin wing",
    "boundary layer transition at supersonic speeds over a flat plate with heat transfer",
    "a",
    "shock waves",
    "the effect of compressibility on the pressure distribution of an aerofoil in subsonic flow",
]


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("normalize", [True, False])
def test_saved_folder_loads_in_sentence_transformers(tiny_model_dir, tmp_path, pooling, normalize):
    ours = Encoder.from_pretrained(tiny_model_dir, pooling=pooling, normalize=normalize, max_seq_length=48)
    ours.save(tmp_path / "m")
    st = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert st.max_seq_length == 48
    np.testing.assert_allclose(st.encode(TEXTS, batch_size=2), ours.encode(TEXTS), atol=1e-5)
    norms = np.linalg.norm(ours.encode(TEXTS), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == normalize


def test_save_draws_no_hugging_face_progress_bar_and_restores_the_setting(tiny_model_dir, tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    encoder = Encoder.from_pretrained(tiny_model_dir)
    capfd.readouterr()
    for enabled in (True, False):
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
        encoder.save(tmp_path / f"m{enabled}")
        assert hf_logging.is_progress_bar_enabled() == enabled
    hf_logging.enable_progress_bar()
    assert "Writing model shards" not in capfd.readouterr().err
    assert (tmp_path / "mTrue" / "model.safetensors").is_file()


@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken"])
def test_folder_saved_by_sentence_transformers_loads_in_ours(tiny_model_dir, tmp_path, pooling):
    from sentence_transformers import models

    transformer = models.Transformer(str(tiny_model_dir), max_seq_length=40)
    pooler = models.Pooling(32, pooling_mode=pooling)
    st = SentenceTransformer(modules=[transformer, pooler, models.Normalize()], device="cpu")
    st.save(str(tmp_path / "st"))
    ours = Encoder.from_pretrained(tmp_path / "st")
    assert (ours.pooling, ours.normalize, ours.max_seq_length) == (
        {"lasttoken": "last"}.get(pooling, pooling), True, 40)
    np.testing.assert_allclose(ours.encode(TEXTS), st.encode(TEXTS), atol=1e-5)


@pytest.mark.slow
def test_default_model_round_trip_both_ways(default_encoder, tmp_path):
    from contrastkit.encoder import default_model_path

    reference = SentenceTransformer(str(default_model_path()), device="cpu")
    np.testing.assert_allclose(default_encoder.encode(TEXTS), reference.encode(TEXTS), atol=1e-5)
    default_encoder.save(tmp_path / "ours")
    reloaded = SentenceTransformer(str(tmp_path / "ours"), device="cpu")
    np.testing.assert_allclose(reloaded.encode(TEXTS), default_encoder.encode(TEXTS), atol=1e-5)
    assert default_encoder.max_seq_length == 256 and default_encoder.embedding_dim == 384


def test_plain_hf_folder_defaults(tiny_model_dir):
    enc = Encoder.from_pretrained(tiny_model_dir)
    assert (enc.pooling, enc.normalize, enc.max_seq_length) == ("mean", True, 128)
    out = enc.encode(TEXTS)
    assert out.dtype == np.float32 and out.shape == (len(TEXTS), 32)


def test_sorted_batching_gives_the_same_vectors_as_one_by_one(tiny_encoder):
    one_by_one = np.stack([tiny_encoder.encode([t])[0] for t in TEXTS])
    for batch_size in (2, 3, len(TEXTS)):
        np.testing.assert_allclose(tiny_encoder.encode(TEXTS, batch_size=batch_size), one_by_one, atol=1e-5)


def test_encode_is_in_input_order_and_deterministic(tiny_encoder):
    a = tiny_encoder.encode(TEXTS, batch_size=2)
    b = tiny_encoder.encode(TEXTS[::-1], batch_size=2)[::-1]
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a[0], a[1])  # different texts, different vectors


def test_encode_leaves_training_mode_alone(tiny_encoder):
    tiny_encoder.train()
    tiny_encoder.encode(TEXTS[:2])
    assert tiny_encoder.training


def test_attention_dropout_is_set_apart_from_hidden_dropout(tiny_model_dir):
    from torch.profiler import profile

    encoder = Encoder.from_pretrained(tiny_model_dir)
    for module in encoder.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # hidden dropout off: only attention dropout can make two passes differ
    encoder.train()

    def two_passes() -> tuple[Tensor, Tensor, set[str]]:
        with profile() as prof:
            first = encoder.embed(TEXTS).detach()
        return first, encoder.embed(TEXTS).detach(), {e.key for e in prof.key_averages()}

    assert encoder.set_attention_dropout(0.5) == 2  # the tiny BERT has two layers
    first, second, ops = two_passes()
    assert not torch.allclose(first, second)
    assert encoder.set_attention_dropout(0.0) == 2
    first, second, ops = two_passes()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    # a fused kernel, not the math path: contrastkit's where it runs on this CPU (AVX-512), else torch's
    fused = "_PackedAttention" if fused_attention.runs_in(encoder.model, torch.float32) else \
        "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert fused in ops


def test_bf16_autocast_is_close_to_fp32(tiny_encoder):
    fp32 = tiny_encoder.encode(TEXTS)
    bf16 = tiny_encoder.encode(TEXTS, bf16=True)
    assert bf16.dtype == np.float32
    assert np.abs(fp32 - bf16).max() < 5e-2
    assert not np.array_equal(fp32, bf16)


def test_max_seq_length_truncates(tiny_model_dir):
    short = Encoder.from_pretrained(tiny_model_dir, max_seq_length=4)
    long_text = TEXTS[1]
    assert short.token_lengths([long_text]) == [4]
    np.testing.assert_allclose(short.encode([long_text]), short.encode([long_text + " and more words"]),
                               atol=1e-6)


def test_token_lengths_are_counted_block_by_block(tiny_encoder, monkeypatch):
    texts = [" ".join(["word"] * n) for n in range(1, 12)]
    whole = [len(ids) for ids in tiny_encoder.tokenizer(texts, truncation=True, max_length=64)["input_ids"]]
    calls = []
    real = tiny_encoder.tokenizer.__class__.__call__

    def spy(self, batch, **kwargs):
        calls.append(len(batch))
        return real(self, batch, **kwargs)

    monkeypatch.setattr(tiny_encoder.tokenizer.__class__, "__call__", spy)
    assert tiny_encoder.token_lengths(texts, block=4) == whole
    assert calls == [4, 4, 3]
    assert tiny_encoder.token_lengths([]) == []


def test_prompt_is_prepended(tiny_encoder):
    np.testing.assert_allclose(tiny_encoder.encode(["x"], prompt="query: "), tiny_encoder.encode(["query: x"]),
                               atol=1e-6)


def test_empty_input_gives_empty_array(tiny_encoder):
    assert tiny_encoder.encode([]).shape == (0, 32)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model path '.*nope' does not exist.*local folders only"):
        Encoder.from_pretrained(tmp_path / "nope")


def test_folder_that_is_neither_hf_nor_st(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="neither a Hugging Face model folder .no config.json. nor a "
                                             "sentence-transformers folder .no modules.json."):
        Encoder.from_pretrained(tmp_path)


def test_pickled_weights_are_refused(tiny_model_dir, tmp_path):
    from transformers import AutoModel

    AutoModel.from_pretrained(tiny_model_dir).save_pretrained(tmp_path, safe_serialization=False)
    for f in tmp_path.glob("*.safetensors"):
        f.unlink()
    if not any(tmp_path.glob("*.bin")):  # transformers >= 5 may always write safetensors
        torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="no .safetensors weights"):
        Encoder.from_pretrained(tmp_path)


def test_unsupported_sentence_transformers_pipeline(tiny_model_dir, tmp_path):
    Encoder.from_pretrained(tiny_model_dir).save(tmp_path)
    modules = json.loads((tmp_path / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="Transformer → Pooling → Normalize → Dense"):
        Encoder.from_pretrained(tmp_path)


def test_a_folder_without_its_tokenizer_files_is_refused(tiny_model_dir, tmp_path):
    """transformers would fall back to a tokenizer of special tokens only: every text the same embedding."""
    Encoder.from_pretrained(tiny_model_dir).save(tmp_path / "model")
    Encoder.from_pretrained(tmp_path / "model")  # whole: loads
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (tmp_path / "model" / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="tokenizer files .* are missing"):
        Encoder.from_pretrained(tmp_path / "model")


def test_a_damaged_weights_file_or_config_is_one_clear_error(tiny_model_dir, tmp_path):
    Encoder.from_pretrained(tiny_model_dir).save(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[: len(intact) // 3])  # a save cut short
    with pytest.raises(ModelLoadError, match="cannot load the model in"):
        Encoder.from_pretrained(tmp_path / "model")
    weights.write_bytes(intact)
    config = tmp_path / "model" / "sentence_bert_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "max_seq_length": "abc"}))
    with pytest.raises(ModelLoadError, match="sentence_bert_config.json: max_seq_length must be a positive whole "
                                             "number; got 'abc'"):
        Encoder.from_pretrained(tmp_path / "model")


def test_model_path_that_is_a_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file; expected a model folder"):
        Encoder.from_pretrained(tmp_path / "model.safetensors")


def _save_tiny_model(path, model):
    """Save `model` with the default model's tokenizer (model_max_length 512, more than these tiny models take)."""
    from transformers import AutoTokenizer

    from contrastkit.encoder import default_model_path

    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True).save_pretrained(path)
    return path


LONG_TEXT = " ".join(["word"] * 300)


def test_max_seq_length_beyond_the_position_table_is_refused_at_load(tiny_model_dir):
    with pytest.raises(ConfigError) as err:
        Encoder.from_pretrained(tiny_model_dir, max_seq_length=129)
    assert str(err.value) == (f"max_seq_length 129 exceeds what '{tiny_model_dir}' can take (128 positions); "
                              f"use at most 128")
    at_limit = Encoder.from_pretrained(tiny_model_dir, max_seq_length=128)
    assert at_limit.token_lengths([LONG_TEXT]) == [128] and at_limit.encode([LONG_TEXT]).shape == (1, 32)


def test_max_seq_length_set_later_is_checked_too(tiny_encoder):
    with pytest.raises(ConfigError, match=r"max_seq_length 1000 exceeds what '.*' can take \(128 positions\)"):
        tiny_encoder.max_seq_length = 1000
    with pytest.raises(ValueError, match="max_seq_length must be positive, got 0"):
        tiny_encoder.max_seq_length = 0
    assert tiny_encoder.max_seq_length == 64
    tiny_encoder.max_seq_length = 128
    assert tiny_encoder.encode([LONG_TEXT]).shape == (1, 32)


@pytest.mark.slow
def test_default_model_takes_at_most_512_tokens(default_encoder):
    assert position_limit(default_encoder.model) == 512
    with pytest.raises(ConfigError, match=r"max_seq_length 100000 exceeds what the default model "
                                          r"\(all-MiniLM-L6-v2\) can take \(512 positions\)"):
        default_encoder.max_seq_length = 100000
    assert default_encoder.max_seq_length == 256


def test_roberta_position_offset_is_taken_off(tmp_path):
    """RoBERTa counts positions from padding_idx + 1: 66 rows with padding_idx 1 take 64 tokens."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=37, max_position_embeddings=66, pad_token_id=1)
    path = _save_tiny_model(tmp_path, RobertaModel(config))
    default = Encoder.from_pretrained(path)  # the config says 66 and the tokenizer 512: 64 is what runs
    assert default.max_seq_length == 64 and default.encode([LONG_TEXT]).shape == (1, 32)
    with pytest.raises(ConfigError, match=r"max_seq_length 65 exceeds what .* can take \(64 positions\)"):
        Encoder.from_pretrained(path, max_seq_length=65)


def test_a_model_without_a_position_table_takes_any_length(tmp_path):
    """Relative positions (DeBERTa-v3 style) have no table to run past: nothing to refuse."""
    from transformers import DebertaV2Config, DebertaV2Model

    torch.manual_seed(0)
    config = DebertaV2Config(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=37, max_position_embeddings=64, position_biased_input=False,
                             relative_attention=True, pos_att_type=["p2c", "c2p"])
    path = _save_tiny_model(tmp_path, DebertaV2Model(config))
    encoder = Encoder.from_pretrained(path, max_seq_length=256)
    assert position_limit(encoder.model) is None
    assert encoder.token_lengths([LONG_TEXT]) == [256] and encoder.encode([LONG_TEXT]).shape == (1, 32)
    assert position_limit(torch.nn.Linear(2, 2)) is None


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("normalize", [True, False])
def test_saved_folder_reloads_in_ours_with_its_pooling_normalisation_and_prompts(tiny_model_dir, tmp_path,
                                                                                 pooling, normalize):
    ours = Encoder.from_pretrained(tiny_model_dir, pooling=pooling, normalize=normalize, max_seq_length=48)
    ours.prompts = {"query": "query: ", "document": "passage: "}
    ours.save(tmp_path / "m")
    reloaded = Encoder.from_pretrained(tmp_path / "m")
    assert (reloaded.pooling, reloaded.normalize, reloaded.max_seq_length) == (pooling, normalize, 48)
    assert reloaded.prompts == {"query": "query: ", "document": "passage: "}
    np.testing.assert_allclose(reloaded.encode(TEXTS), ours.encode(TEXTS), atol=1e-6)


@pytest.mark.parametrize("flag,pooling", [("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                                          ("pooling_mode_lasttoken", "last")])
def test_classic_sentence_transformers_pooling_flags_are_read(tiny_model_dir, tmp_path, flag, pooling):
    """The pooling config of sentence-transformers 2.x-5.x: one boolean flag per mode, written here by hand."""
    Encoder.from_pretrained(tiny_model_dir).save(tmp_path)
    flags = ["pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
             "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"]
    config = {"word_embedding_dimension": 32, **{f: f == flag for f in flags}, "include_prompt": True}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert Encoder.from_pretrained(tmp_path).pooling == pooling


def _st_with_prompts(tiny_model_dir, path, **kwargs):
    """A sentence-transformers folder saved by sentence-transformers itself, E5 / BGE style."""
    from sentence_transformers import models

    st = SentenceTransformer(modules=[models.Transformer(str(tiny_model_dir), max_seq_length=40),
                                      models.Pooling(32, pooling_mode="mean"), models.Normalize()],
                             device="cpu", prompts={"query": "query: ", "passage": "passage: "}, **kwargs)
    st.save(str(path))
    return SentenceTransformer(str(path), device="cpu")


def test_a_folders_prompts_are_used_for_queries_and_documents_as_sentence_transformers_does(tiny_model_dir, tmp_path):
    """Prompts were read and then never used: evaluation, search and mining embedded without them."""
    st = _st_with_prompts(tiny_model_dir, tmp_path / "st")
    ours = Encoder.from_pretrained(tmp_path / "st")
    np.testing.assert_allclose(ours.encode_queries(TEXTS), st.encode_query(TEXTS), atol=1e-6)
    np.testing.assert_allclose(ours.encode_documents(TEXTS), st.encode_document(TEXTS), atol=1e-6)
    np.testing.assert_allclose(ours.encode(TEXTS), st.encode(TEXTS), atol=1e-6)  # no default prompt: none
    np.testing.assert_allclose(ours.encode(TEXTS, prompt_name="passage"), st.encode(TEXTS, prompt_name="passage"),
                               atol=1e-6)
    assert np.abs(ours.encode_queries(TEXTS) - ours.encode(TEXTS)).max() > 1e-3  # the prompt matters
    with pytest.raises(ValueError, match="no prompt 'title'"):
        ours.encode(TEXTS, prompt_name="title")


def test_the_default_prompt_is_used_and_kept(tiny_model_dir, tmp_path):
    st = _st_with_prompts(tiny_model_dir, tmp_path / "st", default_prompt_name="query")
    ours = Encoder.from_pretrained(tmp_path / "st")
    np.testing.assert_allclose(ours.encode(TEXTS), st.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(ours.encode(TEXTS, prompt=""), st.encode(TEXTS, prompt=""), atol=1e-6)
    ours.save(tmp_path / "again")  # it was written back as null: the model then behaved otherwise in ST
    again = json.loads((tmp_path / "again" / "config_sentence_transformers.json").read_text())
    assert again["default_prompt_name"] == "query"
    assert again["prompts"] == {"query": "query: ", "document": "", "passage": "passage: "}  # ST 6 adds document ""
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path / "again"), device="cpu").encode(TEXTS),
                               st.encode(TEXTS), atol=1e-6)


def test_pooling_without_the_prompt_and_several_pooling_modes_are_refused_clearly(tiny_model_dir, tmp_path):
    Encoder.from_pretrained(tiny_model_dir).save(tmp_path)
    config_path = tmp_path / "1_Pooling" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "include_prompt": False}))
    with pytest.raises(ModelLoadError, match="include_prompt: false"):
        Encoder.from_pretrained(tmp_path)
    config_path.write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode": ["mean", "max"]}))
    with pytest.raises(ModelLoadError, match=r"pooling mode \['mean', 'max'\] is not supported"):
        Encoder.from_pretrained(tmp_path)  # sentence-transformers 6 writes a list: a TypeError before
    config_path.write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode": ["cls"]}))
    assert Encoder.from_pretrained(tmp_path).pooling == "cls"


def test_do_lower_case_is_applied_and_kept(tiny_model_dir, tmp_path):
    Encoder.from_pretrained(tiny_model_dir).save(tmp_path)
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": True}))
    ours, st = Encoder.from_pretrained(tmp_path), SentenceTransformer(str(tmp_path), device="cpu")
    cased = ["Wing LIFT at Mach 2", "The Boundary Layer"]
    np.testing.assert_allclose(ours.encode(cased), st.encode(cased), atol=1e-6)
    np.testing.assert_allclose(ours.encode(cased), ours.encode([t.lower() for t in cased]), atol=0)
    ours.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "sentence_bert_config.json").read_text())["do_lower_case"] is True


def test_a_config_asking_for_hub_attention_code_is_refused(tiny_model_dir, tmp_path):
    """"_attn_implementation": "org/repo" has transformers fetch and import a kernel from the Hub (or,
    without the `kernels` package, crash with an ImportError), whatever trust_remote_code says."""
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_attn_implementation": "kernels-community/flash-attn"}))
    with pytest.raises(ModelLoadError, match="asks for the attention implementation 'kernels-community/flash-attn'"):
        Encoder.from_pretrained(folder)
