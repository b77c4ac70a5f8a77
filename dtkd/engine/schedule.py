"""Learning-rate schedules, by epoch (epochs count from 1, as in mdistiller)."""
import math

__all__ = ["learning_rate"]


def learning_rate(epoch, base_lr, epochs, schedule="step", decay_stages=(), decay_rate=0.1):
    """The learning rate used throughout ``epoch`` (1-based).

    ``"step"`` is mdistiller's ``adjust_learning_rate``: ``base_lr * decay_rate ** k`` where k is
    the number of stages already passed (``epoch > stage``), so with stages [150, 180, 210]
    epoch 150 still uses ``base_lr`` and epoch 151 uses ``base_lr * rate``.
    ``"cosine"`` anneals from ``base_lr`` at epoch 1 towards 0 after the last epoch:
    ``base_lr * (1 + cos(pi * (epoch - 1) / epochs)) / 2``.
    """
    if epoch < 1:
        raise ValueError(f"epoch: epochs count from 1, got {epoch}")
    if schedule == "step":
        passed = sum(1 for stage in decay_stages if epoch > stage)
        return base_lr * decay_rate ** passed
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    raise ValueError(f"schedule: expected 'step' or 'cosine', got {schedule!r}")
