"""A real dtkd training run, small enough to be killed and resumed many times in a test.

``python crash_child.py OUT_DIR`` trains it into OUT_DIR and writes ``S`` before and ``D`` after
every checkpoint save to stdout (flushed), so the test can SIGKILL it inside a save. The tests
import :func:`make_trainer` to build the identical reference and resumed runs in-process."""
import sys

import numpy as np

import dtkd
import dtkd.data
import dtkd.distill
import dtkd.io
from dtkd.config import get_default_config
from dtkd.engine import Trainer
from dtkd.optim import SGD

EPOCHS = 4


def make_trainer(out_dir):
    """resnet-free DTKD run: tiny_net student and teacher, 96 augmented 1x8x8 images."""
    from reliability_helpers import tiny_net
    dtkd.set_num_threads(1)  # the resumed run must use the thread count of the killed one
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(96, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, size=96)
    data = dtkd.data.Dataset(images, labels, [str(c) for c in range(10)])
    cfg = get_default_config()
    cfg.SOLVER.EPOCHS = EPOCHS
    cfg.SOLVER.LR = 0.05
    cfg.SOLVER.LR_DECAY_STAGES = [2, 3]
    cfg.LOG.SAVE_CHECKPOINT_FREQ = 2
    student, teacher = tiny_net(seed=0), tiny_net(seed=1)
    distiller = dtkd.distill.DTKD(student, teacher, warmup=2)
    optimizer = SGD(student.parameters(), lr=cfg.SOLVER.LR, momentum=0.9, weight_decay=5e-4)
    train = dtkd.data.DataLoader(data, 16, shuffle=True, augment=True, padding=2, seed=0)
    test = dtkd.data.DataLoader(data, 32, shuffle=False, seed=0)
    return Trainer(cfg, distiller, train, test, out_dir, progress=False, optimizer=optimizer)


def announce_saves():
    """Wrap dtkd.io.checkpoint.save (what the trainer calls) to report its start and end."""
    module = dtkd.io.checkpoint
    save = module.save

    def reporting_save(path, tree):
        sys.stdout.write("S\n")
        sys.stdout.flush()
        save(path, tree)
        sys.stdout.write("D\n")
        sys.stdout.flush()

    module.save = dtkd.io.save = reporting_save


if __name__ == "__main__":
    announce_saves()
    make_trainer(sys.argv[1]).train(resume="--resume" in sys.argv)
