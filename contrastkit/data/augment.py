"""Text augmentations for self-supervised pairs: pure functions of (text, random generator) → text.

An augmentation perturbs one view of a pair so the model must match the two views on meaning rather
than on surface form. Each is a small pure function; `parse_augmentation` builds a chain from a
spec such as ``"word_deletion:0.1,span_masking:0.1"`` (the CLI's ``--augment``).

Word deletion is the augmentation Contriever found best alongside cropping (Izacard et al. 2022,
deletion probability 0.1); span masking replaces a run of words with the tokenizer's mask token
(as in SpanBERT / Contriever's ablations).

@article{izacard2022contriever,
  title={Unsupervised Dense Information Retrieval with Contrastive Learning},
  author={Gautier Izacard and Mathilde Caron and Lucas Hosseini and Sebastian Riedel and Piotr Bojanowski
          and Armand Joulin and Edouard Grave},
  journal={TMLR}, year={2022}
}
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from contrastkit.errors import ConfigError

Augmentation = Callable[[str, np.random.Generator], str]
MASK_TOKEN = "[MASK]"  # BERT-family tokenizers (all-MiniLM-L6-v2) map it to one special token


def word_deletion(text: str, rng: np.random.Generator, p: float = 0.1) -> str:
    """Drop each whitespace-separated word with probability `p`; at least one word is always kept."""
    words = text.split()
    if not words:
        return text
    keep = rng.random(len(words)) >= p
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return " ".join(w for w, k in zip(words, keep) if k)


def span_masking(text: str, rng: np.random.Generator, ratio: float = 0.1, mask_token: str = MASK_TOKEN) -> str:
    """Replace one contiguous span of about `ratio` of the words (at least one) with `mask_token` each."""
    words = text.split()
    if len(words) < 2:  # masking the only word would leave nothing to match on
        return text
    length = min(len(words) - 1, max(1, round(ratio * len(words))))
    start = int(rng.integers(len(words) - length + 1))
    words[start:start + length] = [mask_token] * length
    return " ".join(words)


AUGMENTATIONS: dict[str, Callable[..., str]] = {"word_deletion": word_deletion, "span_masking": span_masking}


def chain(augmentations: Sequence[Augmentation]) -> Augmentation:
    """One augmentation applying `augmentations` in order, all drawing from the same generator."""
    def chained(text: str, rng: np.random.Generator) -> str:
        for augment in augmentations:
            text = augment(text, rng)
        return text
    return chained


def parse_augmentation(spec: str | None, mask_token: str | None = MASK_TOKEN) -> Augmentation | None:
    """``"word_deletion:0.1,span_masking:0.2"`` → one augmentation (None for None, "" or "none").

    The number after the colon is the strength (deletion probability, masked fraction); without it
    the function's default is used. `mask_token`: what span masking writes, the model's tokenizer's
    (BERT's "[MASK]" by default; RoBERTa and MPNet write "<mask>"); None, for a tokenizer without
    one, refuses span masking.
    """
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    parts: list[Augmentation] = []
    for item in spec.split(","):
        name, _, value = (part.strip() for part in item.partition(":"))
        if name not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}")
        augmentation = AUGMENTATIONS[name]
        if name == "span_masking":
            if mask_token is None:
                raise ConfigError("span_masking writes the tokenizer's mask token, and this model's tokenizer has "
                                  "none; use word_deletion")
            augmentation = functools.partial(span_masking, mask_token=mask_token)
        if not value:
            parts.append(augmentation)
            continue
        try:
            strength = float(value)
        except ValueError:
            raise ConfigError(f"augmentation {name!r}: strength must be a number in [0, 1), got {value!r}") from None
        if not 0 <= strength < 1:
            raise ConfigError(f"augmentation {name!r}: strength must be in [0, 1), got {strength}")
        parts.append(functools.partial(augmentation, **{"p" if name == "word_deletion" else "ratio": strength}))
    return chain(parts)
