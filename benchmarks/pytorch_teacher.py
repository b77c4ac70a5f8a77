"""The README's PyTorch-teacher demonstration, step 1: train mdistiller's resnet20 (1 channel,
10 classes) on Fashion-MNIST in PyTorch and save it as mdistiller saves teachers,
``{"model": state_dict, "epoch": ..., "best_acc": ...}`` at ``<dir>/resnet20_vanilla/
ckpt_epoch_240.pth``. Needs torch; the architecture is the PyTorch model in tests/test_models.py.

    python benchmarks/pytorch_teacher.py teachers [--epochs 3]
    DTKD_TEACHERS=teachers python -m dtkd train --cfg fashion_mnist/dtkd.yaml \\
        DISTILLER.TEACHER resnet20 DISTILLER.TEACHER_CHECKPOINT ""

Same data as the shipped fashion_mnist/teacher.yaml (15,000 training images, the 5,000 test
images of DATASET.TEST.SUBSET, SEED 0), SGD lr 0.05 (0.005 in the last epoch), momentum 0.9,
weight decay 5e-4, batch 64; one torch thread.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import dtkd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_models import torch_resnet  # noqa: E402


def tensors(dataset):
    x = (dataset.images.astype(np.float32) / 255.0 - dataset.mean[0]) / dataset.std[0]
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(dataset.labels)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("teachers_dir")
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    train = dtkd.data.load_dataset("fashion_mnist", "train", pad_to=32).subset(15000, seed=0)
    test = dtkd.data.load_dataset("fashion_mnist", "test", pad_to=32).subset(5000, seed=0)
    (xtr, ytr), (xte, yte) = tensors(train), tensors(test)
    net = torch_resnet(torch, 20, (16, 16, 32, 64), 10, torch.relu)
    net.conv1 = torch.nn.Conv2d(1, 16, 3, 1, 1, bias=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(1, args.epochs + 1):
        start = time.time()
        if epoch == args.epochs:
            for group in opt.param_groups:
                group["lr"] = 0.005
        net.train()
        order = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = order[i:i + 64]
            loss = torch.nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            correct = sum((net(xte[i:i + 256]).argmax(1) == yte[i:i + 256]).sum().item()
                          for i in range(0, len(xte), 256))
        acc = 100.0 * correct / len(xte)
        print(f"epoch {epoch}: test top-1 {acc:.2f}% ({time.time() - start:.0f} s)", flush=True)
    out = Path(args.teachers_dir) / "resnet20_vanilla" / "ckpt_epoch_240.pth"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "epoch": args.epochs, "best_acc": acc}, out)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
