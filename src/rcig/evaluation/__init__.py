"""Scoring support sets: augmentations, the paper's protocol, and the baselines."""

from rcig.augment import augment_batch
from rcig.evaluation.baselines import baseline_set, herding, random_real
from rcig.evaluation.protocol import ProtocolSettings, accuracy, evaluate_support, learning_rate, train_models
from rcig.evaluation.suite import evaluate, format_scores

__all__ = ["ProtocolSettings", "accuracy", "augment_batch", "baseline_set", "evaluate",
           "evaluate_support", "format_scores", "herding", "learning_rate", "random_real", "train_models"]
