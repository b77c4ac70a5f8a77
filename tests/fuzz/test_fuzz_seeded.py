"""The seeded pass of the fuzz harnesses (tests/fuzz/harnesses.py): a fixed number of inputs per
harness from a deterministic generator -- the same harness functions benchmarks/fuzz.py drives
with atheris for minutes. Every input must end in a result or a documented exception; findings
that match a filed, not-yet-fixed bullet of issue 13 are counted (and printed), not failed."""
import collections
import faulthandler
import random
import sys

import pytest

from harnesses import Finding, KnownFinding, harnesses, quiet_numpy

# inputs per harness: the whole pass stays within seconds on a quiet 2-core machine
HANG_SECONDS = 120  # per input; the slowest takes well under a second on a loaded machine
RUNS = {"losses": 400, "nn": 300, "parser_cifar_pickle": 150, "parser_idx": 150,
        "parser_idx_gz": 100, "parser_config": 150, "parser_checkpoint": 150,
        "parser_pth": 150, "parser_safetensors": 150, "parser_logit_cache": 150}


def seeded_inputs(name, count):
    rng = random.Random(f"dtkd-fuzz-{name}")
    for _ in range(count):
        yield rng.randbytes(rng.choice([0, 8, 32, 64, 128, 256]))


@pytest.mark.parametrize("name", sorted(RUNS))
def test_fuzz_harness_seeded_pass(name, tmp_path, capsys):
    harness = harnesses(tmp_path)[name]
    known = collections.Counter()
    with quiet_numpy():
        for i, data in enumerate(seeded_inputs(name, RUNS[name])):
            # a hang is a finding too: dump every thread's stack and end the run
            faulthandler.dump_traceback_later(HANG_SECONDS, exit=True, file=sys.__stderr__)
            try:
                harness(data)
            except KnownFinding as k:
                known[k.key] += 1
            except Finding as f:
                raise AssertionError(f"{name}: input {i} ({data.hex()}): {f}") from f
            finally:
                faulthandler.cancel_dump_traceback_later()
    with capsys.disabled():
        for key, count in known.items():
            print(f"\n  fuzz {name}: {count} inputs hit known finding: {key}", end="")


def test_every_parser_has_a_seeded_pass():
    assert {f"parser_{p}" for p in __import__("harnesses").PARSERS} <= set(RUNS)
