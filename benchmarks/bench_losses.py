"""Benchmark: DTKD / KD / DKD forward + backward, dtkd (C) vs NumPy vs PyTorch eager autograd.

Each row times one loss + its gradient w.r.t. the student logits at a batch shape (N, C), on
the same thread count for dtkd and PyTorch, and prints the ratios. Times are the best of
--repeats runs of a loop long enough to last ~--seconds.

    python benchmarks/bench_losses.py [--threads 2] [--repeats 5] [--seconds 0.2] [--clock wall]
    python benchmarks/bench_losses.py --threshold-sweep   # 1 vs N threads by batch size
    python benchmarks/bench_losses.py --shapes 64x100 --losses KD DTKD   # a subset
    python benchmarks/bench_losses.py --rules   # DTKD's exact rule / logit standardization
                                                # vs the official rule (issue 12)
"""
import argparse
import time

import numpy as np

import dtkd
from dtkd import losses

SHAPES = [(64, 100), (256, 100), (1024, 1000)]
T = 4.0


# ---- NumPy (float32) forward + analytic backward, the baseline a NumPy user would write ----

def _log_softmax(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def numpy_kd(s, t):
    lq, lp = _log_softmax(s / T), _log_softmax(t / T)
    p = np.exp(lp)
    loss = T * T * (p * (lp - lq)).sum() / len(s)
    return loss, T * (np.exp(lq) - p) / len(s)


def numpy_dtkd(s, t):
    n = len(s)
    ms, mt = s.max(axis=1, keepdims=True), t.max(axis=1, keepdims=True)
    a, b = 2 * ms / (ms + mt) * T, 2 * mt / (ms + mt) * T
    lq, lp = _log_softmax(s / a), _log_softmax(t / b)
    q, p = np.exp(lq), np.exp(lp)
    r = lp - lq
    kl = (p * r).sum(axis=1, keepdims=True)
    grad = b * (q - p)
    # through the temperatures: dL/dT_s, dL/dT_t, and dT/dm_s = +-2 T m_t / (m_s + m_t)^2
    dl_da = b * kl + b * ((p - q) * s).sum(axis=1, keepdims=True) / a
    dl_db = a * kl - a * (p * (r - kl) * t).sum(axis=1, keepdims=True) / b
    dmax = 2 * T * mt / (ms + mt) ** 2 * (dl_da - dl_db)
    grad[np.arange(n), s.argmax(axis=1)] += dmax[:, 0]
    return (a * b * kl).sum() / n, grad / n


def numpy_dkd(s, t, y, alpha=1.0, beta=8.0):
    n = len(s)
    gt = np.zeros(s.shape, dtype=bool)
    gt[np.arange(n), y] = True
    q, p = np.exp(_log_softmax(s / T)), np.exp(_log_softmax(t / T))
    qy, py = q[gt], p[gt]
    tckd = (py * np.log(py / qy) + (1 - py) * np.log((1 - py) / (1 - qy))).sum()
    zs, zt = np.where(gt, -np.inf, s / T), np.where(gt, -np.inf, t / T)
    lqh, lph = _log_softmax(zs), _log_softmax(zt)
    qh, ph = np.exp(lqh), np.exp(lph)
    with np.errstate(invalid="ignore"):  # -inf - -inf at the target, masked out
        nckd = np.where(gt, 0.0, ph * (lph - lqh)).sum()
    g = alpha * (py - qy)[:, None] * qh + beta * (qh - ph)
    g[gt] = alpha * (qy - py)
    return T * T * (alpha * tckd + beta * nckd) / n, T * g / n


# ---- PyTorch eager autograd ----

def torch_fns(torch):
    F = torch.nn.functional

    def kd(s, t):
        kl = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="none")
        return (kl.sum(1) * T * T).mean()

    def dtkd_(s, t):
        ms, _ = s.max(dim=1, keepdim=True)
        mt, _ = t.max(dim=1, keepdim=True)
        ts, tt = 2 * ms / (ms + mt) * T, 2 * mt / (ms + mt) * T
        kl = F.kl_div(F.log_softmax(s / ts, dim=1), F.softmax(t / tt, dim=1), reduction="none")
        return (kl.sum(1, keepdim=True) * ts * tt).mean()

    def dkd(s, t, gt, alpha=1.0, beta=8.0):
        ps, pt = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)
        bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
        bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
        tckd = F.kl_div(bs.log(), bt, reduction="sum") * T * T / s.shape[0]
        lq = F.log_softmax(s / T - 1000.0 * gt, dim=1)
        pt2 = F.softmax(t / T - 1000.0 * gt, dim=1)
        nckd = F.kl_div(lq, pt2, reduction="sum") * T * T / s.shape[0]
        return alpha * tckd + beta * nckd

    return kd, dtkd_, dkd


CLOCK = time.perf_counter


def best_time(fn, repeats, seconds):
    fn()
    t0 = CLOCK()
    fn()
    once = max(CLOCK() - t0, 1e-6)
    loops = max(1, int(seconds / once))
    best = float("inf")
    for _ in range(repeats):
        t0 = CLOCK()
        for _ in range(loops):
            fn()
        best = min(best, (CLOCK() - t0) / loops)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: perf_counter; cpu: process CPU time (robust on a loaded machine, "
                         "meaningful with --threads 1 only)")
    ap.add_argument("--shapes", nargs="+", default=[f"{n}x{c}" for n, c in SHAPES],
                    help="batch shapes NxC (default: %(default)s)")
    ap.add_argument("--losses", nargs="+", default=["KD", "DTKD", "DKD"],
                    choices=["KD", "DTKD", "DKD"])
    ap.add_argument("--rules", action="store_true",
                    help="time DTKD with the exact temperature rule and with logit "
                         "standardization against the official rule, and CTKD's per-sample KD")
    ap.add_argument("--threshold-sweep", action="store_true",
                    help="time DTKD on 1 thread vs --threads threads for growing N*C")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    dtkd.set_num_threads(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)

    if args.threshold_sweep:
        print(f"DTKD fwd+bwd, C=100; time with 1 thread / time with {args.threads} threads"
              " (the kernels only use threads when N*C >= 32768)")
        for n in (32, 64, 128, 256, 320, 512, 1024):
            s = rng.normal(size=(n, 100)).astype(np.float32)
            t = (rng.normal(size=(n, 100)) * 2 + 1).astype(np.float32)
            fn = lambda: losses.dtkd(s, t)  # noqa: E731
            times = []
            for threads in (1, args.threads):
                dtkd.set_num_threads(threads)
                times.append(best_time(fn, args.repeats, args.seconds))
            print(f"  N*C={n * 100:7d}: 1 thread {times[0] * 1e6:8.1f} us, {args.threads} threads "
                  f"{times[1] * 1e6:8.1f} us, speed-up {times[0] / times[1]:.2f}x")
        return

    if args.rules:
        rule_costs(args, rng)
        return

    print(f"dtkd {dtkd.__version__}, isa={dtkd.cpu_features()['isa']}, threads={args.threads}, "
          f"torch={'%s' % torch.__version__ if torch else 'not installed'}, clock={args.clock}")
    print("forward + backward (grad w.r.t. student logits), best of "
          f"{args.repeats}; ratio = other time / dtkd time")
    header = f"{'loss':5s} {'shape':>11s} {'dtkd us':>9s} {'numpy us':>9s} {'x numpy':>8s}"
    if torch:
        header += f" {'torch us':>9s} {'x torch':>8s}"
    print(header)
    if torch:
        t_kd, t_dtkd, t_dkd = torch_fns(torch)
    for n, c in (tuple(int(v) for v in shape.lower().split("x")) for shape in args.shapes):
        s = rng.normal(size=(n, c)).astype(np.float32) * 2
        t = (rng.normal(size=(n, c)) * 4 + 1).astype(np.float32)
        y = rng.integers(0, c, size=n)
        cases = {
            "KD": (lambda: losses.kd(s, t), lambda: numpy_kd(s, t)),
            "DTKD": (lambda: losses.dtkd(s, t), lambda: numpy_dtkd(s, t)),
            "DKD": (lambda: losses.dkd(s, t, y), lambda: numpy_dkd(s, t, y)),
        }
        if torch:
            ts_, tt_ = torch.from_numpy(s), torch.from_numpy(t)
            gt = torch.nn.functional.one_hot(torch.from_numpy(y), c).bool()

            def torch_step(fn, *extra):
                def step():
                    x = ts_.clone().requires_grad_(True)
                    fn(x, tt_, *extra).backward()
                    return x.grad
                return step

            torch_cases = {"KD": torch_step(t_kd), "DTKD": torch_step(t_dtkd),
                           "DKD": torch_step(t_dkd, gt)}
        for name in args.losses:
            ours, ref = cases[name]
            # the baselines must compute the same thing
            np.testing.assert_allclose(ours().grad, ref()[1], rtol=1e-3, atol=1e-6)
            t_ours = best_time(ours, args.repeats, args.seconds)
            t_np = best_time(ref, args.repeats, args.seconds)
            line = (f"{name:5s} {f'({n},{c})':>11s} {t_ours * 1e6:9.1f} {t_np * 1e6:9.1f} "
                    f"{t_np / t_ours:7.1f}x")
            if torch:
                t_torch = best_time(torch_cases[name], args.repeats, args.seconds)
                line += f" {t_torch * 1e6:9.1f} {t_torch / t_ours:7.1f}x"
            print(line, flush=True)


def rule_costs(args, rng):
    """DTKD forward + backward under each temperature option, as a multiple of the official
    rule's time at the same shape (one process, interleaved, best of --repeats)."""
    print(f"dtkd {dtkd.__version__}, isa={dtkd.cpu_features()['isa']}, threads={args.threads}, "
          f"clock={args.clock}; DTKD fwd+bwd, best of {args.repeats}; x = time / official rule's")
    print(f"{'variant':28s} {'shape':>11s} {'us':>9s} {'x official':>10s}")
    for n, c in (tuple(int(v) for v in shape.lower().split("x")) for shape in args.shapes):
        s = rng.normal(size=(n, c)).astype(np.float32) * 2
        t = (rng.normal(size=(n, c)) * 4 + 1).astype(np.float32)
        temps = np.full(n, T, dtype=np.float32)
        variants = {
            "official rule": lambda: losses.dtkd(s, t),
            "exact rule": lambda: losses.dtkd(s, t, rule="exact"),
            "exact rule, detached": lambda: losses.dtkd(s, t, rule="exact", detach_temperature=True),
            "official + logit stand.": lambda: losses.dtkd(s, t, logit_stand=True),
            "exact + logit stand.": lambda: losses.dtkd(s, t, rule="exact", logit_stand=True),
            "KD at per-sample T (CTKD)": lambda: losses.kd_temperature(s, t, temps),
        }
        fallbacks = losses.dtkd(s, t, rule="exact").n_fallback
        times = {name: best_time(fn, args.repeats, args.seconds) for name, fn in variants.items()}
        for name, sec in times.items():
            print(f"{name:28s} {f'({n},{c})':>11s} {sec * 1e6:9.1f} "
                  f"{sec / times['official rule']:9.2f}x", flush=True)
        print(f"  (exact rule: {fallbacks} of {n} samples without a root, official rule used)")


if __name__ == "__main__":
    main()
