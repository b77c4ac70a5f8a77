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

PyMethodDef dtkd_runtime_methods[] = {
    {"set_num_threads", py_set_num_threads, METH_VARARGS, "set_num_threads(n): OpenMP threads."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int."},
    {"cpu_features", py_cpu_features, METH_NOARGS, "cpu_features() -> dict of SIMD support."},
    {"set_isa", py_set_isa, METH_VARARGS,
     "set_isa(name): cap the SIMD path ('scalar'|'avx2'|'avx512'); returns the path in use."},
    {NULL, NULL, 0, NULL},
};
