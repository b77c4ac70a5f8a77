"""Wall time and hit rate of the teacher-logit cache (dtkd/engine/logit_cache.py) on
resnet32x4 -> resnet8x4 DTKD runs over small synthetic CIFAR-shaped data (32x32x3, 100 classes,
random crop 32 pad 4 + flip, the CIFAR training augmentation):

- a 4-run sweep: the same teacher and data seed, DTKD.ALPHA in --alphas, without the cache and
  with it (a fresh cache file the four runs share: the first fills it, the others read it);
- a single longer run without and with a fresh cache (hits only when a sample comes back in the
  same crop and flip: 162 variants per image).

    python benchmarks/bench_teacher_cache.py [--images 256] [--epochs 2] [--alphas 0.5 1 2 3]
        [--long-images 32] [--long-epochs 40] [--threads 1] [--out FILE]

Every run is its own process (as `python -m dtkd train` runs of a sweep would be), timed end to
end from the parent (interpreter start, model build, cache open, training, evaluation each epoch,
checkpoints); the sweeps' runs alternate without / with cache (which one goes first alternates
too), so load from other processes falls on both alike. The teacher is randomly initialised (its
cost does not depend on its weights);
LOG.PROBE_SAMPLES is 0 (the per-run probe's teacher forward on test images is not cached). Each
run also reports its final test accuracy and a digest of the student's weights, so the table
shows whether the cached runs trained exactly as the uncached ones.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def child(spec):
    """One training run per ``spec``; prints a JSON line with its results."""
    import numpy as np

    import dtkd
    from dtkd import data, distill, models
    from dtkd.config import get_default_config
    from dtkd.engine import Trainer
    from dtkd.engine.logit_cache import teacher_cache_from_config

    start = time.perf_counter()
    dtkd.set_num_threads(spec["threads"])
    cfg = get_default_config()
    cfg.DISTILLER.TYPE = "DTKD"
    cfg.DISTILLER.TEACHER, cfg.DISTILLER.STUDENT = "resnet32x4", "resnet8x4"
    cfg.DTKD.ALPHA = spec["alpha"]
    cfg.DTKD.WARMUP = 1
    cfg.SOLVER.EPOCHS = spec["epochs"]
    cfg.SOLVER.BATCH_SIZE = 64
    cfg.SOLVER.LR = 0.05
    cfg.LOG.PROBE_SAMPLES = 0
    cfg.LOG.SAVE_CHECKPOINT_FREQ = 1000
    cfg.DISTILLER.TEACHER_CACHE = spec["cache"]
    cfg.DISTILLER.TEACHER_CACHE_DIR = spec["cache_dir"]
    # a learnable task: each class is a fixed random picture, each image its class's picture
    # plus as much noise
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (100, 32, 32, 3))
    classes = [str(i) for i in range(100)]

    def images(count):
        labels = rng.integers(0, 100, count)
        noise = rng.integers(0, 256, (count, 32, 32, 3))
        return data.Dataset(((templates[labels] + noise) // 2).astype(np.uint8), labels, classes)

    train, test = images(spec["images"]), images(128)
    train_loader = data.DataLoader(train, 64, augment=True, seed=cfg.SEED)
    test_loader = data.DataLoader(test, 64, shuffle=False)
    teacher = models.create("resnet32x4", num_classes=100, seed=11)
    teacher.eval()
    student = models.create("resnet8x4", num_classes=100, seed=cfg.SEED)
    distiller = distill.from_config(cfg, student, teacher)
    distiller.teacher_cache, why = teacher_cache_from_config(cfg, distiller, train_loader)
    trainer = Trainer(cfg, distiller, train_loader, test_loader, spec["out_dir"], progress=False)
    summary = trainer.train()
    weights = hashlib.sha256()
    for name, value in sorted(student.state_dict().items()):
        weights.update(np.ascontiguousarray(value).tobytes())
    hits = sum(r.get("n_teacher_cache_hits", 0) for r in trainer.history)
    lookups = sum(r.get("n_teacher_cache_lookups", 0) for r in trainer.history)
    print(json.dumps({"last_acc": summary["last_acc"], "weights": weights.hexdigest()[:16],
                      "hits": hits, "lookups": lookups, "cache": why,
                      "train_s": sum(r["train_time_s"] for r in trainer.history),
                      "inside_s": time.perf_counter() - start}))


def run(spec):
    begin = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(spec["threads"])))
    wall = time.perf_counter() - begin
    if out.returncode != 0:
        raise RuntimeError(f"run {spec} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0])
    p.add_argument("--long-images", type=int, default=32)
    p.add_argument("--long-epochs", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the Markdown to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(json.loads(args.child))

    from machine import describe
    lines = ["# Teacher-logit cache: resnet32x4 -> resnet8x4 DTKD, synthetic CIFAR-shaped data", ""]
    lines += [f"- {line}" for line in describe((args.threads,))]
    lines += [f"- command: python benchmarks/bench_teacher_cache.py --images {args.images} "
              f"--epochs {args.epochs} --alphas {' '.join(map(str, args.alphas))} "
              f"--long-images {args.long_images} --long-epochs {args.long_epochs} "
              f"--threads {args.threads}", ""]
    print("\n".join(lines), flush=True)
    work = tempfile.mkdtemp(prefix="dtkd-bench-tcache-")
    try:
        base = {"threads": args.threads, "images": args.images, "epochs": args.epochs}
        sweep = {"off": [], "disk": []}
        for i, alpha in enumerate(args.alphas):
            # without / with alternate, and which goes first alternates too, so a load that
            # drifts during the sweep falls on both (the cached sweep's order is kept: its first
            # run fills the file)
            for cache in (("off", "disk") if i % 2 == 0 else ("disk", "off")):
                spec = dict(base, alpha=alpha, cache=cache, cache_dir=os.path.join(work, "sweep"),
                            out_dir=os.path.join(work, f"{cache}-{i}"))
                sweep[cache].append(run(spec))
                r = sweep[cache][-1]
                print(f"  sweep alpha {alpha} cache {cache}: {r['wall_s']:.1f} s, hits "
                      f"{r['hits']}/{r['lookups']}, acc {r['last_acc']:.2f}", flush=True)
        table = ["## 4-run sweep (DTKD.ALPHA " + ", ".join(map(str, args.alphas)) +
                 f"; {args.images} images x {args.epochs} epochs per run, batch 64)", "",
                 "| run | alpha | no cache: wall s (training loop s) | cache: wall s (training "
                 "loop s) | cache hits | last acc (no cache / cache) | same weights |",
                 "|---|---|---|---|---|---|---|"]
        for i, alpha in enumerate(args.alphas):
            a, b = sweep["off"][i], sweep["disk"][i]
            table.append(f"| {i + 1} | {alpha} | {a['wall_s']:.1f} ({a['train_s']:.1f}) | "
                         f"{b['wall_s']:.1f} ({b['train_s']:.1f}) | "
                         f"{b['hits']}/{b['lookups']} ({100 * b['hits'] / b['lookups']:.0f}%) | "
                         f"{a['last_acc']:.2f} / {b['last_acc']:.2f} | "
                         f"{'yes' if a['weights'] == b['weights'] else 'NO'} |")
        off = sum(r["wall_s"] for r in sweep["off"])
        on = sum(r["wall_s"] for r in sweep["disk"])
        hits = sum(r["hits"] for r in sweep["disk"])
        lookups = sum(r["lookups"] for r in sweep["disk"])
        off_train = sum(r["train_s"] for r in sweep["off"])
        on_train = sum(r["train_s"] for r in sweep["disk"])
        table.append(f"| sweep | | {off:.1f} ({off_train:.1f}) | {on:.1f} ({on_train:.1f}) | "
                     f"{hits}/{lookups} ({100 * hits / lookups:.0f}%) | | |")
        table += ["", f"Sweep speed-up with the cache: {off / on:.2f}x end to end (wall), "
                  f"{off_train / on_train:.2f}x in the training loops (under load, see the load "
                  "average above)", ""]
        print("\n".join(table), flush=True)
        lines += table

        long = dict(base, images=args.long_images, epochs=args.long_epochs, alpha=3.0,
                    cache_dir=os.path.join(work, "long"))
        a = run(dict(long, cache="off", out_dir=os.path.join(work, "long-off")))
        b = run(dict(long, cache="disk", out_dir=os.path.join(work, "long-disk")))
        table = [f"## Single run ({args.long_images} images x {args.long_epochs} epochs, "
                 "fresh cache)", "",
                 "| | wall s (training loop s) | cache hits | last acc | same weights |",
                 "|---|---|---|---|---|",
                 f"| no cache | {a['wall_s']:.1f} ({a['train_s']:.1f}) | | {a['last_acc']:.2f} | |",
                 f"| cache | {b['wall_s']:.1f} ({b['train_s']:.1f}) | {b['hits']}/{b['lookups']} "
                 f"({100 * b['hits'] / b['lookups']:.1f}%) | {b['last_acc']:.2f} | "
                 f"{'yes' if a['weights'] == b['weights'] else 'NO'} |", "",
                 f"Single-run speed-up: {a['wall_s'] / b['wall_s']:.2f}x", ""]
        print("\n".join(table), flush=True)
        lines += table
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        from dtkd.io.atomic import write_text_atomic
        write_text_atomic(args.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
