"""Data-parallel training over MPI (``mpi4py``; ``pip install 'dtkd[mpi]'``)::

    mpirun -n 4 python -m dtkd train --cfg fashion_mnist/dtkd.yaml --distributed mpi
    mpirun -n 2 python -m dtkd train --cfg ... --distributed mpi --sync-bn

Every process (rank) builds the same run from the same config and seed: the same initial weights
(rank 0's are broadcast anyway), the same loader, so the same global batch at every step. Each
rank trains on its shard of the global batch (rows ``[r*B/K, (r+1)*B/K)``, contiguous), then:

* **one fused allreduce per step.** Every parameter gradient is a view into one flat float32
  buffer (:class:`GradientBucket`), which also holds the step's loss in a last slot; a single
  in-place ``MPI_Allreduce(SUM)`` of that buffer gives every rank the gradient of the global
  batch's loss. Each rank back-propagates ``(n_r / n)`` times the gradient of its shard's mean
  loss (its share of the global mean), so the sum over ranks is exactly the global gradient,
  also when the last batch does not split evenly.
* **BatchNorm.** Default: per-rank statistics (each shard normalised by its own mean and
  variance, as PyTorch DDP does; the running statistics of rank 0 are the ones kept: they are
  broadcast before every evaluation and are what rank 0 saves). ``--sync-bn``: synchronized
  statistics over the global batch (:class:`dtkd.distributed.SyncBatchNorm2d`: two small
  allreduces in the forward and one in the backward of each BN layer), so K ranks compute what
  one process computes on the global batch.
* **Evaluation** is split over the ranks (test batch ``k`` on rank ``k mod K``) and the counts
  summed, so every rank gets the same accuracy.
* **Only rank 0 writes**: checkpoints, logs, probe, config copy, progress lines.

With a fixed seed, ``--sync-bn`` and K ranks over a global batch of 64 give the weights one
process gets over the same 64 samples, to float rounding (the order of sums differs); with
per-rank statistics they match one process that normalises each half-batch separately
(tests/test_mpi.py checks both with ``mpirun -n 2``).
"""
import numpy as np

from ..engine.trainer import Trainer, _EpochMeter
from ..engine.metrics import cross_entropy_sum, topk_correct
from ..nn.grad_mode import no_grad

__all__ = ["MPIGroup", "GradientBucket", "MPITrainer", "build_mpi_trainer", "MPI_INSTALL"]

MPI_INSTALL = ("pip install 'dtkd[mpi]' (mpi4py) and an MPI: apt-get install openmpi-bin "
               "libopenmpi-dev")


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"--distributed mpi needs mpi4py and an MPI library ({e}): "
                          f"{MPI_INSTALL}") from None
    return MPI


class MPIGroup:
    """The processes of an MPI communicator (default ``COMM_WORLD``) as dtkd uses them:
    in-place sums, broadcasts and the merge of small Python objects."""

    def __init__(self, comm=None):
        self.MPI = _mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def allreduce_sum(self, array):
        """Sum ``array`` (a C-contiguous NumPy array) over the processes, in place."""
        if self.size > 1:
            self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array

    def broadcast(self, array, root=0):
        """Overwrite ``array`` (in place) with ``root``'s."""
        if self.size > 1:
            self.comm.Bcast(array, root=root)
        return array

    def allgather(self, obj):
        return self.comm.allgather(obj) if self.size > 1 else [obj]

    def abort(self, code=1):
        self.comm.Abort(code)


class GradientBucket:
    """Every parameter's ``.grad`` re-pointed into one flat float32 buffer (copying the current
    values), plus ``extra`` trailing slots for per-step scalars, so one allreduce of ``flat``
    reduces them all, in place. The optimizer's ``zero_grad`` fills the views in place and keeps
    them."""

    def __init__(self, params, extra=0):
        params = list(params)
        sizes = [p.grad.size for p in params]
        self.flat = np.zeros(sum(sizes) + int(extra), np.float32)
        self.n_grad = sum(sizes)
        offset = 0
        for p, n in zip(params, sizes):
            view = self.flat[offset: offset + n].reshape(p.grad.shape)
            view[...] = p.grad
            p.grad = view
            offset += n
        self.extra = self.flat[self.n_grad:]

    @property
    def nbytes(self):
        return self.flat.nbytes


class MPITrainer(Trainer):
    """A :class:`dtkd.engine.Trainer` whose every step is one data-parallel step over ``group``
    (see the module's docstring). Build it with :func:`build_mpi_trainer`."""

    def __init__(self, cfg, distiller, train_loader, val_loader, out_dir, group, progress=None,
                 optimizer=None, sync_bn=False):
        super().__init__(cfg, distiller, train_loader, val_loader, out_dir,
                         progress=progress if group.rank == 0 else False, optimizer=optimizer)
        self.group = group
        self.sync_bn = bool(sync_bn)
        self.writes_files = group.rank == 0
        if sync_bn:
            from .syncbn import convert_sync_batchnorm
            convert_sync_batchnorm(self.student, group)
        # the same initial weights and buffers everywhere (they already are, from the seed)
        for array in self._state_arrays():
            group.broadcast(array)
        self.bucket = GradientBucket(self.optimizer.params, extra=1)
        self._share = 1.0  # n_r / n of the current step
        original = distiller.loss_and_grad

        def loss_and_grad(*args, **kwargs):
            loss, grad, stats = original(*args, **kwargs)
            if self._share != 1.0:
                grad = grad * np.float32(self._share)
            return loss, grad, stats

        distiller.loss_and_grad = loss_and_grad  # each rank back-propagates its share

    def _state_arrays(self):
        arrays = [p.data for p in self.student.parameters()]
        arrays += [b for _, b in self.student.named_buffers() if b.dtype.kind == "f"]
        return arrays

    # ------------------------------------------------------------------------------------------
    def _local_batch(self, x, y, keys):
        n, K, r = len(y), self.group.size, self.group.rank
        if n < K:
            raise ValueError(f"a batch of {n} samples cannot be split over {K} processes: "
                             f"SOLVER.BATCH_SIZE and the dataset size modulo it must be >= {K} "
                             "(or 0)")
        lo, hi = r * n // K, (r + 1) * n // K
        self._share = (hi - lo) / n
        return (np.ascontiguousarray(x[lo:hi]), y[lo:hi],
                None if keys is None else keys[lo:hi])

    def _after_backward(self, stats):
        # the loss of the global batch rides in the gradient buffer's last slot
        self.bucket.extra[0] = float(stats["loss"]) * self._share
        self.group.allreduce_sum(self.bucket.flat)
        return float(self.bucket.extra[0])

    def _epoch_results(self, meter):
        merged = _merge_meters(self.group.allgather(meter.__dict__))
        return merged.results()

    def evaluate(self, loader=None):
        """Test batches split over the ranks, counts summed: every rank gets the same result.
        Per-rank BatchNorm: rank 0's running statistics are used (broadcast first)."""
        if not self.sync_bn:
            for _, buffer in self.student.named_buffers():
                if buffer.dtype.kind == "f":
                    self.group.broadcast(buffer)
        loader = self.val_loader if loader is None else loader
        model = self.student
        was_training = getattr(model, "training", True)
        model.eval()
        totals = np.zeros(4, np.float64)  # correct top-1, top-5, loss sum, n
        try:
            for k, (x, y) in enumerate(loader):
                if k % self.group.size != self.group.rank:
                    continue
                with no_grad():
                    logits = model.forward(x)
                c1, c5 = topk_correct(logits, y, (1, 5))
                totals += (c1, c5, cross_entropy_sum(logits, y), len(y))
        finally:
            if was_training:
                model.train()
        self.group.allreduce_sum(totals)
        n = totals[3]
        if n == 0:
            raise ValueError("evaluate: the loader yielded no samples")
        return {"top1": 100.0 * totals[0] / n, "top5": 100.0 * totals[1] / n,
                "loss": totals[2] / n, "n": int(n)}


def _merge_meters(states):
    """One _EpochMeter from the per-rank meters' states (sums and counts add, min/max)."""
    out = _EpochMeter()
    for st in states:
        out.n += st["n"]
        for key, value in st["sums"].items():
            out.sums[key] = out.sums.get(key, 0.0) + value
        for key, value in st["counts"].items():
            out.counts[key] = out.counts.get(key, 0) + value
        for key, value in st["mins"].items():
            out.mins[key] = min(out.mins.get(key, value), value)
        for key, value in st["maxs"].items():
            out.maxs[key] = max(out.maxs.get(key, value), value)
        out.correct1 += st["correct1"]
        out.correct5 += st["correct5"]
        out.n_logits += st["n_logits"]
    return out


def build_mpi_trainer(cfg, out_dir=None, progress=None, sync_bn=False, group=None):
    """:func:`dtkd.engine.build_trainer` for this MPI process: an :class:`MPITrainer`."""
    from ..engine.build import build_trainer
    group = group if group is not None else MPIGroup()
    base = build_trainer(cfg, out_dir=out_dir, progress=False)
    n, bs = len(base.train_loader.dataset), cfg.SOLVER.BATCH_SIZE
    last = n % bs
    if bs < group.size or 0 < last < group.size:
        raise ValueError(f"SOLVER.BATCH_SIZE: batches of {bs} (last one {last or bs}) cannot be "
                         f"split over {group.size} processes; every batch needs >= "
                         f"{group.size} samples")
    return MPITrainer(base.cfg, base.distiller, base.train_loader, base.val_loader,
                      base.out_dir, group, progress=progress, sync_bn=sync_bn)
