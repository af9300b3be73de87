"""Running the plugin's jobs: the trainer, checkpoints that survive a kill, inference, export and
the checked inputs and atomic outputs of the tools."""
from .trainer import EVAL_RESULTS, OPTIMIZERS, Trainer

__all__ = ["Trainer", "EVAL_RESULTS", "OPTIMIZERS"]
