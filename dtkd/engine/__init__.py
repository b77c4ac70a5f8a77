"""Training engine: :class:`Trainer` (epochs, LR schedule, evaluation, checkpoints, logs,
progress), the LR schedule, evaluation metrics and the on-disk cache of trained teachers."""
from .metrics import cross_entropy_sum, topk_correct
from .schedule import learning_rate
from .build import build_trainer
from .teacher_cache import CachedTeacher, cached_teacher, config_digest
from .trainer import OutputDirInUse, Trainer, evaluate, experiment_dir, read_log, read_probe

__all__ = ["Trainer", "OutputDirInUse", "build_trainer", "evaluate", "experiment_dir",
           "learning_rate", "topk_correct", "cross_entropy_sum", "CachedTeacher", "cached_teacher",
           "config_digest", "read_log", "read_probe"]
