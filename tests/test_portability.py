"""What keeps dtkd building and behaving on Pythons and CPUs other than the one a change was
made on: error formatting that every supported Python understands, C API use that the oldest
supported Python has, SIMD paths taken only where the CPU has every feature they are compiled
for, and sources that compile for aarch64 (where only the portable path exists)."""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import dtkd
from dtkd import _C

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"

needs_sources = pytest.mark.skipif(not CSRC.is_dir(), reason="needs the source tree (csrc/)")


def c_sources(*dirs):
    return sorted(p for d in dirs for p in (CSRC / d).rglob("*.[ch]"))


# ---- error messages -------------------------------------------------------------------------

# The conversions PyUnicode_FromFormat (behind PyErr_Format) documents for Python 3.9-3.13:
# no %g/%f/%e (before 3.12 they are copied unformatted, from 3.12 they raise SystemError).
_PY_FORMAT_OK = re.compile(r"%(%|[-0-9.]*(c|(l|ll|z)?[diu]|x|s|p|A|U|V|S|R))")
_PY_FORMAT_ANY = re.compile(r"%[-0-9.]*(ll|l|z)?[a-zA-Z%]")
_PY_FORMATTERS = ("PyErr_Format", "PyUnicode_FromFormat", "PyErr_WarnFormat", "PyBytes_FromFormat")


def _format_strings(text, function):
    """The string literals (adjacent ones joined) that open each call of `function`."""
    for m in re.finditer(re.escape(function) + r"\s*\(", text):
        rest = text[m.end():]
        literals = re.match(r'\s*(?:[A-Za-z_][A-Za-z_0-9]*\s*,\s*)?((?:"(?:[^"\\]|\\.)*"\s*)+)', rest)
        if literals:
            yield "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', literals.group(1)))


def _format_codes(fmt):
    return [m.group(0) for m in _PY_FORMAT_ANY.finditer(fmt)]


@needs_sources
def test_python_format_calls_use_only_codes_every_supported_python_knows():
    bad = []
    for path in c_sources("python"):
        text = path.read_text()
        for function in _PY_FORMATTERS:
            for fmt in _format_strings(text, function):
                for code in _format_codes(fmt):
                    if not _PY_FORMAT_OK.fullmatch(code):
                        bad.append(f"{path.relative_to(ROOT)}: {function}({fmt!r}): {code}")
    assert not bad, "unsupported PyErr_Format codes (use dtkd_raise / DTKD_VALUE_ERR):\n" + "\n".join(bad)


def test_format_checker_catches_a_float_code():
    # the check above must be able to fail
    text = 'PyErr_Format(PyExc_ValueError, "eps: got %g at %ld", eps, i);'
    codes = [c for fmt in _format_strings(text, "PyErr_Format") for c in _format_codes(fmt)]
    assert codes == ["%g", "%ld"]
    assert not _PY_FORMAT_OK.fullmatch("%g") and _PY_FORMAT_OK.fullmatch("%ld")


def test_error_messages_format_their_numbers():
    # formatted by C printf through dtkd_raise: ValueError on every Python, the number printed
    x = np.ones((2, 3, 4, 4), np.float32)
    w = np.ones(3, np.float32)
    stats = (np.zeros(3, np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match=r"eps: must be finite and > 0, got -0\.5$"):
        _C.batchnorm2d_forward_train(x, w, w, *stats, 0.1, -0.5)
    with pytest.raises(ValueError, match=r"momentum: must be in \[0, 1\], got 1\.5$"):
        _C.batchnorm2d_forward_train(x, w, w, *stats, 1.5, 1e-5)
    with pytest.raises(ValueError, match=r"std: entry 0 is -1, must be > 0"):
        _C.augment_batch(np.zeros((1, 4, 4, 1), np.uint8), np.zeros(1, np.int64),
                         np.zeros((1, 2), np.int64), np.zeros(1, np.uint8), np.zeros(1, np.float32),
                         np.full(1, -1.0, np.float32), 4, 4, "NHWC")


# ---- C API of the oldest supported Python -----------------------------------------------------

# C API that newer Pythons added, with the version: requires-python >= 3.9 rules them out.
_NEWER_C_API = {"Py_NewRef": "3.10", "Py_XNewRef": "3.10", "Py_IsNone": "3.10", "Py_IsTrue": "3.10",
                "Py_IsFalse": "3.10", "Py_Is": "3.10", "PyModule_AddObjectRef": "3.10",
                "PyModule_Add": "3.13", "PyType_GetModuleByDef": "3.11",
                "PyErr_GetRaisedException": "3.12", "PyLong_AsInt": "3.13"}


@needs_sources
def test_c_api_exists_on_the_oldest_supported_python():
    found = [f"{p.relative_to(ROOT)}: {name} (Python {v})" for p in c_sources("python")
             for name, v in _NEWER_C_API.items()
             if re.search(r"\b" + name + r"\s*\(", p.read_text())]
    assert not found, "C API newer than requires-python allows:\n" + "\n".join(found)


@needs_sources
def test_metadata_names_the_supported_pythons():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.9"' in text
    for minor in range(9, 14):
        assert f'"Programming Language :: Python :: 3.{minor}"' in text


# ---- SIMD dispatch -----------------------------------------------------------------------------

@needs_sources
def test_dispatch_checks_every_feature_the_simd_paths_are_compiled_for():
    sources = c_sources("kernels", "runtime", "python") + [CSRC / "dtkd.h"]
    targets = set()
    for p in sources:
        for features in re.findall(r'target\("([^"]+)"\)', p.read_text()):
            targets.update(features.split(","))
    checked = set(re.findall(r'__builtin_cpu_supports\("([^"]+)"\)',
                             (CSRC / "runtime" / "cpu.c").read_text()))
    assert targets, "no target attributes found"
    assert targets <= checked, f"compiled for but never checked: {sorted(targets - checked)}"


def test_cpu_features_report_the_path_in_use():
    features = dtkd.cpu_features()
    assert set(features) >= {"avx2_fma", "avx512", "isa"}
    expected = "avx512" if features["avx512"] else "avx2" if features["avx2_fma"] else "scalar"
    if os.environ.get("DTKD_ISA") in ("scalar", "avx2"):
        expected = min(expected, os.environ["DTKD_ISA"], key=["scalar", "avx2", "avx512"].index)
    assert features["isa"] == expected


def test_set_isa_caps_and_restores_while_other_threads_run_kernels():
    import threading
    rng = np.random.default_rng(0)
    s = rng.normal(size=(64, 100)).astype(np.float32)
    t = rng.normal(size=(64, 100)).astype(np.float32)
    reference = dtkd.losses.dtkd(s, t).loss
    before = dtkd.cpu_features()["isa"]
    stop = threading.Event()
    results = []

    def worker():
        while not stop.is_set():
            results.append(dtkd.losses.dtkd(s, t).loss)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for th in threads:
        th.start()
    try:
        for _ in range(200):
            for isa in ("scalar", "avx2", "avx512"):
                _C.set_isa(isa)
    finally:
        stop.set()
        for th in threads:
            th.join()
        _C.set_isa(before)
    assert dtkd.cpu_features()["isa"] == before
    assert results and np.allclose(results, reference, rtol=1e-5)


# ---- aarch64 --------------------------------------------------------------------------------

CROSS_CC = shutil.which("aarch64-linux-gnu-gcc")


@needs_sources
@pytest.mark.skipif(CROSS_CC is None, reason="needs Debian's gcc-aarch64-linux-gnu "
                    "(apt-get install gcc-aarch64-linux-gnu; CI installs it)")
def test_every_c_file_compiles_for_aarch64(tmp_path):
    # Python's and NumPy's headers of this machine stand in for aarch64's (same LP64 sizes).
    includes = [f"-I{CSRC}", f"-I{sysconfig.get_paths()['include']}", f"-I{np.get_include()}"]
    flags = ["-std=c11", "-O1", "-fopenmp", "-Wall", "-Werror=implicit-function-declaration",
             "-DNPY_NO_DEPRECATED_API=NPY_1_20_API_VERSION"]
    failures = []
    for source in sorted(CSRC.rglob("*.c")):
        r = subprocess.run([CROSS_CC, *flags, *includes, "-c", str(source), "-o",
                            str(tmp_path / (source.stem + ".o"))], capture_output=True, text=True)
        if r.returncode:
            failures.append(f"{source.relative_to(ROOT)}:\n{r.stderr[-2000:]}")
    assert not failures, "\n".join(failures)
