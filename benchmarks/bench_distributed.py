"""Scaling of dtkd's distributed paths (issue 14), three parts:

  sweep   a 12-trial tiny Ray Tune sweep (Fashion-MNIST-shaped random images, resnet20 ->
          resnet8, DTKD) on a local Ray of 1 CPU, then of 2 CPUs (1 CPU and 1 thread per
          trial): wall time and ratio. The teacher is trained (cached) first, so both sweeps
          time the trials only.
  mpi     `mpirun -n K python -m dtkd train --distributed mpi` for K = 1, 2 (and K = 2 with
          --sync-bn): training images/s of the second epoch (from log.jsonl's train_time_s),
          one thread per rank.
  project per-step compute of CIFAR-100 resnet32x4 -> resnet8x4 (DTKD step: teacher forward,
          student forward/backward, SGD) measured at per-node batches 64, 8 and 1, the allreduce
          size (resnet8x4's gradients + 1 float) and a 2-rank allreduce measured here; then an
          alpha-beta model of the epoch time on 8 and 64 nodes (the model is printed with the
          table).

    python benchmarks/bench_distributed.py [--parts sweep mpi project] [--steps 2]
        [--out results.json]

The machine is shared: every figure here is "measured under load" (the load average is printed
with each part), and a ratio from a loaded run is not a final speed-up.
"""
import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

TINY = ["DATASET.SUBSET", "256", "DATASET.TEST.SUBSET", "64", "SOLVER.EPOCHS", "2",
        "SOLVER.BATCH_SIZE", "64", "LOG.PROBE_SAMPLES", "0"]
CIFAR_TRAIN = 50000
GLOBAL_BATCH = 64


def load():
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def fmnist(root, train=1024, test=128):
    from test_data import make_fmnist
    make_fmnist(root, "train", n=train, seed=1)
    make_fmnist(root, "test", n=test, seed=2)
    return root


# ---- sweep ----------------------------------------------------------------------------------

def part_sweep(work):
    from dtkd.sweep import run_sweep
    from dtkd.testing.sweep import Sweep
    data = fmnist(work / "data")
    overrides = ["DATASET.ROOT", str(data), *TINY, "NUM_THREADS", "1"]
    cache = work / "cache"
    Sweep(work / "warm", cache_root=cache, overrides=overrides).teacher("resnet20")
    grid = {"grid": {"DTKD.T": [2, 4, 8], "SEED": [0, 1], "DTKD.ALPHA": [0.5, 1.0]},
            "retries": 0}
    rows = []
    for cpus in (1, 2):
        start = time.perf_counter()
        out = run_sweep("fashion_mnist/dtkd.yaml", grid, work / f"sweep{cpus}",
                        overrides=overrides, cache_root=cache, num_cpus=cpus)
        wall = time.perf_counter() - start
        trial_s = sum(r.get("seconds") or 0 for r in out.rows)
        rows.append({"workers": cpus, "trials": len(out.rows), "failed": len(out.failed),
                     "wall_s": wall, "tune_s": out.seconds, "sum_trial_s": trial_s,
                     "load": load()})
    rows[1]["ratio_1_over_2"] = rows[0]["wall_s"] / rows[1]["wall_s"]
    print("\n### Ray sweep: 12 tiny trials (resnet20 -> resnet8, 256 images, 2 epochs)\n")
    print("| Ray workers (CPUs) | trials | failed | wall s (incl. Ray start) | Tune s | sum of "
          "trial run s | load 1/5/15 |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['trials']} | {r['failed']} | {r['wall_s']:.1f} | "
              f"{r['tune_s']:.1f} | {r['sum_trial_s']:.1f} | {r['load']} |")
    print(f"\nwall-time ratio 1 worker / 2 workers: {rows[1]['ratio_1_over_2']:.2f}x")
    return rows


# ---- mpi ------------------------------------------------------------------------------------

def part_mpi(work):
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        print("mpi: skipped, no mpirun")
        return []
    data = fmnist(work / "mdata")
    overrides = ["DATASET.ROOT", str(data), "DATASET.SUBSET", "1024", "DATASET.TEST.SUBSET",
                 "128", "SOLVER.EPOCHS", "2", "SOLVER.BATCH_SIZE", "64", "LOG.PROBE_SAMPLES",
                 "0", "NUM_THREADS", "1", "DISTILLER.TYPE", "NONE"]
    rows = []
    # OpenMPI busy-polls while it waits in a collective, which takes CPU from the other rank
    # on a loaded machine; mpi_yield_when_idle makes the waiting rank yield instead.
    yield_ = ["--mca", "mpi_yield_when_idle", "1"]
    cases = ((1, [], []), (2, [], []), (2, ["--sync-bn"], []), (2, [], yield_),
             (2, ["--sync-bn"], yield_))
    for k, (ranks, extra, mca) in enumerate(cases):
        out = work / f"mpi{k}"
        cmd = [mpirun, "-n", str(ranks)] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
        cmd += ["--oversubscribe", *mca, "-x", "OMP_NUM_THREADS=1", sys.executable, "-m",
                "dtkd", "train", "--cfg", "fashion_mnist/dtkd.yaml", "--distributed", "mpi",
                *extra, "--out", str(out), *overrides]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if run.returncode:
            raise RuntimeError(run.stdout + run.stderr)
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        seconds = log[-1]["train_time_s"]
        rows.append({"ranks": ranks, "bn": "sync" if extra else "per-rank",
                     "mpirun": " ".join(mca) or "-", "train_s": seconds, "images_per_s": 1024 / seconds, "load": load()})
    base = rows[0]["images_per_s"]
    print("\n### MPI data parallel, one machine: resnet8 on 1,024 Fashion-MNIST-shaped images, "
          "batch 64, 1 thread per rank (2nd epoch)\n")
    print("| ranks | BatchNorm | mpirun options | train s | images/s | vs 1 rank | load 1/5/15 |")
    print("|---:|---|---|---:|---:|---:|---|")
    for r in rows:
        r["speedup"] = r["images_per_s"] / base
        print(f"| {r['ranks']} | {r['bn']} | {r['mpirun']} | {r['train_s']:.2f} | {r['images_per_s']:.0f} | "
              f"{r['speedup']:.2f}x | {r['load']} |")
    return rows


# ---- project --------------------------------------------------------------------------------

def step_seconds(batch, steps):
    """Median seconds of one DTKD step resnet32x4 -> resnet8x4 at ``batch`` (1 thread)."""
    import dtkd
    from dtkd import models
    from dtkd.distill import DTKD
    from dtkd.optim import SGD
    dtkd.set_num_threads(1)
    teacher = models.create("resnet32x4", num_classes=100, seed=0)
    teacher.eval()
    student = models.create("resnet8x4", num_classes=100, seed=1)
    distiller = DTKD(student, teacher, alpha=3.0, beta=1.0, temperature=4.0, ce_weight=1.0,
                     warmup=20)
    opt = SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 100, batch).astype(np.int64)
    times = []
    for k in range(steps + 1):  # the first is warm-up
        start = time.perf_counter()
        opt.zero_grad()
        distiller.train_step(x, y, 20)
        opt.step()
        if k:
            times.append(time.perf_counter() - start)
    n_params = sum(p.data.size for p in student.parameters())
    n_bn = sum(1 for m in student.modules() if type(m).__name__ == "BatchNorm2d")
    return statistics.median(times), n_params, n_bn


def allreduce_seconds(nbytes, repeats=20):
    """Median seconds of an in-place float32 Allreduce of nbytes between 2 ranks on this
    machine (shared memory), or None without mpirun."""
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        return None
    code = (
        "import time, statistics, numpy as np\nfrom mpi4py import MPI\nc = MPI.COMM_WORLD\n"
        f"a = np.ones({nbytes // 4}, np.float32)\nts = []\n"
        f"for _ in range({repeats}):\n    c.Barrier(); t = time.perf_counter()\n"
        "    c.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM); ts.append(time.perf_counter() - t)\n"
        "if c.rank == 0: print(statistics.median(ts))\n")
    cmd = [mpirun, "-n", "2"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    run = subprocess.run(cmd + ["--oversubscribe", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=300)
    if run.returncode:
        raise RuntimeError(run.stderr)
    return float(run.stdout.strip().splitlines()[-1])


# network assumptions of the projection (per link): (name, bandwidth bytes/s, latency s)
NETWORKS = [("10 GbE", 1.25e9, 20e-6), ("100 Gb/s InfiniBand", 12.5e9, 2e-6)]


def ring_allreduce(nbytes, P, bw, lat):
    """Ring allreduce: 2(P-1) messages of nbytes/P each (reduce-scatter + all-gather)."""
    if P == 1:
        return 0.0
    return 2 * (P - 1) * lat + 2 * (P - 1) / P * nbytes / bw


def tree_allreduce_small(P, lat):
    """A small message (a BN layer's per-channel sums): reduce + broadcast on a binary tree."""
    return 0.0 if P == 1 else 2 * math.ceil(math.log2(P)) * lat


def part_project(steps):
    measured = {}
    for batch in (64, 8, 1):
        t, n_params, n_bn = step_seconds(batch, steps)
        measured[batch] = t
        print(f"  measured: DTKD step resnet32x4 -> resnet8x4, batch {batch}: {t:.3f} s "
              f"(load {load()})", flush=True)
    nbytes = (n_params + 1) * 4
    local_ar = allreduce_seconds(nbytes)
    rows = []
    for nodes in (1, 8, 64):
        for name, bw, lat in NETWORKS:
            ar = ring_allreduce(nbytes, nodes, bw, lat)
            sync = 3 * n_bn * tree_allreduce_small(nodes, lat)
            # strong scaling: the paper's global batch 64 split over the nodes
            b = GLOBAL_BATCH // nodes
            strong_step = measured[b] + ar + sync
            strong_epoch = math.ceil(CIFAR_TRAIN / GLOBAL_BATCH) * strong_step
            # weak scaling: 64 per node, global batch 64 * nodes (changes the optimisation)
            weak_step = measured[64] + ar
            weak_epoch = math.ceil(CIFAR_TRAIN / (GLOBAL_BATCH * nodes)) * weak_step
            rows.append({"nodes": nodes, "network": name, "per_node_batch": b,
                         "compute_s": measured[b], "allreduce_s": ar, "syncbn_s": sync,
                         "strong_epoch_s": strong_epoch, "weak_epoch_s": weak_epoch})
    print(f"\n### Projection: CIFAR-100 resnet32x4 -> resnet8x4, one epoch (50,000 images)\n")
    print(f"resnet8x4: {n_params:,} parameters -> one fused allreduce of {nbytes / 1e6:.2f} MB "
          f"per step; {n_bn} BatchNorm layers. Measured here: 2-rank shared-memory allreduce of "
          f"that buffer {'n/a' if local_ar is None else f'{local_ar * 1e3:.2f} ms'}.\n")
    print("| nodes | network | per-node batch (strong) | compute s/step | allreduce s/step | "
          "sync-BN s/step | epoch s, global batch 64 | epoch s, 64 per node |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["nodes"] == 1 and r["network"] != NETWORKS[0][0]:
            continue
        print(f"| {r['nodes']} | {r['network'] if r['nodes'] > 1 else '-'} | "
              f"{r['per_node_batch']} | {r['compute_s']:.3f} | {r['allreduce_s'] * 1e3:.2f} ms | "
              f"{r['syncbn_s'] * 1e3:.2f} ms | {r['strong_epoch_s']:.0f} | "
              f"{r['weak_epoch_s']:.0f} |")
    return {"measured_step_s": measured, "n_params": n_params, "n_bn": n_bn,
            "allreduce_bytes": nbytes, "local_allreduce_s": local_ar, "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["sweep", "mpi", "project"],
                        choices=["sweep", "mpi", "project"])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per batch (project)")
    parser.add_argument("--out", help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from machine import describe
    print("\n".join(describe()))
    print("(measured under load, 2 cores shared with other engineers' jobs)")
    results = {}
    with tempfile.TemporaryDirectory(prefix="dtkd_bench_dist_") as tmp:
        work = Path(tmp)
        if "sweep" in args.parts:
            results["sweep"] = part_sweep(work)
        if "mpi" in args.parts:
            results["mpi"] = part_mpi(work)
        if "project" in args.parts:
            results["project"] = part_project(args.steps)
    if args.out:
        from dtkd.io import write_text_atomic
        write_text_atomic(args.out, json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
