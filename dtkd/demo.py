"""``python -m dtkd demo``: what distillation with dynamic temperatures does, on a CPU, in minutes.

On Fashion-MNIST (Debian package ``dataset-fashion-mnist``, or IDX files in $DTKD_DATA):
1. train a teacher (or reuse the one a previous demo cached, keyed by its config);
2. train the same student from the same initialisation, seed and budget three ways:
   vanilla cross-entropy, KD and DTKD;
3. print a table of test accuracy, and save a PNG of the per-epoch test accuracy and of DTKD's
   per-epoch student/teacher temperatures (mean, with the min-max band).

Every run is an ordinary ``dtkd.engine`` run from a shipped config (``fashion_mnist/*.yaml``),
so its logs (log.jsonl, worklog.txt) and checkpoints sit under the output directory.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

METHODS = (("vanilla", "Vanilla CE"), ("kd", "KD"), ("dtkd", "DTKD"))
# --quick: what a set-up check needs, seconds on any CPU
QUICK = {"epochs": 1, "teacher_epochs": 1, "subset": 300, "test_subset": 200}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m dtkd demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="dtkd_demo", help="output directory (default ./dtkd_demo)")
    p.add_argument("--epochs", type=int, default=None, help="student epochs (default: config)")
    p.add_argument("--teacher-epochs", type=int, default=None, help="teacher epochs (default: config)")
    p.add_argument("--subset", type=int, default=None,
                   help="training images drawn from the 60000 (default: config)")
    p.add_argument("--test-subset", type=int, default=None,
                   help="test images drawn from the 10000 (default: config)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    p.add_argument("--data", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--retrain-teacher", action="store_true",
                   help="train the teacher even if a cached one matches")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run in seconds: {QUICK['epochs']} epoch per model on "
                        f"{QUICK['subset']} training and {QUICK['test_subset']} test images "
                        "(checks the set-up; its accuracies mean nothing); explicit options win")
    p.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="progress bars (default: when stderr is a terminal)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _overrides(args, teacher=False):
    out = ["SEED", str(args.seed)]
    epochs = args.teacher_epochs if teacher else args.epochs
    if epochs is not None:
        out += ["SOLVER.EPOCHS", str(epochs)]
    if args.subset is not None:
        out += ["DATASET.SUBSET", str(args.subset)]
    if args.test_subset is not None:
        out += ["DATASET.TEST.SUBSET", str(args.test_subset)]
    if args.data is not None:
        out += ["DATASET.ROOT", str(args.data)]
    if args.threads is not None:
        out += ["NUM_THREADS", str(args.threads)]
    return out


def _teacher_cache_path(cfg):
    """Cached teacher weights, keyed by everything in the config that shapes them."""
    from .data.dataset import cache_dir
    from ._version import __version__
    key = dict(cfg.to_dict())
    key.pop("LOG", None)
    key.pop("EXPERIMENT", None)
    key.pop("NUM_THREADS", None)
    digest = hashlib.sha256(json.dumps([key, __version__], sort_keys=True).encode()).hexdigest()
    return cache_dir() / "demo" / f"teacher-{cfg.DISTILLER.STUDENT}-{digest[:16]}.npz"


def _copy_atomic(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _history(run_dir):
    with open(Path(run_dir) / "log.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def train_teacher(args, out):
    """Train the teacher, or reuse the cached one; returns (path to weights, test acc, seconds, cached)."""
    from . import engine
    from .config import load_config
    cfg = load_config("fashion_mnist/teacher.yaml", _overrides(args, teacher=True))
    cached = _teacher_cache_path(cfg)
    run_dir = out / "teacher"
    meta = cached.with_suffix(".json")
    if cached.exists() and meta.exists() and not args.retrain_teacher:
        info = json.loads(meta.read_text())
        print(f"[demo] teacher {cfg.DISTILLER.STUDENT}: reusing cached weights {cached} "
              f"(test top-1 {info['best_acc']:.2f}%; --retrain-teacher to train it again)")
        return cached, info["best_acc"], 0.0, True
    print(f"[demo] training the teacher {cfg.DISTILLER.STUDENT} "
          f"({cfg.SOLVER.EPOCHS} epochs on {cfg.DATASET.SUBSET or 60000} images) ...")
    start = time.perf_counter()
    summary = engine.build_trainer(cfg, out_dir=run_dir, progress=args.progress).train()
    seconds = time.perf_counter() - start
    _copy_atomic(run_dir / "model_best.npz", cached)
    meta_tmp = meta.with_suffix(".json.tmp")
    meta_tmp.write_text(json.dumps({"best_acc": summary["best_acc"], "config": cfg.dump()}))
    os.replace(meta_tmp, meta)
    return run_dir / "model_best.npz", summary["best_acc"], seconds, False


def train_students(args, out, teacher_path):
    """Vanilla, KD and DTKD runs of the same student; returns {method: (summary, history, s)}."""
    from . import engine
    from .config import load_config
    results = {}
    for method, label in METHODS:
        overrides = _overrides(args)
        if method != "vanilla":
            overrides += ["DISTILLER.TEACHER_CHECKPOINT", str(teacher_path)]
        cfg = load_config(f"fashion_mnist/{method}.yaml", overrides)
        print(f"[demo] {label}: student {cfg.DISTILLER.STUDENT}, {cfg.SOLVER.EPOCHS} epochs ...")
        start = time.perf_counter()
        summary = engine.build_trainer(cfg, out_dir=out / method, progress=args.progress).train()
        results[method] = (summary, _history(out / method), time.perf_counter() - start)
    return results


def format_table(teacher_name, teacher_acc, student_name, results):
    rows = [("method", "model", "best top-1 %", "last top-1 %", "time s")]
    rows.append(("teacher", teacher_name, f"{teacher_acc:.2f}", "", ""))
    for method, label in METHODS:
        summary, _, seconds = results[method]
        rows.append((label, student_name, f"{summary['best_acc']:.2f}",
                     f"{summary['last_acc']:.2f}", f"{seconds:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(results, teacher_acc, path, temperature):
    """Save :func:`figure` as a PNG at ``path`` (atomically)."""
    import matplotlib.pyplot as plt
    fig = figure(results, teacher_acc, temperature)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()


def figure(results, teacher_acc, temperature):
    """Two panels: test accuracy per epoch per method; DTKD's T_s / T_t per epoch (mean and
    min-max band) around the reference ``temperature``. Legends sit below the axes, where they
    cover no data; epochs are whole numbers even for a one-epoch run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_acc, ax_t) = plt.subplots(1, 2, figsize=(11, 4.8))
    for method, label in METHODS:
        hist = results[method][1]
        ax_acc.plot([h["epoch"] for h in hist], [h["test_acc"] for h in hist], marker="o",
                    label=label)
    ax_acc.axhline(teacher_acc, color="gray", ls="--", label="teacher")
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="Student accuracy")
    hist = results["dtkd"][1]
    epochs = [h["epoch"] for h in hist]
    for who, color in (("student", "tab:blue"), ("teacher", "tab:red")):
        key = f"t_{who}"
        lo, mean, hi = ([h[f"{key}_{s}"] for h in hist] for s in ("min", "mean", "max"))
        if len(epochs) > 2:
            ax_t.fill_between(epochs, lo, hi, color=color, alpha=0.15, lw=0,
                              label=f"T_{who[0]} (min-max over samples)")
        else:  # a band over one or two epochs is a sliver: bars show the spread
            ax_t.errorbar(epochs, mean, yerr=[[m - l for m, l in zip(mean, lo)],
                                              [h - m for h, m in zip(hi, mean)]],
                          fmt="none", ecolor=color, alpha=0.5, capsize=6,
                          label=f"T_{who[0]} (min-max over samples)")
        ax_t.plot(epochs, mean, marker="o", color=color, label=f"T_{who[0]} (mean)")
    ax_t.axhline(temperature, color="black", ls=":", lw=1, label=f"reference T = {temperature:g}")
    ax_t.set(xlabel="epoch", ylabel="temperature", title="DTKD per-sample temperatures")
    last = max(max(h["epoch"] for h in results[m][1]) for m, _ in METHODS)
    for ax in (ax_acc, ax_t):
        _whole_epoch_ticks(ax, last)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize="small",
                  frameon=False)
    fig.tight_layout()
    return fig


def _whole_epoch_ticks(ax, last_epoch):
    """Integer epoch ticks; with few epochs every epoch is labelled (matplotlib's integer
    locator falls back to fractions when fewer than two integers are in view)."""
    from matplotlib.ticker import MaxNLocator
    ax.set_xlim(0.5, last_epoch + 0.5)
    if last_epoch <= 10:
        ax.set_xticks(range(1, last_epoch + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    from .config import load_config
    start = time.perf_counter()
    teacher_path, teacher_acc, _, _ = train_teacher(args, out)
    results = train_students(args, out, teacher_path)
    teacher_name = load_config("fashion_mnist/teacher.yaml").DISTILLER.STUDENT
    student_name = load_config("fashion_mnist/dtkd.yaml").DISTILLER.STUDENT
    table = format_table(teacher_name, teacher_acc, student_name, results)
    print("\nFashion-MNIST test accuracy (same student init, seed and budget):\n" + table)
    (out / "results.txt").write_text(table + "\n")
    png = out / "dtkd_demo.png"
    if not args.no_plot:
        try:
            plot(results, teacher_acc, png, load_config("fashion_mnist/dtkd.yaml").DTKD.T)
        except ImportError:
            print("[demo] matplotlib is not installed (pip install 'dtkd[plot]'): no plot",
                  file=sys.stderr)
            png = None
    else:
        png = None
    print(f"\n[demo] done in {time.perf_counter() - start:.0f} s. Outputs:")
    print(f"  table:       {out / 'results.txt'}")
    if png is not None:
        print(f"  plot:        {png}")
    for method in ("teacher",) + tuple(m for m, _ in METHODS):
        if (out / method).exists():
            print(f"  {method + ' run:':12} {out / method} (log.jsonl, worklog.txt, checkpoints)")
    return 0
