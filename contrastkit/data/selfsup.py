"""Self-supervised training pairs from a raw corpus: no query, no label, only documents.

Each strategy is a pure function ``(documents, *, seed, augment) -> list[Pair]``, deterministic in
the seed, giving at most one pair per document (so strategies train on comparable budgets):

- ``dropout``: SimCSE's unsupervised views (Gao et al. 2021). The anchor and the positive are the
  *same string*; they differ only because dropout draws different masks in the two forward passes
  (the trainer embeds anchors and positives in separate passes, each with its own RNG state).
- ``crop``: Contriever's independent cropping (Izacard et al. 2022). Two spans of a document, each
  of a length drawn uniformly between 10 % and 50 % of its words and started anywhere, drawn
  independently: they may overlap, touch or lie far apart.
- ``title-body``: the title is the anchor, the body the positive (as in the title–body pairs of
  E5's and GTR's weakly supervised data, Wang et al. 2022). Only documents with a title; a body that
  begins with its own title (Cranfield's do) has it cut off, or the pair would be trivial.
- ``neighbours``: two adjacent sentences of one document (Skip-Thought's neighbouring-sentence
  signal, Kiros et al. 2015, in its contrastive form, Logeswaran & Lee 2018, "Quick-Thought").

An `augment` function (see `contrastkit.data.augment`) perturbs each view independently.

@inproceedings{gao2021simcse,
  title={SimCSE: Simple Contrastive Learning of Sentence Embeddings},
  author={Tianyu Gao and Xingcheng Yao and Danqi Chen}, booktitle={EMNLP}, year={2021}
}
@article{izacard2022contriever,
  title={Unsupervised Dense Information Retrieval with Contrastive Learning},
  author={Gautier Izacard and Mathilde Caron and Lucas Hosseini and Sebastian Riedel and Piotr Bojanowski
          and Armand Joulin and Edouard Grave}, journal={TMLR}, year={2022}
}
@article{wang2022e5,
  title={Text Embeddings by Weakly-Supervised Contrastive Pre-training},
  author={Liang Wang and Nan Yang and Xiaolong Huang and Binxing Jiao and Linjun Yang and Daxin Jiang
          and Rangan Majumder and Furu Wei}, journal={arXiv:2212.03533}, year={2022}
}
@inproceedings{logeswaran2018quickthought,
  title={An efficient framework for learning sentence representations},
  author={Lajanugen Logeswaran and Honglak Lee}, booktitle={ICLR}, year={2018}
}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from contrastkit.data.augment import Augmentation
from contrastkit.data.corpus import Document
from contrastkit.data.pairs import Pair
from contrastkit.errors import ConfigError

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def split_sentences(text: str, min_words: int = 3) -> list[str]:
    """Sentences of `text` by a simple rule: split after . ! ? followed by space, and at blank lines.

    A fragment shorter than `min_words` words ("see fig." before "3 shows ...", "e.g.") is joined to
    the piece after it (the last one to the sentence before). No language model, no download; good
    enough to find neighbours.
    """
    sentences: list[str] = []
    carry = ""
    for piece in _SENTENCE_END.split(text):
        piece = " ".join(f"{carry} {piece}".split())
        if len(piece.split()) < min_words:
            carry = piece
            continue
        sentences.append(piece)
        carry = ""
    if carry:
        if sentences:
            sentences[-1] = f"{sentences[-1]} {carry}"
        else:
            sentences.append(carry)
    return sentences


def _full_text(doc: Document) -> str:
    """The text the model sees for a document (as evaluation encodes it): title + " " + body."""
    return f"{doc.title} {doc.text}".strip()


def _pair(doc: Document, anchor: str, positive: str, strategy: str, rng: np.random.Generator,
          augment: Augmentation | None) -> Pair:
    if augment is not None:
        anchor, positive = augment(anchor, rng), augment(positive, rng)
    return Pair(anchor=anchor, positive=positive, anchor_id=doc.id, positive_id=doc.id, source=strategy)


def dropout_views(documents: Sequence[Document], *, seed: int = 0,
                  augment: Augmentation | None = None) -> list[Pair]:
    """SimCSE (Gao et al. 2021): each document paired with itself; dropout alone makes the two views differ.

    Without `augment`, anchor and positive are identical strings: the model's dropout (on in training)
    is the only noise, which is the point. The seed only drives `augment`.
    """
    rng = np.random.default_rng(seed)
    return [_pair(doc, _full_text(doc), _full_text(doc), "dropout", rng, augment) for doc in documents]


def independent_crops(documents: Sequence[Document], *, seed: int = 0, augment: Augmentation | None = None,
                      min_ratio: float = 0.1, max_ratio: float = 0.5, min_words: int = 8) -> list[Pair]:
    """Contriever (Izacard et al. 2022): two independent random spans of each document.

    Each span's length is drawn uniformly in [min_ratio, max_ratio] × the document's words (at least
    `min_words`) and its start uniformly among the positions where it fits. Documents of `min_words`
    words or fewer give no pair (their two crops would be the whole text twice); where the two spans
    come out the same text, the second is drawn again (up to 10 times), else the document gives none.
    Words are split on whitespace: text written without spaces (Chinese, Japanese) is one word.
    """
    if not 0 < min_ratio <= max_ratio <= 1:
        raise ConfigError(f"crop ratios need 0 < min_ratio <= max_ratio <= 1; got {min_ratio}, {max_ratio}")
    rng = np.random.default_rng(seed)
    pairs = []
    for doc in documents:
        words = _full_text(doc).split()
        if len(words) <= min_words:
            continue

        def crop() -> str:
            length = min(len(words), max(min_words, round(rng.uniform(min_ratio, max_ratio) * len(words))))
            start = int(rng.integers(len(words) - length + 1))
            return " ".join(words[start:start + length])

        first, second = crop(), crop()
        for _ in range(10):
            if second != first:
                break
            second = crop()
        if second != first:
            pairs.append(_pair(doc, first, second, "crop", rng, augment))
    return pairs


def title_body(documents: Sequence[Document], *, seed: int = 0, augment: Augmentation | None = None) -> list[Pair]:
    """Title → body pairs (the title–body signal of E5's weak supervision, Wang et al. 2022).

    Only documents with a title and a body; a body that starts with its own title has it removed
    (Cranfield repeats each title as its first sentence: keeping it would make the positive trivial).
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for doc in documents:
        body = doc.text
        rest = body[len(doc.title):]
        # the title as the body's first words, not the start of a longer word ("Air" in "Airplanes ...")
        if doc.title and body.lower().startswith(doc.title.lower()) and not (rest[:1].isalnum() or rest[:1] == "_"):
            body = rest.strip()
        if doc.title and body:
            pairs.append(_pair(doc, doc.title, body, "title-body", rng, augment))
    return pairs


def neighbour_sentences(documents: Sequence[Document], *, seed: int = 0,
                        augment: Augmentation | None = None) -> list[Pair]:
    """Two adjacent sentences of a document (Quick-Thought, Logeswaran & Lee 2018): one random neighbour pair per document.

    Sentences come from `split_sentences` on the body (the title is not a sentence of it); documents
    with a single sentence give no pair.
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for doc in documents:
        sentences = split_sentences(doc.text)
        if len(sentences) < 2:
            continue
        i = int(rng.integers(len(sentences) - 1))
        pairs.append(_pair(doc, sentences[i], sentences[i + 1], "neighbours", rng, augment))
    return pairs


Strategy = Callable[..., list[Pair]]
STRATEGIES: dict[str, Strategy] = {"dropout": dropout_views, "crop": independent_crops,
                                   "title-body": title_body, "neighbours": neighbour_sentences}


def self_supervised_pairs(documents: Sequence[Document], strategy: str, *, seed: int = 0,
                          augment: Augmentation | None = None) -> list[Pair]:
    """The pairs of one named strategy (see STRATEGIES); a ConfigError for an unknown name or no pair at all."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    pairs = STRATEGIES[strategy](documents, seed=seed, augment=augment)
    if not pairs:
        need = {"title-body": "documents with a title and a body",
                "neighbours": "documents of two sentences or more (a sentence ends with . ! or ?)",
                "crop": "documents of more than 8 words (split on spaces: text written without them, such as "
                        "Chinese or Japanese, is one word)"}.get(strategy, "documents")
        raise ConfigError(f"strategy {strategy!r} found no pair in {len(documents):,} documents: it needs {need}")
    return pairs
