"""The CPU-scale reproduction of DTKD's claims on Fashion-MNIST (benchmarks/REPRODUCTION.md).

Parts (each run appends one JSON line to OUT/results.jsonl; a part restarted skips the runs
already recorded there, so an interrupted reproduction continues where it stopped):

  a     the paper's Figure-1 setting: student resnet8, teachers resnet20/32/56 trained here with
        one budget, vanilla vs KD vs DTKD at the same reference T (4)
  b     vanilla / KD / DKD / DTKD / DTKD+DKD on one pair: the teacher shipped with dtkd
        (resnet20, dtkd.pretrained) -> resnet8, at the shipped configs' (and the demo's) budget
  c     DTKD applied to TCKD only and to NCKD only (the paper's robustness comparison), same
        pair and budget as b (DKD and DTKD+DKD of part b are its reference)
  d     DTKD and DTKD+DKD with the temperatures detached (DTKD.DETACH_TEMPERATURE: no gradient
        through T_s, T_t), same pair and budget as b: does the gradient through the
        temperatures explain a difference (part b's rows are the reference)
  e     the temperature methods beyond the paper (dtkd's options, issue 12): the exact
        sharpness-matching rule, logit standardization on KD / DKD / DTKD, and CTKD's learnable
        temperature; same pair and budget as b (its KD, DKD and DTKD rows are the reference)
  cifar the epoch time of a CIFAR-100 resnet32x4 -> resnet8x4 DTKD run on synthetic
        CIFAR-shaped data (a few batches, extrapolated) and the projected 240-epoch wall time
  report  Markdown tables (mean +- std over seeds, best and last epoch, paired differences)
        from OUT/results.jsonl

    OMP_NUM_THREADS=1 python benchmarks/reproduce.py b --seeds 0 1 2 --out /work/cache/repro/r
    python benchmarks/reproduce.py report --out /work/cache/repro/r

Every run is one thread (NUM_THREADS 1): on a shared 2-core machine two parts run side by side.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# Two student budgets. SMALL (part a, and parts b/c in the first pass): resnet8 on 2,000 training
# images for 3 epochs (LR / 10 after epoch 2), evaluated on 2,000 test images (both drawn with
# the run's seed); sized so that ~40 runs fit under an hour on two shared cores.
SMALL = {"DATASET.SUBSET": 2000, "SOLVER.EPOCHS": 3, "SOLVER.LR_DECAY_STAGES": [2],
         "DATASET.TEST.SUBSET": 2000}
# Part a: teachers resnet20/32/56 trained here, one budget for all (the shipped teacher had 15,000
# images and 4 epochs; three teachers at that budget do not fit the hour).
FIG1_TEACHERS = ("resnet20", "resnet32", "resnet56")
FIG1_STUDENT = SMALL
FIG1_TEACHER = {"DATASET.SUBSET": 6000, "SOLVER.EPOCHS": 3, "SOLVER.LR_DECAY_STAGES": [2],
                "DATASET.TEST.SUBSET": 5000}
# Parts b-e: the shipped teacher and the demo's budget (10,000 images, 4 epochs, LR / 10 for the
# last; 5,000 test images): part b's seeds say how often the demo's ordering holds. SMALL gave
# seed noise larger than the methods' differences. `--set` overrides either (a new --out each).
PAIR_STUDENT = {"DATASET.SUBSET": 10000, "SOLVER.EPOCHS": 4, "SOLVER.LR_DECAY_STAGES": [3],
                "DATASET.TEST.SUBSET": 5000}
PART_METHODS = {"a": ("vanilla", "KD", "DTKD"),
                "b": ("vanilla", "KD", "DKD", "DTKD", "DTKD+DKD"),
                "c": ("DTKD-TCKD", "DTKD-NCKD"),
                "d": ("DTKD", "DTKD+DKD"),
                "e": ("DTKD-exact", "KD+LS", "DKD+LS", "DTKD+LS", "CTKD")}
# A part's rows are labelled method + this suffix (part d's DTKD is not part b's DTKD).
PART_LABEL = {"d": " (T detached)"}
# Part b's rows a part's report shows as its reference.
PART_REFERENCE = {"d": ("DTKD", "DTKD+DKD"), "e": ("KD", "DKD", "DTKD")}
# Config overrides a part adds to its methods' own (part d: the temperatures detached).
PART_OVERRIDES = {"d": {"DTKD.DETACH_TEMPERATURE": True}}


def _key(row):
    return (row["part"], row["method"], row.get("teacher") or "", int(row["seed"]))


def _done(out):
    path = out / "results.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {_key(r): r for r in rows}


def _append(out, row):
    # one write() of one line on an O_APPEND file: parts running side by side never mix lines
    fd = os.open(out / "results.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
    finally:
        os.close(fd)


def run_part(part, seeds, out, threads, extra=(), teacher_extra=()):
    from dtkd import pretrained
    from dtkd.testing import Sweep
    from dtkd.testing.sweep import as_override_list
    done = _done(out)
    log = lambda m: print(m, flush=True)
    if part == "a":
        budget = as_override_list(FIG1_STUDENT) + list(extra)
        teacher_budget = as_override_list(FIG1_TEACHER) + list(teacher_extra)
        sweep = Sweep(out / "runs_a", cache_root=out / "teachers", overrides=budget,
                      teacher_overrides=teacher_budget, threads=threads, log=log)
        jobs = [("vanilla", None, s) for s in seeds]
        # teachers from small to large, so a cut-short run still has the first ones complete
        jobs += [(m, t, s) for t in FIG1_TEACHERS for s in seeds for m in ("KD", "DTKD")]
    else:
        budget, teacher_budget = as_override_list(PAIR_STUDENT) + list(extra), []
        sweep = Sweep(out / f"runs_{part}", overrides=budget, threads=threads, log=log)
        teacher = pretrained.shipped_teacher()
        jobs = [(m, "resnet20", s) for s in seeds for m in PART_METHODS[part]]
        if part == "b":  # vanilla last: part a's vanilla student may be the same run (below)
            jobs = [j for j in jobs if j[0] != "vanilla"] + [j for j in jobs if j[0] == "vanilla"]
    for method, teacher_name, seed in jobs:
        tname = teacher_name if method != "vanilla" else ""
        key = (part, method + PART_LABEL.get(part, ""), tname, seed)
        done = _done(out)  # another part running side by side may have added rows
        if key in done:
            continue
        same = done.get(("a", "vanilla", "", seed))
        if part == "b" and method == "vanilla" and same and same["budget"] == " ".join(budget):
            continue  # the same run as part a's vanilla student (same budget and seed): reused
        overrides = dict(PART_OVERRIDES.get(part, {}))
        if part != "a" and method != "vanilla":
            overrides["DISTILLER.TEACHER_CHECKPOINT"] = str(teacher.path)
        name = f"{method}_{tname or 'none'}_seed{seed}"
        r = sweep.distill(method, overrides, seed=seed, teacher=teacher_name, name=name)
        row = r.row()
        row.update(part=part, teacher=tname, seed=seed, method=method + PART_LABEL.get(part, ""),
                   test_acc_per_epoch=[h["test_acc"] for h in r.history],
                   budget=" ".join(budget), teacher_budget=" ".join(teacher_budget),
                   load_avg=os.getloadavg()[0], finished_utc=time.strftime("%H:%M:%S", time.gmtime()))
        if part == "a" and r.teacher is not None:
            row["teacher_acc"] = r.teacher.best_acc
        elif part != "a" and method != "vanilla":
            row["teacher_acc"] = teacher.best_acc
        _append(out, row)
        print(f"[{part}] {method:10} teacher {tname or '-':9} seed {seed}: best {r.best_acc:.2f} "
              f"(ep {r.best_epoch}) last {r.last_acc:.2f}  {r.seconds:.0f} s", flush=True)


def run_cifar(out, threads, batches, batch_size):
    """Time DTKD steps resnet32x4 -> resnet8x4 (100 classes) on random CIFAR-shaped batches, and
    the student's eval forward; extrapolate to a 50,000-image epoch + 10,000-image evaluation."""
    import numpy as np

    import dtkd
    from dtkd import distill, models
    from dtkd.nn.grad_mode import no_grad
    from dtkd.optim import SGD
    if threads:
        dtkd.set_num_threads(threads)
    rng = np.random.default_rng(0)
    teacher = models.create("resnet32x4", num_classes=100, in_channels=3, seed=0)
    teacher.eval()
    student = models.create("resnet8x4", num_classes=100, in_channels=3, seed=1)
    d = distill.DTKD(student, teacher, alpha=3.0, beta=1.0, temperature=4.0, warmup=20)
    opt = SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = rng.standard_normal((batch_size, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 100, batch_size).astype(np.int64)
    times = []
    for i in range(batches + 1):  # the first step warms caches and the workspace: not counted
        t0 = time.perf_counter()
        opt.zero_grad()
        d.train_step(x, y, 1)
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    student.eval()
    evals = []
    for i in range(3):
        t0 = time.perf_counter()
        with no_grad():
            student.forward(x)
        if i:
            evals.append(time.perf_counter() - t0)
    step = float(np.median(times))
    ev = float(np.median(evals))
    epoch = step * math.ceil(50000 / batch_size) + ev * math.ceil(10000 / batch_size)
    row = {"part": "cifar", "method": "DTKD", "teacher": "resnet32x4", "student": "resnet8x4",
           "seed": 0, "threads": threads or dtkd.get_num_threads(), "batch_size": batch_size,
           "steps_timed": batches, "step_s_median": step, "step_s_all": times,
           "eval_batch_s_median": ev, "epoch_s": epoch, "projected_240_epochs_h": 240 * epoch / 3600,
           "load_avg": os.getloadavg()[0], "finished_utc": time.strftime("%H:%M:%S", time.gmtime())}
    _append(out, row)
    print(f"[cifar] {row['threads']} thread(s): step {step:.2f} s (batch {batch_size}), eval batch "
          f"{ev:.2f} s -> epoch {epoch / 60:.1f} min, 240 epochs {row['projected_240_epochs_h']:.1f} h "
          f"(load {row['load_avg']:.1f})", flush=True)


# ------------------------------------------------------------------------------------ report
def _ms(values):
    n = len(values)
    if not n:
        return "—"
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def report(out):
    rows = list(_done(out).values())
    lines = []
    for part, title in (("a", "(a) Figure-1 setting: student resnet8, teachers of increasing size"),
                        ("b", "(b) methods on one pair: shipped resnet20 -> resnet8"),
                        ("c", "(c) DTKD on TCKD only / NCKD only (same pair and budget as b)"),
                        ("d", "(d) temperatures detached (no gradient through T_s, T_t; same "
                              "pair and budget as b)"),
                        ("e", "(e) temperature methods beyond the paper (same pair and budget "
                              "as b)")):
        prs = [r for r in rows if r["part"] == part]
        if part == "b" and prs:
            have = {r["seed"] for r in prs if r["method"] == "vanilla"}
            budgets = {r["budget"] for r in prs}
            prs += [r for r in rows if r["part"] == "a" and r["method"] == "vanilla"
                    and r["seed"] not in have and r["budget"] in budgets]  # the same run
        if not prs:
            continue
        prs += [r for r in rows if r["part"] == "b" and r["method"] in PART_REFERENCE.get(part, ())]
        lines += [f"### {title}", "",
                  "| method | teacher (top-1 %) | seeds | best top-1 % | last top-1 % | per seed best / last |",
                  "|---|---|---:|---:|---:|---|"]
        groups = {}
        for r in sorted(prs, key=lambda r: (r["teacher"], r["seed"])):
            groups.setdefault((r["method"], r["teacher"]), []).append(r)
        order = ["vanilla", "KD", "KD+LS", "CTKD", "DKD", "DKD+LS", "DTKD", "DTKD (T detached)",
                 "DTKD-exact", "DTKD+LS", "DTKD+DKD", "DTKD+DKD (T detached)", "DTKD-TCKD",
                 "DTKD-NCKD"]
        rank = lambda m: order.index(m) if m in order else len(order)
        for (method, teacher), g in sorted(groups.items(),
                                           key=lambda kv: (kv[0][1], rank(kv[0][0]), kv[0][0])):
            tacc = sorted({round(r["teacher_acc"], 2) for r in g if r.get("teacher_acc")})
            tdesc = f"{teacher} ({', '.join(f'{a:.2f}' for a in tacc)})" if teacher else "—"
            per = ", ".join(f"s{r['seed']} {r['best_acc']:.2f}/{r['last_acc']:.2f}" for r in g)
            lines.append(f"| {method} | {tdesc} | {len(g)} | {_ms([r['best_acc'] for r in g])} | "
                         f"{_ms([r['last_acc'] for r in g])} | {per} |")
        lines += ["", *_paired(prs, part), ""]
    cif = [r for r in rows if r["part"] == "cifar"]
    for r in cif:
        lines.append(f"- CIFAR-100 resnet32x4 -> resnet8x4 DTKD, {r['threads']} thread(s), batch "
                     f"{r['batch_size']}: median step {r['step_s_median']:.2f} s over "
                     f"{r['steps_timed']} steps, eval batch {r['eval_batch_s_median']:.2f} s -> "
                     f"epoch {r['epoch_s'] / 60:.1f} min; 240 epochs {r['projected_240_epochs_h']:.1f} h "
                     f"(load average {r['load_avg']:.1f} at the end)")
    return "\n".join(lines)


def _paired(prs, part):
    """Per-seed differences (same init, data, test subset) between methods sharing a teacher."""
    by = {}
    for r in prs:
        by[(r["method"], r["teacher"], r["seed"])] = r
    pairs = {"a": [("DTKD", "KD"), ("KD", "vanilla"), ("DTKD", "vanilla")],
             "b": [("DTKD", "KD"), ("KD", "vanilla"), ("DTKD", "vanilla"), ("DKD", "KD"),
                   ("DTKD+DKD", "DKD"), ("DTKD+DKD", "DTKD")],
             "c": [("DTKD-TCKD", "DTKD-NCKD")],
             "d": [("DTKD (T detached)", "DTKD"), ("DTKD+DKD (T detached)", "DTKD+DKD"),
                   ("DTKD+DKD (T detached)", "DTKD (T detached)")],
             "e": [("DTKD-exact", "DTKD"), ("KD+LS", "KD"), ("DKD+LS", "DKD"),
                   ("DTKD+LS", "DTKD"), ("CTKD", "KD")]}[part]
    teachers = sorted({r["teacher"] for r in prs if r["teacher"]}) or ["resnet20"]
    out = ["Paired per-seed differences in points (same seed = same student init, training "
           "images, batch order and test subset):", "",
           "| teacher | difference | best: mean ± std | seeds ahead/tied/behind | last: mean ± std | seeds ahead/tied/behind |",
           "|---|---|---:|---:|---:|---:|"]
    for teacher in teachers:
        for a, b in pairs:
            cells = []
            for metric in ("best_acc", "last_acc"):
                diffs = []
                for (m, t, s), r in sorted(by.items()):
                    other = by.get((b, "" if b == "vanilla" else teacher, s))
                    if m == a and t == teacher and other is not None:
                        diffs.append(r[metric] - other[metric])
                wtl = (sum(d > 0 for d in diffs), sum(d == 0 for d in diffs), sum(d < 0 for d in diffs))
                cells += [_ms(diffs), "/".join(map(str, wtl))] if diffs else []
            if cells:
                out.append(f"| {teacher} | {a} − {b} | " + " | ".join(cells) + " |")
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=["a", "b", "c", "d", "e", "cifar", "report"])
    p.add_argument("--out", type=Path, required=True, help="folder for results.jsonl and the runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="override the parts' budget for every run (e.g. --set SOLVER.EPOCHS 2); "
                        "use a new --out for another budget: finished runs are keyed by "
                        "part/method/teacher/seed")
    p.add_argument("--teacher-set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="part a: override the teachers' budget")
    p.add_argument("--batches", type=int, default=4, help="cifar: timed steps")
    p.add_argument("--batch-size", type=int, default=64, help="cifar: batch size (mdistiller: 64)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "report":
        print(report(args.out))
        return 0
    if args.part != "cifar":
        from machine import describe
        print("\n".join(describe()), flush=True)
    start = time.perf_counter()
    if args.part == "cifar":
        run_cifar(args.out, args.threads, args.batches, args.batch_size)
    else:
        run_part(args.part, args.seeds, args.out, args.threads,
                 [v for kv in args.set for v in kv], [v for kv in args.teacher_set for v in kv])
    print(f"[{args.part}] done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
