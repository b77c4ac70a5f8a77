"""Ship a finished teacher run as package data: dtkd/pretrained/<name>.npz + <name>.json.

The run must come from the project's own command, e.g.

    OMP_NUM_THREADS=1 python -m dtkd train --cfg fashion_mnist/teacher.yaml \\
        --out RUN_DIR --no-progress NUM_THREADS 1
    python benchmarks/ship_teacher.py RUN_DIR --command "<that command>"

It copies RUN_DIR/model_best.npz, evaluates it on the check subset (DATASET.TEST.SUBSET 1000 of
the run's config, seconds to repeat: tests/test_pretrained.py does), and writes the provenance
record: command, config, seed, best/last test top-1 and per-epoch accuracies from the run's log,
the check's top-1, the SHA-256 of the weights, the CPU, the load and the dtkd commit. Both files
are written atomically.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CHECK_TEST_IMAGES = 1000


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--name", default="fashion_mnist_resnet20")
    p.add_argument("--config-name", default="fashion_mnist/teacher.yaml",
                   help="the shipped config the run was trained with")
    p.add_argument("--command", required=True, help="the exact command that trained the run")
    p.add_argument("--seconds", type=float, default=None, help="training wall time, if measured")
    p.add_argument("--load-note", default="", help="e.g. 'under load, 2 cores shared'")
    args = p.parse_args(argv)

    import yaml

    import dtkd
    from dtkd import io as dtkd_io, pretrained
    from dtkd.config import load_config
    from dtkd.engine import read_log
    from machine import describe

    run = args.run_dir.resolve()
    history = read_log(run)
    if not history:
        raise SystemExit(f"{run}: no log.jsonl records; is the run finished?")
    run_cfg = yaml.safe_load((run / "config.yaml").read_text())
    shipped_cfg = load_config(args.config_name)
    if run_cfg["SOLVER"]["EPOCHS"] != len(history):
        raise SystemExit(f"{run}: {len(history)} epochs logged of {run_cfg['SOLVER']['EPOCHS']}")
    best = max(history, key=lambda h: h["test_acc"])
    weights = pretrained.DIRECTORY / f"{args.name}.npz"
    with open(run / "model_best.npz", "rb") as src, dtkd_io.atomic_write(weights) as dst:
        shutil.copyfileobj(src, dst)
    commit = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    record = {
        "name": args.name,
        "model": run_cfg["DISTILLER"]["STUDENT"],
        "dataset": run_cfg["DATASET"]["TYPE"],
        "config_name": args.config_name,
        "command": args.command,
        "seed": run_cfg["SEED"],
        "train_images": run_cfg["DATASET"]["SUBSET"],
        "test_images": run_cfg["DATASET"]["TEST"]["SUBSET"] or 10000,
        "epochs": len(history),
        "best_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "last_acc": history[-1]["test_acc"],
        "test_acc_per_epoch": [h["test_acc"] for h in history],
        "config_matches_shipped": all(
            run_cfg[sec][k] == shipped_cfg[sec][k] for sec in ("DATASET", "SOLVER")
            for k in ("SUBSET", "EPOCHS", "LR", "BATCH_SIZE") if k in shipped_cfg[sec]),
        "training_seconds": args.seconds,
        "machine": describe() + ([args.load_note] if args.load_note else []),
        "dtkd_version": dtkd.__version__,
        "dtkd_commit": commit,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "sha256": pretrained.sha256(weights),
        "config": run_cfg,
        "check": {"overrides": ["DATASET.TEST.SUBSET", str(CHECK_TEST_IMAGES)]},
    }
    record_path = pretrained.DIRECTORY / f"{args.name}.json"
    dtkd_io.write_text_atomic(record_path, json.dumps(record, indent=1) + "\n")
    result = pretrained.check_accuracy(args.name)
    record["check"].update(top1=result["top1"], n=result["n"])
    dtkd_io.write_text_atomic(record_path, json.dumps(record, indent=1) + "\n")
    print(f"shipped {weights} ({os.path.getsize(weights)} bytes): best {record['best_acc']:.2f}% "
          f"(epoch {record['best_epoch']}) on {record['test_images']} test images; check "
          f"{result['top1']:.2f}% on {result['n']}")


if __name__ == "__main__":
    main()
