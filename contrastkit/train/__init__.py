"""Training: the loop, gradient caching, batch sampling and checkpoints."""

from contrastkit.train.config import TrainConfig, load_config
from contrastkit.train.evaluation import RetrievalEvaluator
from contrastkit.train.trainer import Trainer, TrainingError, load_training_pairs

__all__ = ["RetrievalEvaluator", "TrainConfig", "Trainer", "TrainingError", "load_config", "load_training_pairs"]
