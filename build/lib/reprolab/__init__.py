"""reprolab: a reproducible DVC + Optuna + MLflow pipeline for PyTorch models."""

__version__ = "0.1.0"
