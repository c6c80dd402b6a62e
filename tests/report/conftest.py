"""A tiny but complete training run (tiny BERT, a few pairs, a small BEIR folder) for the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from _support import make_pairs, make_report_beir


@pytest.fixture(scope="session")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    """The output folder of a 12-step run with evaluation every 4 steps; Trainer.train writes report.html."""
    from contrastkit.encoder import Encoder
    from contrastkit.train import TrainConfig, Trainer
    from contrastkit.train.evaluation import RetrievalEvaluator

    root = tmp_path_factory.mktemp("report-run")
    config = TrainConfig(data="(in memory)", output_dir=str(root / "run"), batch_size=8, lr=1e-3, warmup_ratio=0.25,
                         max_steps=12, checkpoint_every=12, eval_every=4, learnable_temperature=True,
                         show_progress=False, seed=3)
    encoder = Encoder.from_pretrained(tiny_model_dir, max_seq_length=32)
    evaluator = RetrievalEvaluator.from_folder(make_report_beir(root / "beir"))
    return Trainer(config, encoder, make_pairs(), evaluator=evaluator).train()
