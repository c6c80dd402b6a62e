"""Self-supervised pair generators and augmentations: small texts, seeded, checked against what each promises."""

import numpy as np
import pytest
import torch

from contrastkit.data.augment import MASK_TOKEN, parse_augmentation, span_masking, word_deletion
from contrastkit.data.corpus import Document
from contrastkit.data.selfsup import (STRATEGIES, dropout_views, independent_crops, neighbour_sentences,
                                      self_supervised_pairs, split_sentences, title_body)
from contrastkit.encoder import Encoder
from contrastkit.errors import ConfigError
from contrastkit.losses import info_nce
from contrastkit.train import TrainConfig, Trainer
from contrastkit.train.grad_cache import grad_cache_backward
from contrastkit.train.sampler import no_duplicate_batches

from _support import build_tiny_bert_folder

WORDS = ("lift drag wing shock wave nozzle flow heat transfer boundary layer panel flutter jet noise vortex "
         "sheet skin friction stall angle buckling shell").split()


def make_documents(n: int = 24, titled: bool = True) -> list[Document]:
    """Documents of three or four sentences, each sentence 6–9 words, some titled."""
    rng = np.random.default_rng(123)
    docs = []
    for i in range(n):
        sentences = [" ".join(rng.choice(WORDS, size=rng.integers(6, 10))) + f" s{i}x{j}."
                     for j in range(3 + i % 2)]
        title = f"title {i} {WORDS[i % len(WORDS)]}" if titled and i % 3 else ""
        docs.append(Document(id=f"d{i}", title=title, text=" ".join(sentences)))
    return docs


def test_split_sentences():
    assert split_sentences("One two three. Four five six! Seven eight nine?") == [
        "One two three.", "Four five six!", "Seven eight nine?"]
    # Cranfield's lower-case text with spaced full stops, and a short fragment joined to its sentence
    assert split_sentences("the wing was tested . see fig. 3 for the lift curves .") == [
        "the wing was tested .", "see fig. 3 for the lift curves ."]
    assert split_sentences("para one has words\n\npara two has words") == ["para one has words", "para two has words"]
    assert split_sentences("   ") == []


# ---------------------------------------------------------------- the generators

@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_each_generator_is_deterministic_in_its_seed(strategy):
    docs = make_documents()
    first = self_supervised_pairs(docs, strategy, seed=3)
    assert first == self_supervised_pairs(docs, strategy, seed=3)
    assert len(first) > 0 and all(p.anchor.strip() and p.positive.strip() for p in first)
    assert all(p.source == strategy and p.anchor_id == p.positive_id for p in first)
    if strategy in ("crop", "neighbours"):  # the random ones change with the seed
        assert first != self_supervised_pairs(docs, strategy, seed=4)


def test_dropout_views_are_the_same_string_twice():
    docs = make_documents()
    pairs = dropout_views(docs, seed=0)
    assert [(p.anchor, p.positive) for p in pairs] == [(f"{d.title} {d.text}".strip(),) * 2 for d in docs]


def test_crops_are_independent_spans_of_the_document():
    docs = make_documents(40)
    pairs = independent_crops(docs, seed=0, min_ratio=0.2, max_ratio=0.5, min_words=4)
    assert len(pairs) == len(docs)
    starts_differ = 0
    for doc, pair in zip(docs, pairs):
        words = f"{doc.title} {doc.text}".strip().split()
        spans = []
        for crop in (pair.anchor, pair.positive):
            piece = crop.split()
            assert max(4, round(0.2 * len(words))) <= len(piece) <= max(4, round(0.5 * len(words)))
            spans.append([i for i in range(len(words) - len(piece) + 1) if words[i:i + len(piece)] == piece])
            assert spans[-1], f"{crop!r} is not a contiguous span of {doc.id}"
        starts_differ += spans[0][0] != spans[1][0]
    assert starts_differ > len(docs) // 2  # independent draws, not one span copied


def test_crops_skip_documents_too_short_to_crop():
    docs = [Document("a", "", "only five words in here"), Document("b", "", " ".join(WORDS)),
            Document("eight", "", "one two three four five six seven eight")]  # two crops: the whole text twice
    assert [p.anchor_id for p in independent_crops(docs, min_words=8)] == ["b"]
    nine = [Document(f"n{i}", "", " ".join(f"w{i}{j}" for j in range(9))) for i in range(50)]
    pairs = independent_crops(nine, min_words=8, seed=3)  # only two 8-word spans: they often coincide
    assert pairs and all(p.anchor != p.positive for p in pairs)
    with pytest.raises(ConfigError, match="min_ratio"):
        independent_crops(docs, min_ratio=0.6, max_ratio=0.5)


def test_title_body_drops_untitled_documents_and_a_repeated_title():
    docs = [Document("a", "wing lift .", "wing lift . the lift of thin wings ."),
            Document("b", "", "no title here"), Document("c", "Jet noise", "measured in a tunnel"),
            Document("d", "only a title", "")]
    pairs = title_body(docs)
    assert [(p.anchor, p.positive) for p in pairs] == [("wing lift .", "the lift of thin wings ."),
                                                       ("Jet noise", "measured in a tunnel")]
    # a title that is only the start of the body's first word stays in the body
    [pair] = title_body([Document("x", "Air", "Airplanes fly through the air.")])
    assert pair.positive == "Airplanes fly through the air."
    [pair] = title_body([Document("x", "Air", "Air, as a fluid, flows.")])
    assert pair.positive == ", as a fluid, flows."


def test_neighbours_are_adjacent_sentences_of_the_body():
    docs = make_documents() + [Document("one", "t", "just one sentence here.")]
    pairs = neighbour_sentences(docs, seed=1)
    assert "one" not in {p.anchor_id for p in pairs}
    by_id = {d.id: d for d in docs}
    for pair in pairs:
        sentences = split_sentences(by_id[pair.anchor_id].text)
        i = sentences.index(pair.anchor)
        assert sentences[i + 1] == pair.positive
    assert len({split_sentences(by_id[p.anchor_id].text).index(p.anchor) for p in pairs}) > 1


def test_unknown_strategy_and_no_pair_are_config_errors():
    with pytest.raises(ConfigError, match="unknown strategy 'simcse'"):
        self_supervised_pairs(make_documents(), "simcse")
    with pytest.raises(ConfigError, match="needs documents with a title"):
        self_supervised_pairs(make_documents(titled=False), "title-body")
    with pytest.raises(ConfigError, match="more than 8 words .split on spaces: text written without them"):
        self_supervised_pairs([Document("zh", "", "空气动力学研究机翼升力和阻力的测量方法与结果")], "crop")


# ---------------------------------------------------------------- augmentations

def test_word_deletion_keeps_an_ordered_subset_and_at_least_one_word():
    text = " ".join(WORDS)
    out = word_deletion(text, np.random.default_rng(0), p=0.3)
    assert out == word_deletion(text, np.random.default_rng(0), p=0.3)
    kept = out.split()
    assert 0 < len(kept) < len(WORDS)
    it = iter(WORDS)
    assert all(w in it for w in kept)  # a subsequence, order kept
    assert word_deletion(text, np.random.default_rng(0), p=0.0) == text
    assert len(word_deletion("a b c", np.random.default_rng(0), p=0.99).split()) >= 1


def test_span_masking_masks_one_contiguous_span():
    words = WORDS[:20]
    out = span_masking(" ".join(words), np.random.default_rng(5), ratio=0.2).split()
    masked = [i for i, w in enumerate(out) if w == MASK_TOKEN]
    assert len(masked) == 4 and masked == list(range(masked[0], masked[0] + 4))
    assert [w for i, w in enumerate(out) if i not in masked] == [w for i, w in enumerate(words) if i not in masked]
    assert span_masking("single", np.random.default_rng(0)) == "single"


def test_span_masking_can_mask_any_position_including_the_last():
    text = "lift drag wing shock"  # 4 words, ratio 0.25: one masked word, its position uniform in 0..3
    seen = set()
    for seed in range(100):
        out = span_masking(text, np.random.default_rng(seed), ratio=0.25).split()
        seen.update(i for i, w in enumerate(out) if w == MASK_TOKEN)
    assert seen == {0, 1, 2, 3}
    ends = [span_masking(" ".join(WORDS[:10]), np.random.default_rng(s), ratio=0.3).split()[-3:] for s in range(100)]
    assert [MASK_TOKEN] * 3 in ends  # a 3-word span can end at the last word (start 7 of 0..7)


def test_the_strength_in_the_spec_is_used():
    text = " ".join(WORDS[:20])
    masked = parse_augmentation("span_masking:0.5")(text, np.random.default_rng(0)).split()
    assert masked.count(MASK_TOKEN) == 10  # round(0.5 × 20), not the default 10 %
    keep_all = parse_augmentation("word_deletion:0.0")
    assert all(keep_all(text, np.random.default_rng(seed)) == text for seed in range(10))  # p = 0 deletes nothing
    default = parse_augmentation("span_masking")(text, np.random.default_rng(0)).split()
    assert default.count(MASK_TOKEN) == 2  # no strength: the function's default ratio 0.1


def test_span_masking_writes_the_tokenizers_mask_token_or_is_refused_without_one():
    """RoBERTa / MPNet tokenizers read "[MASK]" as three plain tokens: theirs is "<mask>"."""
    text = " ".join(WORDS[:20])
    masked = parse_augmentation("span_masking:0.5", mask_token="<mask>")(text, np.random.default_rng(0)).split()
    assert masked.count("<mask>") == 10 and MASK_TOKEN not in masked
    with pytest.raises(ConfigError, match="this model's tokenizer has none; use word_deletion"):
        parse_augmentation("word_deletion:0.1,span_masking", mask_token=None)
    assert parse_augmentation("word_deletion:0.1", mask_token=None) is not None


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_both_views_of_a_pair_are_augmented(strategy):
    docs = make_documents()
    pairs = self_supervised_pairs(docs, strategy, seed=2, augment=parse_augmentation("span_masking:0.2"))
    assert all(MASK_TOKEN in p.anchor.split() and MASK_TOKEN in p.positive.split() for p in pairs)
    if strategy in ("dropout", "title-body"):  # views drawn without the generator: compare with the plain pairs
        for pair, original in zip(pairs, self_supervised_pairs(docs, strategy, seed=2)):
            for view, before in ((pair.anchor, original.anchor), (pair.positive, original.positive)):
                words, masked = before.split(), view.split()
                assert len(masked) == len(words) and all(m in (w, MASK_TOKEN) for w, m in zip(words, masked))


def test_parse_augmentation_and_views_augmented_independently():
    augment = parse_augmentation("word_deletion:0.3,span_masking:0.2")
    pairs = dropout_views(make_documents(8), seed=0, augment=augment)
    assert pairs == dropout_views(make_documents(8), seed=0, augment=augment)
    assert any(p.anchor != p.positive for p in pairs) and all(MASK_TOKEN in p.anchor for p in pairs)
    assert parse_augmentation("none") is None and parse_augmentation(None) is None
    spaced = parse_augmentation(" word_deletion : 0.3 , span_masking: 0.2 ")  # spaces around names and values
    assert dropout_views(make_documents(8), seed=0, augment=spaced) == pairs
    with pytest.raises(ConfigError, match="unknown augmentation 'shuffle'"):
        parse_augmentation("shuffle")
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        parse_augmentation("word_deletion:1.5")


# ---------------------------------------------------------------- dropout views differ only through dropout

def test_dropout_views_differ_only_through_dropout(tmp_path, tiny_encoder):
    text = dropout_views(make_documents(1))[0].anchor
    tiny_encoder.train()
    torch.manual_seed(0)
    with torch.no_grad():
        first, second = tiny_encoder.embed([text]), tiny_encoder.embed([text])
    assert not torch.allclose(first, second, atol=1e-4)  # dropout on: two different views
    tiny_encoder.eval()
    with torch.no_grad():
        assert torch.equal(tiny_encoder.embed([text]), tiny_encoder.embed([text]))  # dropout off: identical
    no_dropout = Encoder.from_pretrained(build_tiny_bert_folder(tmp_path / "p0", dropout=0.0), max_seq_length=64)
    no_dropout.train()
    with torch.no_grad():
        assert torch.equal(no_dropout.embed([text]), no_dropout.embed([text]))  # training mode, p = 0: identical


@pytest.mark.parametrize("dropout, differ", [(0.1, True), (0.0, False)])
def test_the_gradient_cache_sees_two_dropout_views(tmp_path, dropout, differ):
    """In the trainer's step, the anchors' and positives' embeddings of a dropout pair differ iff dropout > 0."""
    encoder = Encoder.from_pretrained(build_tiny_bert_folder(tmp_path / "m", dropout=dropout), max_seq_length=64)
    encoder.train()
    pairs = dropout_views(make_documents(8))
    groups = [[p.anchor for p in pairs], [p.positive for p in pairs]]
    assert groups[0] == groups[1]
    seen = []

    def loss_fn(anchors, positives):
        seen.append((anchors.detach().clone(), positives.detach().clone()))
        return info_nce(anchors, positives)

    chunks = [[np.arange(0, 4), np.arange(4, 8)]] * 2
    grad_cache_backward(encoder.embed, groups, chunks, loss_fn)
    anchors, positives = seen[0]
    assert torch.allclose(anchors, positives, atol=1e-6) != differ


def test_a_dropout_pair_keeps_its_positive_in_sampler_and_masking(tmp_path, tiny_encoder):
    """anchor == positive must be neither rejected as a duplicate nor masked as a false negative."""
    pairs = dropout_views(make_documents(24))
    texts = [(p.anchor, p.positive) for p in pairs]
    batches = no_duplicate_batches(texts, 8, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(24))
    config = TrainConfig(output_dir=str(tmp_path / "run"), batch_size=8, show_progress=False)
    trainer = Trainer(config, tiny_encoder, pairs)
    assert len(trainer._batches(0)) == 3
    groups = trainer._groups(trainer._batches(0)[0])
    anchors, positives = torch.randn(8, 16), torch.randn(8, 16)
    loss = trainer._loss_on(groups)(anchors, positives)
    assert int(trainer._stats["masked"]) == 0
    torch.testing.assert_close(loss, info_nce(anchors, positives, temperature=config.temperature))
