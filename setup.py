"""Build the C extension dtkd._C from every .c file under csrc/.

The default build targets any x86-64: the AVX2/AVX-512 code paths are compiled with
per-function target attributes (``#pragma GCC target``) and chosen at run time from the
CPU's features, so no ``-march=native`` is needed. Set DTKD_NATIVE=1 to opt in to it.

DTKD_SANITIZE=address,undefined (any list of gcc -fsanitize= names) builds an instrumented
debug copy (-O1 -g, frame pointers, UBSan aborting on the first error) that also honours
DTKD_FAIL_ALLOC=n (the n-th C allocation fails). Python itself is not instrumented, so run it
with the runtime preloaded: benchmarks/sanitize.sh does all of this. DTKD_DEBUG=1 is the old
name of DTKD_SANITIZE=address,undefined.
"""
import glob
import hashlib
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
sanitize = os.environ.get("DTKD_SANITIZE", "")
if not sanitize and os.environ.get("DTKD_DEBUG") == "1":
    sanitize = "address,undefined"
define_macros = [("NPY_NO_DEPRECATED_API", "NPY_1_20_API_VERSION")]
if sanitize:
    names = [n.strip() for n in sanitize.split(",") if n.strip()]
    flags = [f"-fsanitize={','.join(names)}", "-fno-omit-frame-pointer", "-g", "-O1"]
    if "undefined" in names:
        flags.append("-fno-sanitize-recover=undefined")  # an error stops the run, not a log line
    extra_compile_args += flags
    extra_link_args += [f"-fsanitize={','.join(names)}"]
    define_macros.append(("DTKD_FAULT_ENV", "1"))

# What fixes the extension's arithmetic (its sources and compile flags), so caches of computed
# values (the teacher-logit cache) can tell two builds of one version apart.
build_hash = hashlib.blake2b(digest_size=8)
for path in sorted(glob.glob("csrc/**/*.[ch]", recursive=True)):
    build_hash.update(path.encode())
    with open(path, "rb") as f:
        build_hash.update(f.read())
build_hash.update(repr((extra_compile_args, define_macros)).encode())
define_macros.append(("DTKD_BUILD_ID", '"%s"' % build_hash.hexdigest()))

ext = Extension(
    "dtkd._C",
    sources=sources,
    include_dirs=["csrc", numpy.get_include()],
    define_macros=define_macros,
    extra_compile_args=extra_compile_args,
    extra_link_args=extra_link_args,
)

setup(ext_modules=[ext])
