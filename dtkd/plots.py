"""The paper's figures from a run's logs (matplotlib; scikit-learn for the t-SNE).

Each figure function takes run directories (what ``python -m dtkd train``, the demo or the
``distill`` fixture write: log.jsonl, probe.jsonl, config.yaml, model_best.npz) and returns a
matplotlib Figure; :func:`save` writes it atomically. ``python -m dtkd plot RUN_DIR ...`` draws
every figure the logs support.

- :func:`temperatures`: T_s and T_t per epoch — mean over the training samples, their min-max
  band, and the interquartile band on the probe images — with the reference T.
- :func:`sharpness`: per-sample sharpness (logsumexp of the logits) of teacher and student
  before and after training, and the per-sample temperatures it gives (from probe.jsonl).
- :func:`accuracy`: test top-1 per epoch, one curve per run.
- :func:`teacher_size`: the student's best top-1 against the teacher it learned from
  (the paper's Figure 1: resnet20/32/56/110 -> resnet8), mean ± std over seeds per method.
- :func:`tsne`: t-SNE of the students' pooled features on test images (e.g. KD vs DTKD).

The panel functions (``draw_*``) draw into a given Axes, for figures of your own.
"""
import io
import re
import statistics
from pathlib import Path

import numpy as np

from .engine.trainer import CONFIG_COPY, LOG_JSONL, MODEL_BEST, read_log, read_probe

__all__ = ["temperatures", "sharpness", "accuracy", "teacher_size", "tsne", "save", "run_dirs",
           "run_label", "draw_temperatures", "draw_accuracy", "pyplot"]

_COLORS = {"student": "tab:blue", "teacher": "tab:red"}


def pyplot():
    """matplotlib.pyplot, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("dtkd.plots needs matplotlib: pip install 'dtkd[plot]'") from None
    return plt


def save(fig, path, dpi=120):
    """Write ``fig`` to ``path`` (format from the suffix, PNG by default) atomically, close it
    and return the path."""
    from .io import atomic_write
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    with atomic_write(path) as f:
        f.write(buffer.getvalue())
    pyplot().close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# Runs

def run_dirs(paths):
    """Run directories (those holding a log.jsonl) among ``paths`` and, for a path that is not
    a run itself, below it (e.g. the demo's output or a sweep's --dtkd-runs folder)."""
    found = []
    for path in map(Path, paths):
        if (path / LOG_JSONL).is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p.parent for p in path.rglob(LOG_JSONL))
        else:
            raise FileNotFoundError(f"run_dir: {path} is neither a run directory (no "
                                    f"{LOG_JSONL}) nor a folder holding runs")
    if not found:
        raise FileNotFoundError(f"run_dir: no {LOG_JSONL} under {', '.join(map(str, paths))}")
    return list(dict.fromkeys(found))


def _config(run_dir):
    from .config import load_config
    path = Path(run_dir) / CONFIG_COPY
    return load_config(path) if path.is_file() else None


def run_label(run_dir, cfg=None):
    """The method a run trained, from its config: vanilla, KD, DKD, DTKD, DTKD-tckd, ..."""
    cfg = cfg if cfg is not None else _config(run_dir)
    if cfg is None:
        return Path(run_dir).name
    kind = cfg.DISTILLER.TYPE
    if kind == "NONE":
        return "vanilla"
    if kind == "DTKD" and cfg.DTKD.VARIANT != "official":
        return f"DTKD-{cfg.DTKD.VARIANT}"
    return kind


def _reference_temperature(cfg):
    if cfg is None:
        return None
    return {"KD": cfg.KD.TEMPERATURE, "DKD": cfg.DKD.T}.get(cfg.DISTILLER.TYPE, cfg.DTKD.T)


def _whole_epoch_ticks(ax, epochs):
    """Integer epoch ticks from 1; with few epochs every epoch is labelled (matplotlib's integer
    locator falls back to fractions when fewer than two integers are in view)."""
    from matplotlib.ticker import MaxNLocator
    last = max(epochs)
    ax.set_xlim(min(0.5, min(epochs) - 0.5), last + 0.5)
    if last <= 10:
        ax.set_xticks(range(max(1, min(epochs)), last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _spread(ax, epochs, lo, hi, color, label, alpha, mean=None):
    """A band from ``lo`` to ``hi``; over one or two epochs a band is a sliver, so error bars
    around ``mean`` (or the band's middle) show the spread instead."""
    if len(epochs) > 2:
        ax.fill_between(epochs, lo, hi, color=color, alpha=alpha, lw=0, label=label)
        return
    mid = mean if mean is not None else [(a + b) / 2 for a, b in zip(lo, hi)]
    ax.errorbar(epochs, mid, yerr=[[m - a for m, a in zip(mid, lo)], [b - m for b, m in zip(hi, mid)]],
                fmt="none", ecolor=color, alpha=min(1.0, 2.5 * alpha), capsize=6, label=label)


def _legend_outside(ax, below=0.16, ncol=3):
    # below the axes (and the x label), so no band or curve is hidden behind it
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -below), ncol=ncol, frameon=False,
              fontsize="small")


# ----------------------------------------------------------------------------------------------
# Panels

def draw_temperatures(ax, history, reference=None, probe=None, title=None):
    """T_s and T_t per epoch on ``ax``: the mean over training samples (line), the min-max band
    (light), the probe images' 25-75 % band (darker, when ``probe`` records are given), and a
    dotted line at the ``reference`` temperature."""
    if not history or "t_student_mean" not in history[0]:
        raise ValueError("history: no per-epoch temperatures (t_student_mean ...) in this log; "
                         "only dynamic-temperature methods (DTKD and its variants) log them")
    epochs = [h["epoch"] for h in history]
    quartiles = {}
    if probe:
        trained = [p for p in probe if p["epoch"] >= 1 and "t_student" in p]
        for who in ("student", "teacher"):
            values = [np.percentile(p[f"t_{who}"], [25, 75]) for p in trained]
            quartiles[who] = ([p["epoch"] for p in trained], [v[0] for v in values],
                              [v[1] for v in values])
    for who in ("student", "teacher"):
        color, key, short = _COLORS[who], f"t_{who}", f"T_{who[0]}"
        mean = [h[f"{key}_mean"] for h in history]
        _spread(ax, epochs, [h[f"{key}_min"] for h in history], [h[f"{key}_max"] for h in history],
                color, f"{short} min-max (train)", 0.12, mean)
        if who in quartiles and quartiles[who][0]:
            _spread(ax, *quartiles[who], color, f"{short} 25-75 % (probe)", 0.3)
        ax.plot(epochs, mean, marker="o", color=color, label=f"{short} mean (train)")
    if reference is not None:
        ax.axhline(reference, color="black", ls=":", lw=1, label=f"reference T = {reference:g}")
    ax.set(xlabel="epoch", ylabel="temperature", title=title or "Per-sample temperatures")
    _whole_epoch_ticks(ax, epochs)
    _legend_outside(ax)


def draw_accuracy(ax, runs, teacher_acc=None, title=None):
    """Test top-1 per epoch: ``runs`` maps a label to a history (log.jsonl records)."""
    epochs = []
    for label, history in runs.items():
        epochs += [h["epoch"] for h in history]
        ax.plot([h["epoch"] for h in history], [h["test_acc"] for h in history], marker="o",
                label=label)
    if teacher_acc is not None:
        ax.axhline(teacher_acc, color="gray", ls="--", label=f"teacher ({teacher_acc:.2f} %)")
    ax.set(xlabel="epoch", ylabel="test top-1 (%)", title=title or "Student accuracy")
    if epochs:
        _whole_epoch_ticks(ax, epochs)
    _legend_outside(ax)


# ----------------------------------------------------------------------------------------------
# Figures

def temperatures(run_dir):
    """Figure: :func:`draw_temperatures` for one run (log.jsonl, probe.jsonl, config.yaml)."""
    plt = pyplot()
    cfg = _config(run_dir)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    draw_temperatures(ax, read_log(run_dir), _reference_temperature(cfg), read_probe(run_dir),
                      title=f"{run_label(run_dir, cfg)}: per-sample temperatures")
    return fig


def sharpness(run_dir):
    """Figure from probe.jsonl: left, each probe image's sharpness (logsumexp of the logits) for
    the teacher and for the student before and after training, images sorted by the teacher's;
    right, the per-sample T_s and T_t after training, same order, with the reference T."""
    probe = [p for p in read_probe(run_dir) if "lse_teacher" in p]
    if not probe:
        raise ValueError(f"run_dir: {run_dir} has no teacher sharpness in probe.jsonl (a "
                         "distillation run with LOG.PROBE_SAMPLES > 0 logs it)")
    plt = pyplot()
    first, last = probe[0], probe[-1]
    order = np.argsort(first["lse_teacher"])
    x = np.arange(len(order))
    pick = lambda record, key: np.asarray(record[key])[order]
    fig, (ax_s, ax_t) = plt.subplots(1, 2, figsize=(11, 4.4))
    ax_s.plot(x, pick(last, "lse_teacher"), color=_COLORS["teacher"], label="teacher")
    ax_s.plot(x, pick(first, "lse_student"), color=_COLORS["student"], ls=":",
              label=f"student, epoch {first['epoch']}")
    ax_s.plot(x, pick(last, "lse_student"), color=_COLORS["student"],
              label=f"student, epoch {last['epoch']}")
    ax_s.set(xlabel="probe image (sorted by teacher sharpness)", ylabel="logsumexp(logits)",
             title="Logit sharpness per sample")
    _legend_outside(ax_s)
    ax_t.scatter(x, pick(last, "t_teacher"), s=8, color=_COLORS["teacher"], label="T_t")
    ax_t.scatter(x, pick(last, "t_student"), s=8, color=_COLORS["student"], label="T_s")
    ax_t.axhline(last["temperature"], color="black", ls=":", lw=1,
                 label=f"reference T = {last['temperature']:g}")
    ax_t.set(xlabel="probe image (sorted by teacher sharpness)", ylabel="temperature",
             title=f"DTKD temperatures per sample, epoch {last['epoch']}")
    _legend_outside(ax_t)
    fig.suptitle(f"{run_label(run_dir)}: {len(order)} test images")
    return fig


def accuracy(run_dirs_, labels=None):
    """Figure: test top-1 per epoch for each run (label: the method, or ``labels``)."""
    plt = pyplot()
    runs = {}
    for i, run in enumerate(run_dirs_):
        label = labels[i] if labels else run_label(run)
        while label in runs:
            label += "'"
        runs[label] = read_log(run)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    draw_accuracy(ax, runs)
    return fig


def _depth(name):
    digits = re.findall(r"\d+", name)
    return (int(digits[0]) if digits else 0, name)


def teacher_size(run_dirs_):
    """Figure: best student top-1 (mean ± std over the runs of a method and teacher) against the
    teacher, teachers ordered by depth; vanilla students as a horizontal band."""
    plt = pyplot()
    by_method, vanilla, teacher_acc = {}, [], {}
    for run in run_dirs_:
        cfg = _config(run)
        if cfg is None:
            continue
        best = max(h["test_acc"] for h in read_log(run))
        if cfg.DISTILLER.TYPE == "NONE":
            vanilla.append(best)
            continue
        teacher = cfg.DISTILLER.TEACHER
        by_method.setdefault(run_label(run, cfg), {}).setdefault(teacher, []).append(best)
        meta = Path(cfg.DISTILLER.TEACHER_CHECKPOINT).with_name("teacher.json")
        if meta.is_file():  # written by dtkd.engine.cached_teacher
            import json
            teacher_acc[teacher] = json.loads(meta.read_text())["best_acc"]
    teachers = sorted({t for runs in by_method.values() for t in runs}, key=_depth)
    if len(teachers) < 2:
        raise ValueError("run_dirs: need distillation runs from at least two teachers "
                         f"(found {teachers or 'none'})")
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    x = np.arange(len(teachers))
    for k, (method, runs) in enumerate(sorted(by_method.items())):
        xs = [i for i, t in enumerate(teachers) if t in runs]
        means = [statistics.fmean(runs[teachers[i]]) for i in xs]
        stds = [statistics.stdev(runs[teachers[i]]) if len(runs[teachers[i]]) > 1 else 0.0
                for i in xs]
        # methods side by side around each teacher, so error bars do not hide each other
        ax.errorbar(np.asarray(xs) + 0.04 * (k - (len(by_method) - 1) / 2), means, yerr=stds,
                    marker="o", capsize=3, label=method)
    if vanilla:
        mean = statistics.fmean(vanilla)
        std = statistics.stdev(vanilla) if len(vanilla) > 1 else 0.0
        ax.axhspan(mean - std, mean + std, color="gray", alpha=0.2, lw=0)
        ax.axhline(mean, color="gray", ls="--", label=f"vanilla student ({len(vanilla)} run(s))")
    ax.set_xticks(x, [f"{t}\n({teacher_acc[t]:.1f} %)" if t in teacher_acc else t
                      for t in teachers])
    students = sorted({_config(r).DISTILLER.STUDENT for r in run_dirs_ if _config(r)})
    ax.set(xlabel="teacher (its test top-1)", ylabel="student best test top-1 (%)",
           title=f"Student {', '.join(students)} vs teacher size")
    _legend_outside(ax, below=0.24)  # the tick labels take two lines
    return fig


def tsne(run_dirs_, samples=1000, labels=None, seed=0):
    """Figure: t-SNE (scikit-learn) of each run's student pooled features (model_best.npz) on
    the first ``samples`` test images, coloured by class; one panel per run."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ImportError("the t-SNE figure needs scikit-learn: pip install 'dtkd[tsne]'") from None
    from . import io as dtkd_io
    from .engine.build import build_dataset, build_model
    from .nn.grad_mode import no_grad
    plt = pyplot()
    fig, axes = plt.subplots(1, len(run_dirs_), figsize=(4.6 * len(run_dirs_), 4.6),
                             squeeze=False)
    for i, (run, ax) in enumerate(zip(run_dirs_, axes[0])):
        cfg = _config(run)
        if cfg is None or not (Path(run) / MODEL_BEST).is_file():
            raise FileNotFoundError(f"run_dir: {run} needs {CONFIG_COPY} and {MODEL_BEST}")
        cfg.merge_from_list(["DATASET.TEST.SUBSET", str(samples)])
        test = build_dataset(cfg, "test")
        model = build_model(cfg.DISTILLER.STUDENT, test, cfg.SEED)
        model.load_state_dict(dtkd_io.load_teacher(Path(run) / MODEL_BEST))
        model.eval()
        from .data import DataLoader
        features, classes = [], []
        with no_grad():
            for x, y in DataLoader(test, 256, shuffle=False, augment=False, seed=0):
                features.append(model.forward(x, return_features=True)[1])
                classes.append(y)
        features = np.concatenate(features).reshape(len(test), -1)
        classes = np.concatenate(classes)
        embedded = TSNE(n_components=2, init="pca", random_state=seed,
                        perplexity=min(30.0, (len(features) - 1) / 3)).fit_transform(features)
        points = ax.scatter(embedded[:, 0], embedded[:, 1], c=classes, cmap="tab10", s=5)
        ax.set(title=labels[i] if labels else run_label(run, cfg), xticks=[], yticks=[])
    fig.colorbar(points, ax=axes[0].tolist(), label="class", ticks=range(10))
    fig.suptitle(f"t-SNE of pooled student features, {len(classes)} test images")
    return fig


def draw_all(paths, out, with_tsne=False, tsne_samples=1000, log=print):
    """Every figure the runs under ``paths`` support, as PNGs in ``out``; returns their paths.

    accuracy.png (all runs); temperatures-<run>.png and sharpness-<run>.png for runs that logged
    temperatures / a teacher probe; teacher_size.png when the distillation runs used two or more
    teachers; tsne.png with ``with_tsne``.
    """
    pyplot()  # fail early, before any work, if matplotlib is missing
    runs = run_dirs(paths)
    out = Path(out)
    names = _short_names(runs)
    written = [save(accuracy(runs), out / "accuracy.png")]
    for run, name in zip(runs, names):
        history = read_log(run)
        if history and "t_student_mean" in history[0]:
            written.append(save(temperatures(run), out / f"temperatures-{name}.png"))
        if any("lse_teacher" in p for p in read_probe(run)):
            written.append(save(sharpness(run), out / f"sharpness-{name}.png"))
    teachers = {c.DISTILLER.TEACHER for c in map(_config, runs)
                if c is not None and c.DISTILLER.TYPE != "NONE"}
    if len(teachers) >= 2:
        written.append(save(teacher_size(runs), out / "teacher_size.png"))
    if with_tsne:
        written.append(save(tsne(runs, samples=tsne_samples, labels=names), out / "tsne.png"))
    if log:
        for path in written:
            log(f"wrote {path}")
    return written


def _short_names(runs):
    """File-name-safe names that tell the runs apart: their paths below the common parent."""
    runs = [Path(r).resolve() for r in runs]
    parts = [r.parts for r in runs]
    common = 0
    while (len(runs) > 1 and all(len(p) > common + 1 for p in parts)
           and len({p[common] for p in parts}) == 1):
        common += 1
    if len(runs) == 1:
        common = len(parts[0]) - 1
    return [re.sub(r"[^A-Za-z0-9_.+=-]+", "_", "-".join(p[common:])) for p in parts]
