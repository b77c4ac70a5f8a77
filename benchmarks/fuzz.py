"""Run every fuzz harness of tests/fuzz/harnesses.py under atheris (libFuzzer) for a fixed time.

    python benchmarks/fuzz.py                      # every harness, 120 s each
    python benchmarks/fuzz.py --seconds 600 losses nn
    python benchmarks/fuzz.py --out benchmarks/results/fuzz.md

Each harness runs in its own process (``--child NAME``): atheris instruments dtkd's Python code
for coverage feedback (the C extension is not instrumented: its branches steer nothing, the
harnesses' structure gets inputs past the argument checks), starts from a corpus of the seeded
pass's inputs, and stops at the first finding, writing the input as ``crash-*`` into the work
directory. Limits: ``-timeout`` per input (a hang is a finding), ``-rss_limit_mb`` (a memory bomb
is a finding). Known findings (harnesses.KNOWN) are counted, not stopped at. The table of
executions, rates and findings goes to stdout and, with --out, to a Markdown file.

Needs ``pip install atheris`` (a wheel with libFuzzer inside; no clang needed).
"""
import argparse
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent.parent / "tests" / "fuzz"
TESTS_DIR = FUZZ_DIR.parent


def child(name, workdir, argv):
    """Fuzz one harness in this process (called with --child)."""
    import atheris

    sys.path[:0] = [str(FUZZ_DIR), str(TESTS_DIR)]
    with atheris.instrument_imports(include=["dtkd", "harnesses"]):
        import numpy as np
        import harnesses
    harness = harnesses.harnesses(workdir)[name]
    seen = set()

    def one_input(data):
        try:
            with np.errstate(all="ignore"):
                harness(data)
        except harnesses.KnownFinding as k:
            if k.key not in seen:  # once per key: the driver counts kinds, not inputs
                seen.add(k.key)
                sys.stderr.write(f"KNOWN-FINDING: {k.key}\n")
                sys.stderr.flush()

    atheris.Setup([sys.argv[0]] + argv, one_input)
    atheris.Fuzz()


def seed_corpus(name, directory, count=64):
    """The first inputs of the seeded pass, so libFuzzer starts from inputs that reach deep."""
    rng = random.Random(f"dtkd-fuzz-{name}")
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (directory / f"seed{i:03d}").write_bytes(rng.randbytes(rng.choice([8, 32, 64, 128, 256])))


def run(name, seconds, root):
    work = root / name
    corpus = work / "corpus"
    seed_corpus(name, corpus)
    cmd = [sys.executable, __file__, "--child", name, str(work), str(corpus),
           f"-max_total_time={seconds}", "-timeout=20", "-rss_limit_mb=3072",
           "-print_final_stats=1", f"-artifact_prefix={work}/", "-seed=1"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                          timeout=seconds + 300)
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    (work / "fuzz.log").write_text(log)
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    if not execs:
        execs = re.findall(r"#(\d+)\s", log)
    known = sorted(set(re.findall(r"KNOWN-FINDING: (.*)", log)))
    artifacts = sorted(p.name for p in work.iterdir() if re.match(r"(crash|timeout|oom|leak)-", p.name))
    finding = ""
    if proc.returncode != 0 or artifacts:
        lines = [l for l in log.splitlines() if "Finding" in l or "Error" in l or "==ERROR" in l
                 or "deadly signal" in l or "Timeout" in l or "out-of-memory" in l]
        finding = (lines[-1].strip() if lines else f"exit {proc.returncode}")[:300]
    return {"name": name, "execs": int(execs[-1]) if execs else 0, "seconds": wall,
            "finding": finding, "artifacts": artifacts, "known": known, "work": work}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3], sys.argv[4:])
    sys.path[:0] = [str(FUZZ_DIR), str(TESTS_DIR)]
    import harnesses
    names = list(harnesses.harnesses(tempfile.gettempdir()))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("harness", nargs="*", choices=names + [[]], help="default: all")
    parser.add_argument("--seconds", type=int, default=120, help="per harness")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="corpora, logs and crash inputs (default: a temporary directory)")
    parser.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="dtkd-fuzz-"))
    rows = []
    for name in args.harness or names:
        print(f"fuzzing {name} for {args.seconds} s ...", flush=True)
        rows.append(run(name, args.seconds, root))
    lines = [f"Fuzzing with atheris, {args.seconds} s per harness "
             f"({platform.processor() or platform.machine()}, Python {platform.python_version()}, "
             f"{time.strftime('%Y-%m-%d')}); work directory {root}", "",
             "| harness | executions | exec/s | new finding | known findings hit |",
             "|---|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['execs']:,} | {r['execs'] / max(r['seconds'], 1e-9):,.0f} "
                     f"| {(r['finding'] + ' ' + ', '.join(r['artifacts'])).strip() or 'none'} "
                     f"| {'; '.join(r['known']) or 'none'} |")
    # The inputs themselves, so that a finding on a CI machine (whose work directory is gone)
    # can be replayed: python -c "open('x','wb').write(bytes.fromhex('...'))".
    for r in rows:
        for name in r["artifacts"]:
            data = (r["work"] / name).read_bytes()
            lines.append(f"\n{r['name']} {name} ({len(data)} bytes): {data[:4096].hex()}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if any(r["finding"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
