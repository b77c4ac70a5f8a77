"""Images/s of one SGD training step (forward + backward + update) of resnet8x4, resnet32,
MobileNetV2, ShuffleV1 and ShuffleV2, and of the eval forward of resnet32x4, at batch 64 on
32x32x3 inputs (the other zoo backbones: ``--workloads zoo``, students in training, teachers in
eval): dtkd against PyTorch
CPU eager and torch.compile (Inductor; its compile time, the first two steps, reported apart)
on the same thread count, on 1 and 2 threads, with each run's peak RSS and dtkd's
time split by op. Eval runs under ``dtkd.nn.no_grad()`` / ``torch.no_grad()``.

    python benchmarks/bench_train_step.py [--threads 1 2] [--steps 10] [--batch 64] [--out FILE]
                                          [--conv-algorithm auto|exact_weight_grad|direct]
                                          [--no-torch] [--interleaved]
                                          [--workloads resnet8x4:train ...]

--conv-algorithm sets dtkd.nn.set_conv_algorithm (default 'auto': Winograd for the 3x3
stride-1 convs, weight gradients of wide layers included; 'exact_weight_grad' keeps every weight
gradient exact; 'direct' measures im2col + SGEMM everywhere, to see Winograd's gain).

Every (framework, workload, threads) runs in its own subprocess, so thread counts are set
before any pool starts and the peak RSS (ru_maxrss) belongs to that run alone. With
--interleaved, each (workload, threads) runs in one subprocess where dtkd, eager and compiled
take turns step by step (dtkd, eager, compiled, dtkd, ...), with a pause before each step on
several threads (the previous framework's OpenMP threads spin-wait after its step: without the
pause dtkd's 2-thread resnet32 step took 192 ms instead of 142): on a machine whose speed drifts
(a VM measured 2x apart minutes apart) only this compares like with like; the peak RSS columns
are then blank. Times are the median of --steps steps after 2 warm-up steps. The loss is softmax
cross-entropy on random labels (NumPy for dtkd, F.cross_entropy for PyTorch); SGD lr 0.05,
momentum 0.9, wd 5e-4.
Every worker first calls dtkd.keep_freed_memory() (what dtkd's trainer does; glibc's malloc
settings, so torch's workers get the same), or not with --default-malloc.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
WORKLOADS = [("resnet8x4", "train"), ("resnet32", "train"), ("resnet32x4", "eval")]
WORKLOADS += [("MobileNetV2", "train"), ("ShuffleV1", "train"), ("ShuffleV2", "train")]
ZOO_WORKLOADS = [("wrn_16_2", "train"), ("wrn_40_1", "train"), ("vgg8", "train"),
                 ("ResNet18", "train"), ("wrn_40_2", "eval"), ("vgg13", "eval"), ("ResNet50", "eval")]


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, 32, 32)).astype(np.float32),
            rng.integers(0, 100, size=n))


def cross_entropy_grad(logits, labels):
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1.0
    return (p / len(labels)).astype(np.float32)


# -- dtkd -----------------------------------------------------------------------------------------

def op_name(module):
    name = type(module).__name__
    if name == "Conv2d":
        from dtkd.nn.conv import uses_winograd
        name += f" {module.kernel_size[0]}x{module.kernel_size[1]}"
        name += " Winograd" if uses_winograd(module) else " direct"
    return name


def instrument(model, opt, totals):
    """Wrap every leaf module's forward/backward and the optimizer step with timers."""
    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            totals[key] += time.perf_counter() - t0
            return out
        return wrapper

    for m in model.modules():
        if not list(m.children()):
            object.__setattr__(m, "forward", timed(m.forward, (op_name(m), "forward")))
            object.__setattr__(m, "backward", timed(m.backward, (op_name(m), "backward")))
    if opt is not None:
        opt.step = timed(opt.step, ("SGD", "step"))


def dtkd_stepper(name, mode, threads, n, conv_algorithm="auto"):
    """One training step (or eval forward) of dtkd's model: (step, model, optimizer or None)."""
    sys.path.insert(0, ROOT)
    import dtkd
    from dtkd import models
    from dtkd.optim import SGD
    dtkd.set_num_threads(threads)
    dtkd.nn.set_conv_algorithm(conv_algorithm)
    model = models.create(name, num_classes=100)
    x, y = batch(n)
    opt = None
    if mode == "train":
        opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

        def step():
            dlogits = cross_entropy_grad(model(x), y)
            opt.zero_grad()
            model.backward(dlogits)
            opt.step()
    else:
        model.eval()

        def step():
            with dtkd.nn.no_grad():  # as torch.no_grad below: BN folds into the convs
                model(x)
    return step, model, opt


def dtkd_split(step, model, opt, mode, steps):
    """dtkd's time per step by op (seconds), from a pass with per-op timers (the wrappers
    cost microseconds per call, so the timed steps run before it)."""
    totals = defaultdict(float)
    instrument(model, opt, totals)
    if mode == "eval":  # folded conv+BN calls the kernel directly
        from dtkd.models import (mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg,
                                 wrn)
        fused = resnet.conv_bn

        def timed_conv_bn(conv, bn, inp, **fusions):
            t0 = time.perf_counter()
            out = fused(conv, bn, inp, **fusions)
            label = op_name(conv) + " +BN folded" + (" +add+ReLU" if fusions.get("residual") is not None
                                                    else " +ReLU" if fusions.get("relu") else "")
            totals[(label, "forward")] += time.perf_counter() - t0
            return out
        families = (resnet, resnetv2, vgg, wrn, mobilenetv2, shufflenetv1, shufflenetv2)
        for family in families:
            family.conv_bn = timed_conv_bn
    split_steps = max(3, steps // 2)
    try:
        t0 = time.perf_counter()
        for _ in range(split_steps):
            step()
        wall = (time.perf_counter() - t0) / split_steps
    finally:
        if mode == "eval":
            for family in families:
                family.conv_bn = fused
    split = {f"{k[0]} {k[1]}": v / split_steps for k, v in totals.items()}
    split["other (residual add+ReLU in training, loss, Python)"] = wall - sum(split.values())
    return split


def dtkd_flops(model, n):
    from dtkd import models
    return models.count_flops(model, (1, 3, 32, 32)) * n


def run_dtkd(name, mode, threads, steps, n, conv_algorithm="auto"):
    step, model, opt = dtkd_stepper(name, mode, threads, n, conv_algorithm)
    times = timed_steps(step, steps)
    return {"step_s": statistics.median(times), "split": dtkd_split(step, model, opt, mode, steps),
            "flops": dtkd_flops(model, n)}


# -- PyTorch --------------------------------------------------------------------------------------

def torch_resnet(torch, depth, widths, num_classes=100, in_channels=3):
    """mdistiller's CIFAR ResNet written from the architecture (BasicBlock, 1x1+BN shortcut)."""
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                                 tnn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    layers, cin = [], widths[0]
    for cout, stride in zip(widths[1:], (1, 2, 2)):
        layers += [Block(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                   for j in range((depth - 2) // 6)]
        cin = cout
    return tnn.Sequential(tnn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                          tnn.BatchNorm2d(widths[0]),
                          tnn.ReLU(), *layers, tnn.AvgPool2d(8), tnn.Flatten(),
                          tnn.Linear(widths[3], num_classes))


def torch_zoo(torch, name, num_classes=100):
    """The other backbones' PyTorch models, written from the architectures for the tests."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import _torch_mobile
    import _torch_zoo
    if name in ("MobileNetV2", "ShuffleV1", "ShuffleV2"):
        return _torch_mobile.torch_model(torch, name, num_classes)
    return _torch_zoo.torch_model(torch, name, num_classes)


def torch_stepper(name, mode, threads, n, compiled=False):
    """One training step (or eval forward) of the PyTorch model, eager or torch.compile'd."""
    import torch
    torch.set_num_threads(threads)
    sys.path.insert(0, ROOT)
    from dtkd.models.resnet import ARCHS
    model = torch_resnet(torch, *ARCHS[name]) if name in ARCHS else torch_zoo(torch, name)
    forward = torch.compile(model) if compiled else model
    x, y = batch(n)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    if mode == "train":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

        def step():
            loss = torch.nn.functional.cross_entropy(forward(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.no_grad():
                forward(x)
    return step


def compile_seconds(step):
    """The first two calls of a torch.compile'd step trace and compile (Inductor): timed apart."""
    t0 = time.perf_counter()
    step()
    step()
    return time.perf_counter() - t0


def run_torch(name, mode, threads, steps, n, conv_algorithm=None, compiled=False):
    import torch
    step = torch_stepper(name, mode, threads, n, compiled)
    compile_s = compile_seconds(step) if compiled else None
    return {"step_s": statistics.median(timed_steps(step, steps)),
            "version": torch.__version__, "compile_s": compile_s}


def run_interleaved(name, mode, threads, steps, n, conv_algorithm="auto", compiled=True):
    """dtkd, torch eager and torch.compile in one process, taking turns step by step, so that
    load from other processes (and a VM whose speed drifts) falls on all of them alike."""
    import torch
    d_step, model, opt = dtkd_stepper(name, mode, threads, n, conv_algorithm)
    steppers = {"dtkd": d_step, "torch": torch_stepper(name, mode, threads, n)}
    result = {"version": torch.__version__, "compile_s": None, "compile_error": None}
    if compiled:
        try:
            c_step = torch_stepper(name, mode, threads, n, compiled=True)
            result["compile_s"] = compile_seconds(c_step)
            steppers["compile"] = c_step
        except Exception as e:  # recorded in the report, not hidden
            result["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    for step in steppers.values():  # warm-up
        step()
        step()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import take_turns
    times = take_turns(steppers, steps, threads)
    result["step_s"] = {k: statistics.median(v) for k, v in times.items()}
    result["split"] = dtkd_split(d_step, model, opt, mode, steps)
    result["flops"] = dtkd_flops(model, n)
    return result


def timed_steps(step, steps):
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


def worker(args):
    # every framework's process keeps its freed memory, as dtkd's trainer does (glibc mallopt,
    # process-wide; torch's CPU tensors come from the same malloc)
    sys.path.insert(0, ROOT)
    import dtkd
    if not args.default_malloc:
        dtkd.keep_freed_memory()
    if args.framework == "dtkd":
        result = run_dtkd(args.model, args.mode, args.threads, args.steps, args.batch,
                          args.conv_algorithm)
    elif args.framework == "interleaved":
        result = run_interleaved(args.model, args.mode, args.threads, args.steps, args.batch,
                                 args.conv_algorithm, compiled=not args.no_compile)
    else:
        result = run_torch(args.model, args.mode, args.threads, args.steps, args.batch,
                           compiled=args.framework == "compile")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# -- driver ---------------------------------------------------------------------------------------

def mb(value):
    """A peak RSS cell: blank when not measured (--no-torch, or one process per row)."""
    return "" if value != value else f"{value:.0f}"


def spawn(framework, model, mode, threads, steps, n, conv_algorithm, default_malloc=False,
          no_compile=False):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, model, mode,
           "--threads", str(threads), "--steps", str(steps), "--batch", str(n),
           "--conv-algorithm", conv_algorithm] + (["--default-malloc"] if default_malloc else [])
    cmd += ["--no-compile"] if no_compile else []
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{framework} {model} {mode} t={threads} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    sys.path.insert(0, ROOT)
    from dtkd.nn.conv import CONV_ALGORITHMS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--out", default=None, help="also write the markdown report to this file")
    ap.add_argument("--conv-algorithm", choices=list(CONV_ALGORITHMS), default="auto")
    ap.add_argument("--no-torch", action="store_true", help="time dtkd only")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    ap.add_argument("--interleaved", action="store_true",
                    help="one process per row, the frameworks taking turns step by step "
                         "(for a noisy machine; no per-framework peak RSS)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="do not call dtkd.keep_freed_memory() in the workers (glibc's defaults)")
    ap.add_argument("--workloads", nargs="+", default=[f"{m}:{k}" for m, k in WORKLOADS],
                    help="MODEL:MODE pairs, e.g. resnet32:train; 'zoo': " + " ".join(
                        f"{m}:{k}" for m, k in ZOO_WORKLOADS))
    ap.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "MODEL", "MODE"))
    args = ap.parse_args()
    if args.worker:
        args.framework, args.model, args.mode = args.worker
        args.threads = args.threads[0]
        return worker(args)

    try:
        import torch  # noqa: F401
        have_torch = not args.no_torch
    except ImportError:
        have_torch = False
    interleaved = args.interleaved and have_torch  # with --no-torch, dtkd alone either way
    lines = ["| workload | threads | dtkd img/s | torch img/s | dtkd/torch | torch.compile img/s "
             "| dtkd/compile | compile s | dtkd GFLOP/s | dtkd peak RSS MB | torch peak RSS MB "
             "| load avg |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    splits, by_threads, compile_errors = {}, defaultdict(dict), []
    sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]
    from machine import describe
    for line in describe(args.threads):
        print(line, flush=True)
    workloads = [w for item in args.workloads for w in (
        [f"{m}:{k}" for m, k in ZOO_WORKLOADS] if item == "zoo" else [item])]
    for model, mode in (w.split(":") for w in workloads):
        for t in args.threads:
            # the 1-minute load average before the row: other processes on the cores distort
            # multi-threaded runs badly (a parallel region waits for a descheduled thread)
            load = os.getloadavg()[0]
            common = (model, mode, t, args.steps, args.batch, args.conv_algorithm,
                      args.default_malloc)
            if interleaved:
                r = spawn("interleaved", *common, no_compile=args.no_compile)
                # one process: its peak RSS is all frameworks together, so not shown
                d = {"step_s": r["step_s"]["dtkd"], "split": r["split"], "flops": r["flops"],
                     "peak_rss_mb": float("nan")}
                tr = {"step_s": r["step_s"]["torch"], "version": r["version"],
                      "peak_rss_mb": float("nan")}
                tc = ({"step_s": r["step_s"]["compile"], "compile_s": r["compile_s"]}
                      if "compile" in r["step_s"] else None)
                if r["compile_error"]:
                    compile_errors.append(f"- torch.compile {model} {mode} t={t}: "
                                          + r["compile_error"])
            else:
                d = spawn("dtkd", *common)
                tr = spawn("torch", *common) if have_torch else None
                tc = None
                if have_torch and not args.no_compile:
                    try:
                        tc = spawn("compile", *common)
                    except RuntimeError as e:  # recorded in the report, not hidden
                        compile_errors.append(f"- torch.compile {model} {mode} t={t}: "
                                              + str(e).strip().splitlines()[-1][:300])
            ips = args.batch / d["step_s"]
            tips = args.batch / tr["step_s"] if tr else float("nan")
            cips = args.batch / tc["step_s"] if tc else float("nan")
            # a training step is ~3x the forward FLOPs (forward, input grads, weight grads)
            flops = d["flops"] * (3 if mode == "train" else 1)
            lines.append(f"| {model} {mode} | {t} | {ips:.0f} | {tips:.0f} | {ips / tips:.2f}x "
                         f"| {cips:.0f} | {ips / cips:.2f}x "
                         f"| {tc['compile_s'] if tc else float('nan'):.0f} "
                         f"| {flops / d['step_s'] / 1e9:.0f} | {mb(d['peak_rss_mb'])} "
                         f"| {mb(tr['peak_rss_mb'] if tr else float('nan'))} | {load:.1f} |")
            print(lines[-1], flush=True)
            splits[(model, mode, t)] = (d["step_s"], d["split"])
            by_threads[(model, mode)][t] = (ips, tips)
    how = ("interleaved step by step in one process per row" if interleaved
           else "one process per framework and row")
    report = describe(args.threads) + [f"Batch {args.batch}, 32x32x3, median of {args.steps} "
              f"steps ({how}); "
              f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
              + (f", torch {tr['version']}" if have_torch else "")
              + f"; dtkd conv algorithm '{args.conv_algorithm}'", ""] + lines
    if len(args.threads) > 1:
        t1, t2 = args.threads[0], args.threads[-1]
        report += ["", f"Thread scaling ({t1} -> {t2} threads, speed-up of img/s):", "",
                   "| workload | dtkd | torch |", "|---|---|---|"]
        for (model, mode), r in by_threads.items():
            report.append(f"| {model} {mode} | {r[t2][0] / r[t1][0]:.2f}x | {r[t2][1] / r[t1][1]:.2f}x |")
    if compile_errors:
        report += ["", "torch.compile failures:", ""] + compile_errors
    report += ["", "dtkd time split by op (ms per step; per-op timers on a second pass):", ""]
    for (model, mode, t), (step_s, split) in splits.items():
        total = sum(split.values())
        report.append(f"- {model} {mode}, {t} thread(s), step {step_s * 1e3:.1f} ms: " + ", ".join(
            f"{k} {v * 1e3:.1f} ({100 * v / total:.0f}%)"
            for k, v in sorted(split.items(), key=lambda kv: -kv[1]) if v * 1e3 >= 0.05))
    text = "\n".join(report)
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
