"""Command line: ``python -m dtkd <command>`` (also installed as ``dtkd``).

    python -m dtkd train --cfg fashion_mnist/dtkd.yaml SOLVER.EPOCHS 2
    python -m dtkd train --cfg cifar100/dtkd/res32x4_res8x4.yaml --resume
    python -m dtkd eval --cfg fashion_mnist/dtkd.yaml --checkpoint output/.../model_best.npz
    python -m dtkd demo
    python -m dtkd plot output/fashion_mnist/dtkd_resnet20_resnet8 [RUN_DIR ...]
    python -m dtkd models
    python -m dtkd configs
    python -m dtkd sweep --cfg fashion_mnist/dtkd.yaml --grid grid.yaml SOLVER.EPOCHS 3

``--cfg`` takes a YAML path or the name of a shipped config (``python -m dtkd configs`` lists
them). Trailing ``KEY VALUE`` pairs override the config (``SOLVER.EPOCHS 10``). Pieces each
command needs are imported when it runs, so ``--help`` always works.
"""
import argparse
import json
import re
import sys

__all__ = ["main", "build_parser"]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m dtkd",
        description="Dynamic Temperature Knowledge Distillation (DTKD), KD and DKD on CPUs.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True

    train = sub.add_parser("train", help="train a model or distill a student, as a config says",
                           description="Train per a YAML config: DISTILLER.TYPE NONE trains "
                           "DISTILLER.STUDENT with cross-entropy (use it for teachers); KD, DKD, "
                           "DTKD distill it from DISTILLER.TEACHER loaded from "
                           "DISTILLER.TEACHER_CHECKPOINT.")
    _add_cfg_arguments(train)
    train.add_argument("--out", metavar="DIR",
                       help="output directory (default: LOG.PREFIX/EXPERIMENT.PROJECT/"
                            "(EXPERIMENT.NAME or EXPERIMENT.TAG))")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in the output directory from its latest.npz")
    train.add_argument("--distributed", choices=("none", "mpi"), default="none",
                       help="mpi: data parallel over the processes of `mpirun -n K` (each "
                            "trains on 1/K of every batch; rank 0 writes; needs mpi4py)")
    train.add_argument("--sync-bn", action="store_true",
                       help="with --distributed mpi: BatchNorm statistics over the global "
                            "batch (default: per process, as PyTorch DDP)")
    _add_progress_arguments(train)
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint on the test split",
                              description="Top-1/top-5 accuracy and loss of DISTILLER.STUDENT "
                              "(or --model) with weights from --checkpoint on DATASET.TYPE's test "
                              "split (DATASET.TEST.SUBSET applies).")
    _add_cfg_arguments(evaluate)
    evaluate.add_argument("--checkpoint", required=True, metavar="PATH",
                          help="dtkd checkpoint (.npz: model_best.npz, latest.npz, ...)")
    evaluate.add_argument("--model", metavar="NAME",
                          help="backbone name (default: the config's DISTILLER.STUDENT)")
    evaluate.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_progress_arguments(evaluate)
    evaluate.set_defaults(func=_cmd_eval)

    demo = sub.add_parser("demo", help="Fashion-MNIST demo: teacher, then vanilla vs KD vs DTKD",
                          description="Trains (or reuses) a teacher on Fashion-MNIST, distills "
                          "the same student with vanilla CE, KD and DTKD under one seed and "
                          "budget, prints the accuracy table and saves a plot. Extra arguments "
                          "go to the demo.")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER, metavar="...",
                      help="arguments for the demo (see `python -m dtkd demo --help` once "
                           "the demo is installed)")
    demo.set_defaults(func=_cmd_demo)

    plot = sub.add_parser("plot", help="draw the paper's figures from run directories",
                          description="Draws what the runs' logs support into PNGs: test "
                          "accuracy per epoch (all runs), per-sample temperatures over training and "
                          "teacher/student sharpness (DTKD runs), student accuracy vs teacher size "
                          "(runs with two or more teachers), and with --tsne a t-SNE of the "
                          "students' pooled features. A folder that is not a run is searched for "
                          "runs (e.g. the demo's output).")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR",
                      help="run directories (holding log.jsonl), or folders holding runs")
    plot.add_argument("--out", default="dtkd_plots", metavar="DIR",
                      help="folder for the PNGs (default ./dtkd_plots)")
    plot.add_argument("--tsne", action="store_true",
                      help="also a t-SNE of each run's student features on test images (needs "
                           "scikit-learn, the run's model_best.npz and its dataset)")
    plot.add_argument("--tsne-samples", type=int, default=1000, metavar="N",
                      help="test images in the t-SNE (default 1000)")
    plot.set_defaults(func=_cmd_plot)

    models = sub.add_parser("models", help="list backbones with parameter counts and FLOPs")
    models.add_argument("--num-classes", type=int, default=100, help="classes (default 100)")
    models.add_argument("--in-channels", type=int, default=3, help="input channels (default 3)")
    models.set_defaults(func=_cmd_models)

    _add_sweep_parser(sub)

    configs = sub.add_parser("configs", help="list the configs shipped with dtkd")
    configs.set_defaults(func=_cmd_configs)
    return parser


def main(argv=None):
    """Entry point; returns the process exit status."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:
        # the demo has its own options (--out, --epochs, ...): argparse's REMAINDER would
        # refuse them as unknown options of this parser, so hand them over untouched
        args, _ = parser.parse_known_args(["demo"])
        args.demo_args = argv[1:]
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted; `train --resume` continues from the last completed epoch",
              file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, NotImplementedError, ImportError) as e:
        # Our errors name what is wrong; a traceback would only bury the message.
        print(f"dtkd {args.command}: error: {e}", file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------------------------

def _add_cfg_arguments(p):
    p.add_argument("--cfg", required=True, metavar="PATH",
                   help="YAML config: a path, or a shipped name such as fashion_mnist/dtkd.yaml")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, e.g. SOLVER.EPOCHS 10 DTKD.T 4")


def _add_progress_arguments(p):
    group = p.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="always show progress bars")
    group.add_argument("--no-progress", dest="progress", action="store_false",
                       help="never show progress bars (default: only on a terminal)")


def _load_cfg(args):
    from .config import ConfigError, load_config
    misplaced = [o for o in args.opts if o.startswith("--")]
    if misplaced:
        raise ConfigError(f"options {' '.join(misplaced)} must come before the KEY VALUE overrides "
                          f"(everything after the first KEY is read as KEY VALUE pairs)")
    return load_config(args.cfg, args.opts)


def _cmd_train(args):
    if args.distributed == "mpi":
        return _cmd_train_mpi(args)
    if args.sync_bn:
        raise ValueError("--sync-bn: only with --distributed mpi")
    from .engine.build import build_trainer
    from .engine.trainer import OutputDirInUse
    cfg = _load_cfg(args)
    trainer = build_trainer(cfg, out_dir=args.out, progress=args.progress)
    print(f"training {cfg.DISTILLER.STUDENT} ({cfg.DISTILLER.TYPE}) for {cfg.SOLVER.EPOCHS} epochs "
          f"-> {trainer.out_dir}")
    try:
        summary = trainer.train(resume=args.resume)
    except OutputDirInUse as e:
        print(f"dtkd train: error: {e}", file=sys.stderr)
        return 2
    print(f"best test top-1 {summary['best_acc']:.2f}% (epoch {summary['best_epoch']}), "
          f"last {summary['last_acc']:.2f}%")
    print(f"outputs in {trainer.out_dir}: model_best.npz, model_last.npz, latest.npz, "
          "log.jsonl, worklog.txt")
    return 0


def _cmd_eval(args):
    from . import io as dtkd_io
    from .engine.build import build_dataset, build_model, build_test_loader
    from .engine.trainer import evaluate
    cfg = _load_cfg(args)
    if cfg.NUM_THREADS:
        from . import set_num_threads
        set_num_threads(cfg.NUM_THREADS)
    test = build_dataset(cfg, "test")
    test_loader = build_test_loader(cfg, test)
    name = args.model or cfg.DISTILLER.STUDENT
    model = build_model(name, test, cfg.SEED)
    state = dtkd_io.load_teacher(args.checkpoint)
    _check_architecture(model, name, state, args)
    model.load_state_dict(state, strict=False)  # checked: equal but for num_batches_tracked
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = evaluate(model, test_loader, progress)
    result.update(model=args.model or cfg.DISTILLER.STUDENT, checkpoint=args.checkpoint,
                  dataset=cfg.DATASET.TYPE)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['model']} on {result['dataset']} test ({result['n']} images): "
              f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
    return 0


def _check_architecture(model, name, state, args):
    """A checkpoint of another backbone than the one built: say which one it holds."""
    from . import io as dtkd_io, models
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if dtkd_io.fit_report(expected, state).ok:  # (old PyTorch files lack num_batches_tracked)
        return
    held = models.identify(state)
    source = "--model" if args.model else "the config's DISTILLER.STUDENT"
    if held:
        raise ValueError(f"{args.checkpoint} holds a {' or '.join(held)}, not a {name} ({source}); "
                         f"pass --model {held[0]}")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(state)
                      if tuple(getattr(state[k], "shape", ())) != expected[k])
    detail = "; ".join(f"{what} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                       for what, keys in (("missing", missing), ("unexpected", unexpected),
                                          ("reshaped", reshaped)) if keys)
    raise ValueError(f"{args.checkpoint} does not fit {name} ({source}) and matches no dtkd "
                     f"backbone: {detail}; pass --model NAME (python -m dtkd models lists them)")


def _cmd_demo(args):
    try:
        from .demo import main as demo_main
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.demo":
            raise
        raise NotImplementedError("the demo (dtkd.demo) is not part of this build yet") from None
    return demo_main(args.demo_args)


def _cmd_plot(args):
    from . import plots
    plots.pyplot().switch_backend("Agg")  # files only, no window; says how to install matplotlib
    if args.tsne_samples < 2:
        raise ValueError(f"--tsne-samples: expected at least 2 images, got {args.tsne_samples}")
    plots.draw_all(args.runs, args.out, with_tsne=args.tsne, tsne_samples=args.tsne_samples)
    return 0


def _cmd_models(args):
    from . import models
    rows = []
    # By family (the name's leading letters), then naturally: resnet8, resnet14, ..., resnet110,
    # then the x4 variants; vgg8 .. vgg19; wrn_16_1 .. wrn_40_2.
    by_depth = sorted(models.names(), key=lambda n: (re.match(r"[A-Za-z]*", n).group(), n.endswith("x4"), [
        int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]))
    for name in by_depth:
        model = models.create(name, num_classes=args.num_classes, in_channels=args.in_channels)
        params = models.count_parameters(model)
        flops = models.count_flops(model, (1, args.in_channels, 32, 32))
        rows.append((name, params, flops))
    print(f"{'model':<14}{'parameters':>14}{'MFLOPs per image':>20}")
    for name, params, flops in rows:
        print(f"{name:<14}{params:>14,}{flops / 1e6:>20.1f}")
    print(f"({args.num_classes} classes, {args.in_channels}x32x32 input; FLOPs = 2 x "
          "multiply-adds of convolutions and linear layers)")
    return 0


def _cmd_configs(args):
    from .config import CONFIG_DIR, shipped_configs
    for name in shipped_configs():
        print(name)
    print(f"(under {CONFIG_DIR}; pass one to --cfg)", file=sys.stderr)
    from .distill import names as distiller_names  # the registry, dtkd.distill.DISTILLERS
    print(f"(DISTILLER.TYPE: {', '.join(distiller_names())})", file=sys.stderr)
    return 0


# ---- sweep (Ray Tune; dtkd.sweep) -------------------------------------------------------------

def _add_sweep_parser(sub):
    sweep = sub.add_parser("sweep", help="a grid / random search of runs as Ray Tune trials",
                           description="Runs every point of --grid (config keys and values; see "
                           "dtkd.sweep) over --cfg as Ray Tune trials, each reporting its epochs "
                           "to Tune; writes OUT/results.csv and .md (failed trials included). "
                           "Needs Ray: pip install 'dtkd[ray]'.")
    _add_cfg_arguments(sweep)
    sweep.add_argument("--grid", required=True, metavar="PATH", help="the grid YAML")
    sweep.add_argument("--out", default="sweep", metavar="DIR",
                       help="results, run folders and Tune's files (default ./sweep)")
    sweep.add_argument("--address", metavar="ADDR",
                       help="Ray cluster to join (default $RAY_ADDRESS; none: a local Ray)")
    sweep.add_argument("--num-cpus", type=int, default=2, metavar="N",
                       help="CPUs of the local Ray (default 2; ignored with --address)")
    sweep.add_argument("--cpus-per-trial", type=int, default=1, metavar="N",
                       help="CPUs (and threads) per trial (default 1)")
    sweep.add_argument("--max-concurrent", type=int, metavar="N",
                       help="trials at once (default: as many as the CPUs allow)")
    sweep.add_argument("--cache", metavar="DIR",
                       help="shared teacher cache (default $XDG_CACHE_HOME/dtkd/teachers)")
    sweep.add_argument("--teacher-set", action="append", default=[], metavar="KEY=VALUE",
                       help="config override for teachers only (repeatable)")
    sweep.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args):
    from .sweep import run_sweep
    from .testing.results import to_markdown
    for name in ("num_cpus", "cpus_per_trial", "max_concurrent"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
    misplaced = [o for o in args.opts if o.startswith("--")]
    if misplaced:
        raise ValueError(f"options {' '.join(misplaced)} must come before the KEY VALUE "
                         "overrides")
    if len(args.opts) % 2:
        raise ValueError(f"overrides: expected KEY VALUE pairs, got {' '.join(args.opts)}")
    teacher = []
    for text in args.teacher_set:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ValueError(f"--teacher-set: expected KEY=VALUE, got {text!r}")
        teacher += [key.strip(), value.strip()]
    outcome = run_sweep(args.cfg, args.grid, args.out, overrides=args.opts,
                        teacher_overrides=teacher, cache_root=args.cache, address=args.address,
                        num_cpus=args.num_cpus, cpus_per_trial=args.cpus_per_trial,
                        max_concurrent=args.max_concurrent)
    print(to_markdown(outcome.rows, outcome.params), end="")
    for row in outcome.failed:
        params = " ".join(f"{k}={row.get(k)}" for k in outcome.params)
        print(f"FAILED {params}: {row.get('error')}")
    print(f"{len(outcome.rows)} trials, {len(outcome.failed)} failed, "
          f"{outcome.seconds:.1f} s; results: {outcome.paths[0]}  {outcome.paths[1]}")
    return 1 if outcome.failed else 0


def _cmd_train_mpi(args):
    """`mpirun -n K python -m dtkd train --distributed mpi`: any error on any rank aborts the
    whole job (the other ranks would wait in a collective forever)."""
    from .distributed.mpi import MPIGroup, build_mpi_trainer
    group = MPIGroup()
    say = print if group.rank == 0 else (lambda *a, **k: None)
    try:
        cfg = _load_cfg(args)
        trainer = build_mpi_trainer(cfg, out_dir=args.out, progress=args.progress,
                                    sync_bn=args.sync_bn, group=group)
        say(f"training {cfg.DISTILLER.STUDENT} ({cfg.DISTILLER.TYPE}) for {cfg.SOLVER.EPOCHS} "
            f"epochs on {group.size} MPI processes ({cfg.SOLVER.BATCH_SIZE // group.size} "
            f"samples each per step, BatchNorm {'synchronized' if args.sync_bn else 'per process'})"
            f" -> {trainer.out_dir}")
        summary = trainer.train(resume=args.resume)
    except BaseException as e:
        print(f"dtkd train (rank {group.rank}/{group.size}): error: {type(e).__name__}: {e}",
              file=sys.stderr, flush=True)
        if group.size > 1:
            group.abort(2)
        raise
    say(f"best test top-1 {summary['best_acc']:.2f}% (epoch {summary['best_epoch']}), "
        f"last {summary['last_acc']:.2f}%")
    return 0
