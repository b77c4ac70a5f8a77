"""Images/s of one DTKD distillation step -- teacher forward in eval mode, student forward and
backward, the DTKD objective (official: min(epoch/warmup, 1) (alpha L_DTKD + beta L_KD) +
ce_weight L_CE, alpha 3, beta 1, T 4, gradient through the temperatures), SGD update -- for
resnet32x4 -> resnet8x4, resnet56 -> resnet8 (32x32x3) and resnet20 -> resnet8 (32x32x1), at
batch 64: dtkd against PyTorch eager and torch.compile (Inductor) with the same objective
written in torch, on the same thread count.

    python benchmarks/bench_distill_step.py [--threads 1 2] [--steps 15] [--batch 64]
        [--pairs resnet32x4:resnet8x4:3 ...] [--no-compile] [--out FILE]

Each thread count runs in its own subprocess (threads set before any pool starts), where the
frameworks take turns step by step (dtkd, eager, compiled, dtkd, ...) so that load from other
processes falls on all of them alike, with a pause before each step on several threads (the
previous framework's OpenMP threads spin-wait after its step and would steal a core); each
figure is the median of --steps steps after warm-up.
torch.compile's compile time (its first two steps) is reported apart. dtkd's time split
(teacher / student forward / objective / student backward / SGD) comes from the same steps.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
PAIRS = ["resnet32x4:resnet8x4:3", "resnet56:resnet8:3", "resnet20:resnet8:1"]
ALPHA, BETA, T, CE_WEIGHT, WARMUP, EPOCH = 3.0, 1.0, 4.0, 1.0, 20, 20  # warmup factor 1
LR, MOMENTUM, WD = 0.05, 0.9, 5e-4


def batch(n, channels, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, channels, 32, 32)).astype(np.float32),
            rng.integers(0, 100, size=n))


def torch_dtkd_objective(torch, s, t, y):
    """The official DTKD objective in torch (fallback T_s = T_t = T where m_s + m_t <= 0)."""
    F = torch.nn.functional
    m_s = s.max(dim=1, keepdim=True).values
    m_t = t.max(dim=1, keepdim=True).values
    denom = m_s + m_t
    ok = denom > 0
    safe = torch.where(ok, denom, torch.ones_like(denom))
    t_s = torch.where(ok, 2.0 * m_s / safe * T, torch.full_like(denom, T))
    t_t = torch.where(ok, 2.0 * m_t / safe * T, torch.full_like(denom, T))
    log_p_t = F.log_softmax(t / t_t, dim=1)
    kl = (log_p_t.exp() * (log_p_t - F.log_softmax(s / t_s, dim=1))).sum(dim=1, keepdim=True)
    l_dtkd = (t_s * t_t * kl).mean()
    l_kd = T * T * F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1),
                            reduction="batchmean")
    warm = min(EPOCH / WARMUP, 1.0)
    return warm * (ALPHA * l_dtkd + BETA * l_kd) + CE_WEIGHT * F.cross_entropy(s, y)


def dtkd_stepper(teacher_name, student_name, channels, n):
    import dtkd
    from dtkd import models
    from dtkd.distill import DTKD
    from dtkd.optim import SGD
    teacher = models.create(teacher_name, num_classes=100, in_channels=channels, seed=1)
    student = models.create(student_name, num_classes=100, in_channels=channels, seed=2)
    distiller = DTKD(student, teacher, alpha=ALPHA, beta=BETA, temperature=T, ce_weight=CE_WEIGHT,
                     warmup=WARMUP)
    opt = SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    x, y = batch(n, channels)
    split = {k: [] for k in ("teacher forward", "student forward", "DTKD objective",
                             "student backward", "SGD")}

    def step():
        t0 = time.perf_counter()
        opt.zero_grad()
        logits_t = distiller.teacher_logits(x)
        t1 = time.perf_counter()
        student.train()
        logits_s = student.forward(x)
        t2 = time.perf_counter()
        _, grad, _ = distiller.loss_and_grad(logits_s, logits_t, y, EPOCH)
        t3 = time.perf_counter()
        student.backward(grad)
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        for k, a, b in zip(split, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5)):
            split[k].append(b - a)
    return step, split, (teacher, student)


def torch_stepper(torch, teacher_name, student_name, channels, n, compiled, dtkd_models):
    sys.path.insert(0, HERE)
    from bench_train_step import torch_resnet
    from dtkd.models.resnet import ARCHS
    teacher = torch_resnet(torch, *ARCHS[teacher_name], 100, channels)
    student = torch_resnet(torch, *ARCHS[student_name], 100, channels)
    # the same weights as dtkd's models (parameter order matches module by module)
    for tm, dm in zip((teacher, student), dtkd_models):
        with torch.no_grad():
            for p, (_, q) in zip(tm.state_dict().values(), dm.state_dict().items()):
                p.copy_(torch.from_numpy(np.asarray(q)).reshape(p.shape))
    teacher.eval()
    opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    objective = lambda s, t, y: torch_dtkd_objective(torch, s, t, y)
    teacher_fwd, student_fwd = teacher, student
    if compiled:
        teacher_fwd, student_fwd = torch.compile(teacher), torch.compile(student)
        objective = torch.compile(objective)
    x, y = batch(n, channels)
    x, y = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        with torch.no_grad():
            logits_t = teacher_fwd(x)
        loss = objective(student_fwd(x), logits_t, y)
        loss.backward()
        opt.step()
    return step


def worker(args):
    import torch
    import dtkd
    dtkd.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    # as dtkd's trainer does; process-wide, so the torch steps of this process get it too
    if not args.default_malloc:
        dtkd.keep_freed_memory()
    teacher_name, student_name, channels = args.pair.split(":")
    channels = int(channels)
    d_step, split, dtkd_models = dtkd_stepper(teacher_name, student_name, channels, args.batch)
    steps = {"dtkd": d_step,
             "eager": torch_stepper(torch, teacher_name, student_name, channels, args.batch, False,
                                    dtkd_models)}
    result = {"compile_s": None, "compile_error": None}
    if not args.no_compile:
        try:
            c_step = torch_stepper(torch, teacher_name, student_name, channels, args.batch, True,
                                   dtkd_models)
            t0 = time.perf_counter()
            c_step()  # traces and compiles forward and backward graphs
            c_step()
            result["compile_s"] = time.perf_counter() - t0
            steps["compiled"] = c_step
        except Exception as e:  # recorded, not hidden: the table says compile failed
            result["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    for fn in steps.values():  # warm-up
        fn()
        fn()
    for v in split.values():
        v.clear()
    sys.path.insert(0, HERE)
    from machine import take_turns
    times = take_turns(steps, args.steps, args.threads)
    result["median_s"] = {k: statistics.median(v) for k, v in times.items()}
    result["split_ms"] = {k: 1e3 * statistics.median(v) for k, v in split.items()}
    result["torch"] = torch.__version__
    result["load"] = os.getloadavg()[0]
    print(json.dumps(result))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pairs", nargs="+", default=PAIRS, help="TEACHER:STUDENT:CHANNELS")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    ap.add_argument("--default-malloc", action="store_true",
                    help="do not call dtkd.keep_freed_memory() (glibc's defaults)")
    ap.add_argument("--out", default=None, help="also write the Markdown report to this file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.pair, args.threads = args.worker, args.threads[0]
        return worker(args)

    sys.path.insert(0, ROOT)
    sys.path.insert(0, HERE)
    from machine import describe
    lines = describe(args.threads) + [
        f"Batch {args.batch}, median of {args.steps} interleaved steps; DTKD alpha {ALPHA}, beta "
        f"{BETA}, T {T}, CE weight {CE_WEIGHT}; SGD lr {LR}, momentum {MOMENTUM}, wd {WD}", "",
        "| teacher -> student (input) | threads | dtkd img/s | torch eager img/s | torch.compile "
        "img/s | dtkd / eager | dtkd / compile | compile time s | load |",
        "|---|---|---|---|---|---|---|---|---|"]
    for line in lines:
        print(line, flush=True)
    splits = []
    for pair in args.pairs:
        teacher_name, student_name, channels = pair.split(":")
        for t in args.threads:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", pair, "--threads", str(t),
                   "--steps", str(args.steps), "--batch", str(args.batch)]
            if args.no_compile:
                cmd.append("--no-compile")
            if args.default_malloc:
                cmd.append("--default-malloc")
            env = dict(os.environ, OMP_NUM_THREADS=str(t))
            out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"{pair} t={t} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            ips = {k: args.batch / v for k, v in r["median_s"].items()}
            comp = ips.get("compiled")
            comp_txt = (f"{comp:.0f}" if comp else "failed" if r["compile_error"] else "skipped")
            vs_comp = f"{ips['dtkd'] / comp:.2f}x" if comp else "-"
            compile_s = f"{r['compile_s']:.0f}" if r["compile_s"] else "-"
            lines.append(
                f"| {teacher_name} -> {student_name} (32x32x{channels}) | {t} | {ips['dtkd']:.0f} "
                f"| {ips['eager']:.0f} | {comp_txt} | {ips['dtkd'] / ips['eager']:.2f}x | "
                f"{vs_comp} | {compile_s} | {r['load']:.1f} |")
            print(lines[-1], flush=True)
            if r["compile_error"]:
                splits.append(f"- torch.compile failed for {pair}, {t} thread(s): {r['compile_error']}")
            total = sum(r["split_ms"].values())
            splits.append(f"- {teacher_name} -> {student_name}, {t} thread(s), dtkd step "
                          f"{1e3 * r['median_s']['dtkd']:.1f} ms: " + ", ".join(
                              f"{k} {v:.1f} ({100 * v / total:.0f}%)"
                              for k, v in r["split_ms"].items()))
    lines += ["", "dtkd time split (ms, medians per part):", ""] + splits
    print("\n".join(["", "dtkd time split (ms, medians per part):", ""] + splits))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
