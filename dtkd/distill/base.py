"""The one step every distiller shares.

A distiller owns the student (and, for KD-style methods, a frozen teacher). ``train_step`` is the
whole data path of a step but the optimizer update::

    teacher forward (eval mode) -> student forward -> loss kernel -> student backward

Subclasses only say how the loss and its gradient w.r.t. the student logits are computed
(``loss_and_grad``), as in mdistiller where each method is one small file.

Teacher-logit cache: with ``teacher_cache`` set (a :class:`dtkd.engine.logit_cache.LogitCache`,
attached by ``engine.build_trainer`` per DISTILLER.TEACHER_CACHE) and the batch's sample keys
passed to ``train_step``, the teacher runs only on the samples the cache does not hold, and
stores their logits for the next time (this run's later epochs, the other runs of a sweep).
"""
import numpy as np

from ..nn.grad_mode import no_grad


class Distiller:
    """Base class: ``train_step(x, y, epoch) -> stats``; subclasses define ``loss_and_grad``."""

    name = "base"
    needs_teacher = True
    # The teacher only ever runs in eval mode under no_grad and nothing updates it, so its
    # logits for a sample are fixed: the teacher-logit cache may serve them. A subclass that
    # trains or perturbs its teacher sets this False (DISTILLER.TEACHER_CACHE auto then stays off).
    teacher_is_frozen = True
    teacher_cache = None  # a LogitCache, or None: the teacher runs on every batch

    def __init__(self, student, teacher=None):
        if self.needs_teacher and teacher is None:
            raise ValueError(f"{type(self).__name__}: teacher: a teacher model is required")
        self.student = student
        self.teacher = teacher

    @classmethod
    def from_config(cls, cfg, student, teacher=None):
        """The distiller with its settings from ``cfg`` (the registry in dtkd.distill calls it)."""
        raise NotImplementedError

    def loss_and_grad(self, logits_student, logits_teacher, labels, epoch):
        """Return (loss: float, grad: (N, C) float32 dL/dlogits_student, stats: dict)."""
        raise NotImplementedError

    def parameters(self):
        """What the optimizer updates: the student's parameters (and a distiller's own, e.g.
        CTKD's temperature module)."""
        return self.student.parameters()

    def extra_state_dict(self):
        """The distiller's own trainable state (checkpointed beside the student); {} for most."""
        return {}

    def load_extra_state_dict(self, state):
        if state:
            raise ValueError(f"{type(self).__name__}: has no state of its own, got keys {sorted(state)}")

    def teacher_logits(self, x, keys=None):
        """Teacher forward in eval mode (running BN statistics, no gradient kept). With the
        samples' ``keys`` (a :class:`dtkd.data.Batch`'s ``key``) and a ``teacher_cache``, rows
        the cache holds are read from it and only the rest are computed (then stored)."""
        return self._teacher_logits(x, keys)[0]

    def _teacher_forward(self, x):
        self.teacher.eval()
        with no_grad():  # nothing kept for a backward that never comes; BN folds into convs
            return self.teacher.forward(x)

    def _teacher_logits(self, x, keys):
        """(teacher logits, rows served by the cache or None when it was not consulted)."""
        if self.teacher is None:
            return None, None
        cache = self.teacher_cache
        if cache is None or keys is None:
            return self._teacher_forward(x), None
        keys = np.asarray(keys, np.int64)
        logits, hit = cache.lookup(keys)
        hits = int(hit.sum())
        if hits < len(hit):
            miss = ~hit
            # The teacher gives a sample the same bits in any batch (tested), so running it on
            # the misses alone equals running it on the whole batch.
            computed = self._teacher_forward(x if hits == 0 else np.ascontiguousarray(x[miss]))
            cache.insert(keys[miss], computed)
            logits[miss] = cache.round(computed)  # float16 cache: all rows alike, see round()
        return logits, hits

    def train_step(self, x, y, epoch, keys=None):
        """One step: forward both models, loss kernel, student backward (gradients accumulate in
        the student's parameters; the caller zeroes them and applies the optimizer). ``keys``:
        the batch's sample keys, for the teacher-logit cache (see :meth:`teacher_logits`).

        Returns a dict of statistics: ``loss`` and the separate loss terms, ``logits`` (for the
        trainer's accuracy), for dynamic temperatures ``t_student_mean/min/max``,
        ``t_teacher_mean/min/max`` and ``n_fallback``, and with the cache consulted
        ``n_teacher_cache_hits`` / ``n_teacher_cache_lookups``.
        """
        logits_teacher, hits = self._teacher_logits(x, keys)
        self.student.train()
        logits_student = self.student.forward(x)
        loss, grad, stats = self.loss_and_grad(logits_student, logits_teacher, y, epoch)
        self.student.backward(grad)
        stats = dict(stats)
        if hits is not None:
            stats["n_teacher_cache_hits"] = hits
            stats["n_teacher_cache_lookups"] = len(keys)
        stats["loss"] = float(loss)
        stats["logits"] = logits_student
        return stats

    def __repr__(self):
        return f"{type(self).__name__}(student={type(self.student).__name__})"


def temperature_stats(result):
    """Per-step statistics of the per-sample temperatures of a loss result (Figure 3 data)."""
    ts = np.asarray(result.t_student, dtype=np.float64)
    tt = np.asarray(result.t_teacher, dtype=np.float64)
    return {
        "t_student_mean": float(ts.mean()), "t_student_min": float(ts.min()),
        "t_student_max": float(ts.max()),
        "t_teacher_mean": float(tt.mean()), "t_teacher_min": float(tt.min()),
        "t_teacher_max": float(tt.max()),
        "n_fallback": int(result.n_fallback),
    }
