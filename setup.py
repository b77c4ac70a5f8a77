"""Build the C extension dtkd._C from every .c file under csrc/.

The default build targets any x86-64: the AVX2/AVX-512 code paths are compiled with
per-function target attributes (``#pragma GCC target``) and chosen at run time from the
CPU's features, so no ``-march=native`` is needed. Set DTKD_NATIVE=1 to opt in to it.
"""
import glob
import os
import sys

import numpy
from setuptools import Extension, setup

sources = sorted(glob.glob("csrc/**/*.c", recursive=True))

extra_compile_args = ["-std=c11", "-O3", "-fopenmp", "-fno-math-errno", "-Wall", "-Wextra",
                      "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
extra_link_args = ["-fopenmp"]
if os.environ.get("DTKD_NATIVE") == "1":
    extra_compile_args.append("-march=native")
if os.environ.get("DTKD_DEBUG") == "1":
    extra_compile_args += ["-O0", "-g", "-fsanitize=address,undefined"]
    extra_link_args += ["-fsanitize=address,undefined"]

ext = Extension(
    "dtkd._C",
    sources=sources,
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION")],
    extra_compile_args=extra_compile_args,
    extra_link_args=extra_link_args,
)

setup(ext_modules=[ext])
