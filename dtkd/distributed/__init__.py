"""Training beyond one process: data parallelism over MPI (:mod:`dtkd.distributed.mpi`, needs
``mpi4py``: ``pip install 'dtkd[mpi]'``) and synchronized BatchNorm
(:mod:`dtkd.distributed.syncbn`). Sweeps on Ray are :mod:`dtkd.sweep`."""
from .syncbn import LocalGroup, SyncBatchNorm2d, convert_sync_batchnorm

__all__ = ["LocalGroup", "SyncBatchNorm2d", "convert_sync_batchnorm"]
