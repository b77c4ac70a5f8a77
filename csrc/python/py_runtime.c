/* Bindings for the runtime: threads and CPU features. */
#include "boundary.h"

static PyObject *py_set_num_threads(PyObject *self, PyObject *args)
{
    int n;
    if (!PyArg_ParseTuple(args, "i:set_num_threads", &n)) return NULL;
    if (n < 1) return DTKD_VALUE_ERR("set_num_threads: n must be >= 1, got %d", n);
    dtkd_set_num_threads(n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLong(dtkd_get_num_threads());
}

static PyObject *py_cpu_features(PyObject *self, PyObject *noargs)
{
    /* "avx512": every feature the AVX-512 path is compiled for (avx512f, avx512dq, avx2, fma) */
    return Py_BuildValue("{s:O,s:O,s:s}", "avx2_fma", dtkd_cpu_has_avx2_fma() ? Py_True : Py_False,
                         "avx512", dtkd_cpu_has_avx512() ? Py_True : Py_False, "isa",
                         dtkd_isa_name(dtkd_isa()));
}

static PyObject *py_set_isa(PyObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s:set_isa", &name)) return NULL;
    enum dtkd_isa isa;
    if (!strcmp(name, "scalar")) isa = DTKD_ISA_SCALAR;
    else if (!strcmp(name, "avx2")) isa = DTKD_ISA_AVX2;
    else if (!strcmp(name, "avx512")) isa = DTKD_ISA_AVX512;
    else return DTKD_VALUE_ERR("set_isa: isa must be 'scalar', 'avx2' or 'avx512', got '%s'", name);
    dtkd_set_isa_limit(isa);
    return PyUnicode_FromString(dtkd_isa_name(dtkd_isa()));
}

/* Test hooks of csrc/runtime/alloc.c (private: leading underscore). */
static PyObject *py_live_blocks(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLong(dtkd_live_blocks());
}

static PyObject *py_fail_alloc_after(PyObject *self, PyObject *args)
{
    long n;
    if (!PyArg_ParseTuple(args, "l:_fail_alloc_after", &n)) return NULL;
    dtkd_fail_alloc_after(n);
    Py_RETURN_NONE;
}

static PyObject *py_fail_alloc_pending(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLong(dtkd_fail_alloc_pending());
}

static PyObject *py_raise_status(PyObject *self, PyObject *args)
{
    int status;
    const char *context;
    if (!PyArg_ParseTuple(args, "is:_raise_status", &status, &context)) return NULL;
    if (status == DTKD_OK) Py_RETURN_NONE;
    return dtkd_raise_status(status, context);
}

PyMethodDef dtkd_runtime_methods[] = {
    {"set_num_threads", py_set_num_threads, METH_VARARGS, "set_num_threads(n): OpenMP threads."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int."},
    {"cpu_features", py_cpu_features, METH_NOARGS, "cpu_features() -> dict of SIMD support."},
    {"set_isa", py_set_isa, METH_VARARGS,
     "set_isa(name): cap the SIMD path ('scalar'|'avx2'|'avx512'); returns the path in use."},
    {"_raise_status", py_raise_status, METH_VARARGS,
     "_raise_status(status, context): raise the exception a kernel status maps to (tests)."},
    {"_live_blocks", py_live_blocks, METH_NOARGS,
     "_live_blocks() -> blocks dtkd's C code has allocated and not freed (leak tests)."},
    {"_fail_alloc_after", py_fail_alloc_after, METH_VARARGS,
     "_fail_alloc_after(n): the n-th C allocation from now fails once (n <= 0 disarms)."},
    {"_fail_alloc_pending", py_fail_alloc_pending, METH_NOARGS,
     "_fail_alloc_pending() -> allocations left before the armed failure (0: none armed)."},
    {NULL, NULL, 0, NULL},
};
