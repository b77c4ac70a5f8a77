"""Synchronized BatchNorm: the batch statistics of the whole global batch, split over processes.

In data-parallel training each process holds a shard of the global batch. A plain
:class:`dtkd.nn.BatchNorm2d` normalises each shard with its own statistics (what PyTorch DDP
does by default); :class:`SyncBatchNorm2d` normalises with the statistics of the whole batch, so
K processes compute what one process computes over the global batch. Its forward sums per
channel over the processes (two allreduces: the sum, then the squared deviations about the
global mean -- the same two-pass statistics as the single-process kernel), and its backward
sums ``sum(g)`` and ``sum(g * (x - mean))`` over the processes (one allreduce), the terms by
which every sample's gradient depends on every other sample's. The kernels are
``dtkd._C.batchnorm2d_sync_*`` (csrc/kernels/batchnorm.c).

The group is any object with ``allreduce_sum(array)`` (float64, in place) -- e.g.
:class:`dtkd.distributed.mpi.MPIGroup`, or :class:`LocalGroup` (one process: the same numbers as
BatchNorm2d).
"""
import numpy as np

from .. import _C
from ..nn.batchnorm import BatchNorm2d
from ..nn._checks import check_activation, check_grad

__all__ = ["SyncBatchNorm2d", "LocalGroup", "convert_sync_batchnorm"]


class LocalGroup:
    """A group of one process: allreduce is the identity."""
    rank, size = 0, 1

    def allreduce_sum(self, array):
        return array


class SyncBatchNorm2d(BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch over all processes of
    ``group``. Evaluation mode is BatchNorm2d's (running statistics, no communication); the
    running statistics are the same on every process. Every process must call forward and
    backward the same number of times (collective operations)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, group=None):
        super().__init__(num_features, eps, momentum)
        object.__setattr__(self, "group", group if group is not None else LocalGroup())

    def forward(self, x, residual=None, relu=False):
        if not self.training:
            return super().forward(x, residual, relu)
        check_activation(x, "x", "SyncBatchNorm2d", 4, self.num_features)
        if residual is not None:
            check_activation(residual, "residual", "SyncBatchNorm2d", 4, self.num_features)
            if residual.shape != x.shape:
                raise ValueError(f"SyncBatchNorm2d: residual must have x's shape {x.shape}, "
                                 f"got {residual.shape}")
        C = self.num_features
        # one allreduce: the channel sums and the value count
        first = np.empty(C + 1, np.float64)
        first[:C] = _C.batchnorm2d_sync_stats_forward(x)
        first[C] = x.shape[0] * x.shape[2] * x.shape[3]
        self.group.allreduce_sum(first)
        count = int(round(first[C]))
        if count < 2:
            raise ValueError(f"SyncBatchNorm2d: training needs more than one value per channel "
                             f"over all processes, got {count}")
        sums = first[:C]
        mean32 = (sums / count).astype(np.float32)  # the center the single-process kernel uses
        ssd = _C.batchnorm2d_sync_stats_forward(x, mean32)
        self.group.allreduce_sum(ssd)
        y, mean, invstd = _C.batchnorm2d_sync_forward(
            x, self.weight.data, self.bias.data, self.running_mean, self.running_var,
            self.momentum, self.eps, np.ascontiguousarray(sums), ssd, count, residual, bool(relu))
        self.num_batches_tracked += 1
        self._save_for_backward((x, mean, invstd, True, y if relu else None,
                                 residual is not None, count))
        return y

    def backward(self, grad_out):
        saved = self._saved_for_backward(self._saved)
        if len(saved) == 6:  # an eval-mode forward
            return super().backward(grad_out)
        x, mean, invstd, _, y, has_residual, count = saved
        dy = check_grad(grad_out, x.shape, "SyncBatchNorm2d")
        g = dy if y is None else _C.relu_backward(dy, y)
        sum_g, sum_g_xmu = _C.batchnorm2d_sync_stats_backward(g, x, mean)
        # this process's share of dgamma, dbeta: the gradient allreduce adds the shares up
        self.weight.grad += (sum_g_xmu * invstd).astype(np.float32)
        self.bias.grad += sum_g.astype(np.float32)
        totals = np.concatenate([sum_g, sum_g_xmu])
        self.group.allreduce_sum(totals)
        C = self.num_features
        dx = _C.batchnorm2d_sync_backward(g, x, self.weight.data, mean, invstd,
                                          np.ascontiguousarray(totals[:C]),
                                          np.ascontiguousarray(totals[C:]), count)
        self._saved = None
        return (dx, g) if has_residual else dx

    def extra_repr(self):
        return super().extra_repr() + f", group size {self.group.size}"


def convert_sync_batchnorm(module, group):
    """Turn every BatchNorm2d of ``module`` (in place) into a SyncBatchNorm2d over ``group``,
    keeping its parameters and running statistics. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, BatchNorm2d) and not isinstance(m, SyncBatchNorm2d):
            m.__class__ = SyncBatchNorm2d
            object.__setattr__(m, "group", group)
        elif isinstance(m, SyncBatchNorm2d):
            object.__setattr__(m, "group", group)
    return module
