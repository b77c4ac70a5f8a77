"""Training engine: :class:`Trainer` (epochs, LR schedule, evaluation, checkpoints, logs,
progress), the LR schedule and evaluation metrics."""
from .metrics import cross_entropy_sum, topk_correct
from .schedule import learning_rate
from .build import build_trainer
from .trainer import OutputDirInUse, Trainer, evaluate, experiment_dir

__all__ = ["Trainer", "OutputDirInUse", "build_trainer", "evaluate", "experiment_dir", "learning_rate", "topk_correct", "cross_entropy_sum"]
