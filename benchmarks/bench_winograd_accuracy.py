"""Winograd accuracy in training, measured (issue 11 item 3): what F(4x4) and F(2x2) cost in
accuracy against the exact float32 convolution ('direct'), per layer and with depth, and
whether it changes what a training run reaches.

    python benchmarks/bench_winograd_accuracy.py [--part grad|train|distill|both] [--model resnet32]
        [--batch 32] [--train-images 10000] [--test-images 5000] [--epochs 4] [--seeds 0 1 2]
        [--out FILE]

Part 'grad': one training-mode forward + backward of ``--model`` (random init, random
32x32x3 batch, cross-entropy on random labels) in dtkd under 'direct', 'exact_weight_grad'
(Winograd F(4x4) forward and input gradient, exact weight gradients), 'auto' with F(2x2) and
'auto' with F(4x4) (Winograd weight gradients on layers of >= 32 channels), each against the
same model in float64 PyTorch (same weights; ReLU masks not pinned, so a flipped mask shows as
error). Per conv layer in forward order: the max-norm relative error of its weight gradient,
max|g - g64| / max|g64|; plus the logits.

Part 'distill': the demo's DTKD run (shipped resnet20 teacher -> resnet8 on Fashion-MNIST,
10,000 images x 4 epochs, test on 5,000; `python -m dtkd demo`'s budget) per seed under each of
'auto' and 'exact_weight_grad': best test top-1. Lower-variance than part 'train' (the
reproduction's DTKD runs spread +-0.35 over 5 seeds).

Part 'train': resnet8 on Fashion-MNIST (28x28 padded to 32x32, 1 channel) trained from the
same seeded init and batch order with 'auto', 'exact_weight_grad' and 'direct', for --epochs
epochs on the first --train-images training images (SGD lr 0.05, momentum 0.9, wd 5e-4, batch
64, crop+flip augmentation), test accuracy on --test-images, for each seed.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]

import dtkd  # noqa: E402
from dtkd import losses, models  # noqa: E402
from dtkd.nn import conv as nn_conv  # noqa: E402

SETTINGS = [("direct", "direct", None), ("F(4x4), exact dW", "exact_weight_grad", 4),
            ("F(2x2)", "auto", 2), ("F(4x4)", "auto", 4)]
TRAIN_ALGORITHMS = ("auto", "exact_weight_grad", "direct")


def use(algorithm, tile):
    dtkd.nn.set_conv_algorithm(algorithm)
    if tile is not None:
        nn_conv.WINOGRAD_TILE_TRAIN = tile


def grad_errors(model_name, batch):
    import torch
    from bench_train_step import torch_resnet
    from dtkd.models.resnet import ARCHS
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 100, size=batch)
    model = models.create(model_name, num_classes=100, seed=0)
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, dtkd.nn.Conv2d)]
    # float64 reference, same weights (parameter/buffer order matches module by module)
    ref = torch_resnet(torch, *ARCHS[model_name], 100, 3).double()
    with torch.no_grad():
        for p, q in zip(ref.state_dict().values(), model.state_dict().values()):
            p.copy_(torch.from_numpy(np.asarray(q, dtype=np.float64)).reshape(p.shape))
    ref.train()
    logits64 = ref(torch.from_numpy(x.astype(np.float64)))
    torch.nn.functional.cross_entropy(logits64, torch.from_numpy(y)).backward()
    ref_convs = [m for m in ref.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(ref_convs) == len(convs)
    state = model.state_dict()
    rows = {}
    for label, algorithm, tile in SETTINGS:
        use(algorithm, tile)
        model.load_state_dict(state)  # running stats back to the start
        model.train()
        model.zero_grad()
        logits = model(x)
        model.backward(losses.cross_entropy(logits, y).grad)
        errs = []
        for (name, m), r in zip(convs, ref_convs):
            g64 = r.weight.grad.numpy()
            errs.append(float(np.abs(m.weight.grad - g64).max() / np.abs(g64).max()))
        l64 = logits64.detach().numpy()
        rows[label] = (errs, float(np.abs(logits - l64).max() / np.abs(l64).max()))
    use("auto", 4)
    return [n for n, _ in convs], [nn_conv.uses_winograd(m) for _, m in convs], rows


def train_run(algorithm, seed, n_train, n_test, epochs):
    from dtkd.data import DataLoader, load_fashion_mnist
    from dtkd.optim import SGD
    use(algorithm, None if algorithm == "direct" else 4)
    train = load_fashion_mnist("train").subset(n_train, seed=0).padded(32)
    test = load_fashion_mnist("test").subset(n_test, seed=0).padded(32)
    model = models.create("resnet8", num_classes=10, in_channels=1, seed=seed)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(train, 64, shuffle=True, augment=True, seed=seed)
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            model.backward(losses.cross_entropy(model(xb), yb).grad)
            opt.step()
    model.eval()
    correct = 0
    with dtkd.nn.no_grad():
        for xb, yb in DataLoader(test, 256, shuffle=False, augment=False):
            correct += int((model(xb).argmax(axis=1) == yb).sum())
    use("auto", 4)
    return correct / len(test)


def distill_run(algorithm, seed):
    """Best test top-1 of the demo's DTKD run under ``algorithm`` (see the module docstring)."""
    import tempfile
    from dtkd import engine, pretrained
    from dtkd.config import load_config
    use(algorithm, None if algorithm == "direct" else 4)
    teacher = pretrained.shipped_teacher(pretrained.DEMO_TEACHER)
    cfg = load_config("fashion_mnist/dtkd.yaml", [
        "SEED", str(seed), "SOLVER.EPOCHS", "4", "SOLVER.LR_DECAY_STAGES", "[3]",
        "DATASET.SUBSET", "10000", "DATASET.TEST.SUBSET", "5000",
        "DISTILLER.TEACHER_CHECKPOINT", str(teacher.path)])
    with tempfile.TemporaryDirectory() as out:
        summary = engine.build_trainer(cfg, out_dir=out, progress=False).train()
    use("auto", 4)
    return summary["best_acc"]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["grad", "train", "distill", "both"], default="both")
    ap.add_argument("--model", default="resnet32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--train-images", type=int, default=10000)
    ap.add_argument("--test-images", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dtkd.set_num_threads(args.threads)
    from machine import describe
    lines = describe((args.threads,), seconds=0.1)
    if args.part in ("grad", "both"):
        names, wino, rows = grad_errors(args.model, args.batch)
        labels = [s[0] for s in SETTINGS]
        lines += ["", f"Weight-gradient error per conv of {args.model} (training mode, batch "
                  f"{args.batch}), max|g - g64| / max|g64| against float64 PyTorch:", "",
                  "| # | conv | Winograd under 'auto' | " + " | ".join(labels) + " |",
                  "|---|---|---|" + "---|" * len(labels)]
        for i, name in enumerate(names):
            lines.append(f"| {i} | {name} | {'yes' if wino[i] else 'no'} | "
                         + " | ".join(f"{rows[l][0][i]:.1e}" for l in labels) + " |")
        lines.append("| | max over layers | | " + " | ".join(f"{max(rows[l][0]):.1e}" for l in labels) + " |")
        lines.append("| | logits | | " + " | ".join(f"{rows[l][1]:.1e}" for l in labels) + " |")
        third = max(1, len(names) // 3)
        lines += ["", "Growth with depth (median error over the first / middle / last third of "
                  "the convs, counted from the input):", ""]
        for l in labels:
            e = rows[l][0]
            parts = [statistics.median(e[k * third:(k + 1) * third] or e[-1:]) for k in range(3)]
            lines.append(f"- {l}: " + " / ".join(f"{v:.1e}" for v in parts))
        print("\n".join(lines), flush=True)
    if args.part in ("train", "both"):
        lines += ["", f"resnet8 on Fashion-MNIST ({args.train_images} train images, "
                  f"{args.epochs} epochs, test on {args.test_images}): test accuracy", "",
                  "| seed | " + " | ".join(f"'{a}'" for a in TRAIN_ALGORITHMS)
                  + " | 'auto' - 'direct' |", "|---|" + "---|" * (len(TRAIN_ALGORITHMS) + 1)]
        accs = {a: [] for a in TRAIN_ALGORITHMS}
        for seed in args.seeds:
            t0 = time.time()
            for a in TRAIN_ALGORITHMS:
                accs[a].append(train_run(a, seed, args.train_images, args.test_images,
                                         args.epochs))
            lines.append(f"| {seed} | " + " | ".join(f"{accs[a][-1]:.4f}" for a in TRAIN_ALGORITHMS)
                         + f" | {accs['auto'][-1] - accs['direct'][-1]:+.4f} |")
            print(lines[-1], f"({time.time() - t0:.0f} s)", flush=True)
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
        diffs = [x - y for x, y in zip(accs["auto"], accs["direct"])]
        lines.append("| mean ± sd | " + " | ".join(
            f"{statistics.mean(accs[a]):.4f} ± {sd(accs[a]):.4f}" for a in TRAIN_ALGORITHMS)
            + f" | {statistics.mean(diffs):+.4f} ± {sd(diffs):.4f} |")
        print(lines[-1])
    if args.part == "distill":
        algos = ("auto", "exact_weight_grad")
        lines += ["", "DTKD, shipped resnet20 -> resnet8 on Fashion-MNIST (10,000 images x 4 "
                  "epochs, test on 5,000): best test top-1 %", "",
                  "| seed | 'auto' | 'exact_weight_grad' | difference |", "|---|---|---|---|"]
        accs = {a: [] for a in algos}
        for seed in args.seeds:
            for a in algos:
                accs[a].append(distill_run(a, seed))
            lines.append(f"| {seed} | {accs['auto'][-1]:.2f} | {accs['exact_weight_grad'][-1]:.2f}"
                         f" | {accs['auto'][-1] - accs['exact_weight_grad'][-1]:+.2f} |")
            print(lines[-1], flush=True)
        diffs = [x - y for x, y in zip(*accs.values())]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
        lines.append("| mean ± sd | " + " | ".join(
            f"{statistics.mean(accs[a]):.2f} ± {sd(accs[a]):.2f}" for a in algos)
            + f" | {statistics.mean(diffs):+.2f} ± {sd(diffs):.2f} |")
        print(lines[-1])
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
