"""Shared fixtures: a tiny randomly initialised BERT for fast tests, the real default model for a few."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from _support import build_tiny_bert_folder

# bf16 autocast by default only where the hardware has bf16 (contrastkit.devices.native_bf16): the tests
# compute in fp32 on every machine, in their own process and in the ones they start
os.environ["CONTRASTKIT_NATIVE_BF16"] = "0"
# the same for the dense layers' fp32 kernel (contrastkit.fast_linear): torch's matmul unless a test asks
os.environ["CONTRASTKIT_ONEDNN_LINEAR"] = "0"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A plain Hugging Face folder with a tiny random BERT (session-wide, read-only by convention)."""
    return build_tiny_bert_folder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def tiny_encoder(tiny_model_dir):
    """A fresh tiny Encoder (mean pooling, normalised, max_seq_length 64) for each test."""
    from contrastkit.encoder import Encoder

    return Encoder.from_pretrained(tiny_model_dir, max_seq_length=64)


@pytest.fixture(scope="session")
def default_encoder():
    """The real all-MiniLM-L6-v2 (loaded once per session); for the few end-to-end tests."""
    from contrastkit.encoder import Encoder

    return Encoder.from_pretrained("default")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, the read-only real data sets (Cranfield, debian-packages)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data expected at {SHARED_DATA.resolve()}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _private_embedding_cache(tmp_path, monkeypatch):
    """Tests never read or write the user's embedding cache."""
    monkeypatch.setenv("CONTRASTKIT_CACHE", str(tmp_path / "contrastkit-cache"))
