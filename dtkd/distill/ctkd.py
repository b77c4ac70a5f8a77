"""CTKD (Li et al., "Curriculum Temperature for Knowledge Distillation", AAAI 2023): KD whose
temperature is learned adversarially, the baseline the DTKD paper compares its dynamic
temperature with.

A temperature module predicts a raw value o (one global parameter, or per sample an MLP over
the teacher's and the student's logits); the temperature is ``T = T_START + T_END sigmoid(o)``.
The loss is mdistiller's KD at that temperature::

    L = CE_WEIGHT CE(s, y) + KD_WEIGHT T^2 KL(softmax(t/T) || softmax(s/T))

The student descends L. The temperature module sits behind a gradient-reversal layer (Ganin &
Lempitsky 2015: the identity forward, the gradient times lambda backward) with lambda <= 0, so
the same optimizer step moves the temperature to *increase* L (the curriculum: harder as
|lambda| grows). lambda follows CTKD's CosineDecay over the epochs: ``lambda(e) =
DECAY_MIN + (DECAY_MAX - DECAY_MIN) (1 + cos(pi min(e, DECAY_LOOPS) / DECAY_LOOPS)) / 2``
(0 -> -1 over 10 epochs by default; linear with COSINE_DECAY false).

The loss and its temperature gradient are one C kernel (``losses.kd_temperature``). The instance
MLP's inputs are the logits as constants (no gradient flows from the temperature module into
the student: its gradient would be reversed along with the temperature's).
"""
import math

import numpy as np

from .. import losses
from .. import nn
from .base import Distiller

MODULES = ("global", "instance")


def gradient_reversal_lambda(epoch, decay_max=0.0, decay_min=-1.0, loops=10, cosine=True):
    """CTKD's lambda for ``epoch``: from ``decay_max`` at epoch 0 to ``decay_min`` at ``loops``
    (and after), along a half cosine (or linearly)."""
    e = min(max(float(epoch), 0.0), float(loops))
    frac = e / loops if loops > 0 else 1.0
    weight = (math.cos(math.pi * frac) + 1.0) / 2.0 if cosine else 1.0 - frac
    return decay_min + (decay_max - decay_min) * weight


class GlobalTemperature(nn.Module):
    """One learnable raw temperature for every sample (CTKD's Global_T)."""

    def __init__(self, init=1.0):
        super().__init__()
        self.global_T = nn.Parameter(np.array([init], dtype=np.float32))

    def forward(self, logits_teacher, logits_student):
        return np.full(len(logits_student), self.global_T.data[0], dtype=np.float32)

    def backward(self, grad_out):
        self.global_T.grad += np.float32(np.sum(grad_out, dtype=np.float64))
        return None


class InstanceTemperature(nn.Module):
    """A raw temperature per sample from a two-layer MLP over the concatenated (teacher,
    student) logits (CTKD's instance-wise temperature)."""

    def __init__(self, num_classes, hidden=256, rng=None):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * num_classes, hidden, rng=rng), nn.ReLU(),
                                 nn.Linear(hidden, 1, rng=rng))

    def forward(self, logits_teacher, logits_student):
        x = np.concatenate([logits_teacher, logits_student], axis=1).astype(np.float32)
        return self.mlp.forward(np.ascontiguousarray(x))[:, 0]

    def backward(self, grad_out):
        self.mlp.backward(np.ascontiguousarray(grad_out, dtype=np.float32)[:, None])
        return None


class CTKD(Distiller):
    """KD with CTKD's adversarially learned temperature (``mlp``: 'global' or 'instance').

    Defaults are CTKD's CIFAR script's (CE 0.1, KD 0.9, T in (1, 21), lambda 0 -> -1 over 10
    epochs by a cosine). Per-step stats: the loss terms, the temperature (``t_student_*`` =
    ``t_teacher_*``: one T for both) and ``ctkd_lambda``.
    """

    name = "CTKD"

    def __init__(self, student, teacher, mlp="global", t_start=1.0, t_end=20.0, init=1.0,
                 hidden=256, cosine_decay=True, decay_max=0.0, decay_min=-1.0, decay_loops=10,
                 ce_weight=0.1, kd_weight=0.9, num_classes=None, seed=0):
        super().__init__(student, teacher)
        if mlp == "global":
            self.temperature_module = GlobalTemperature(init)
        elif mlp == "instance":
            if num_classes is None:
                num_classes = _num_classes(student)
            self.temperature_module = InstanceTemperature(num_classes, hidden,
                                                          rng=np.random.default_rng(seed))
        else:
            raise ValueError(f"mlp: expected one of {MODULES}, got {mlp!r}")
        self.mlp = mlp
        self.t_start, self.t_end = float(t_start), float(t_end)
        if not (self.t_start > 0 and self.t_end >= 0):
            raise ValueError(f"t_start, t_end: need t_start > 0 and t_end >= 0 (temperatures "
                             f"T_START + T_END sigmoid(.) > 0), got {t_start}, {t_end}")
        self.cosine_decay = bool(cosine_decay)
        self.decay_max, self.decay_min = float(decay_max), float(decay_min)
        self.decay_loops = int(decay_loops)
        self.ce_weight, self.kd_weight = float(ce_weight), float(kd_weight)

    @classmethod
    def from_config(cls, cfg, student, teacher=None):
        c = cfg.CTKD
        return cls(student, teacher, mlp=c.MLP, t_start=c.T_START, t_end=c.T_END, init=c.INIT,
                   hidden=c.HIDDEN, cosine_decay=c.COSINE_DECAY, decay_max=c.DECAY_MAX,
                   decay_min=c.DECAY_MIN, decay_loops=c.DECAY_LOOPS, ce_weight=c.CE_WEIGHT,
                   kd_weight=c.KD_WEIGHT, seed=cfg.SEED)

    def parameters(self):
        yield from self.student.parameters()
        yield from self.temperature_module.parameters()

    def extra_state_dict(self):
        return {f"temperature_module.{k}": v for k, v in self.temperature_module.state_dict().items()}

    def load_extra_state_dict(self, state):
        prefix = "temperature_module."
        self.temperature_module.load_state_dict(
            {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})

    def gradient_reversal_lambda(self, epoch):
        return gradient_reversal_lambda(epoch, self.decay_max, self.decay_min, self.decay_loops,
                                        self.cosine_decay)

    def temperatures(self, logits_teacher, logits_student):
        """-> (T (N,) float32, sigmoid of the raw output): the module's forward."""
        raw = np.asarray(self.temperature_module.forward(logits_teacher, logits_student),
                         dtype=np.float64)
        sig = 0.5 * (1.0 + np.tanh(0.5 * raw))  # sigmoid without overflow
        return (self.t_start + self.t_end * sig).astype(np.float32), sig

    def loss_and_grad(self, logits_student, logits_teacher, labels, epoch):
        lam = self.gradient_reversal_lambda(epoch)
        temps, sig = self.temperatures(logits_teacher, logits_student)
        ce = losses.cross_entropy(logits_student, labels)
        kd = losses.kd_temperature(logits_student, logits_teacher, temps)
        loss = self.ce_weight * ce.loss + self.kd_weight * kd.loss
        grad = self.ce_weight * ce.grad + self.kd_weight * kd.grad
        # d loss / d raw, then through the gradient-reversal layer (times lambda <= 0)
        d_raw = self.kd_weight * kd.grad_temperature * (self.t_end * sig * (1.0 - sig))
        self.temperature_module.backward((lam * d_raw).astype(np.float32))
        t = temps.astype(np.float64)
        stats = {"loss_ce": ce.loss, "loss_kd": kd.loss, "ctkd_lambda": lam,
                 "t_student_mean": float(t.mean()), "t_student_min": float(t.min()),
                 "t_student_max": float(t.max()),
                 "t_teacher_mean": float(t.mean()), "t_teacher_min": float(t.min()),
                 "t_teacher_max": float(t.max())}
        return loss, grad, stats


def _num_classes(student):
    """The output width of a model's last Linear layer (the instance MLP's input is 2x it)."""
    width = None
    for m in student.modules():
        if isinstance(m, nn.Linear):
            width = m.weight.data.shape[0]
    if width is None:
        raise ValueError("student: has no Linear layer to read the number of classes from; "
                         "pass num_classes")
    return width
