/* Bindings for the runtime: threads and CPU features. */
#include "boundary.h"
#include "kernels/gemm.h"

static PyObject *py_set_num_threads(PyObject *self, PyObject *args)
{
    int n;
    if (!PyArg_ParseTuple(args, "i:set_num_threads", &n)) return NULL;
    if (n < 1 || n > DTKD_MAX_THREADS)
        return DTKD_VALUE_ERR("set_num_threads: n must be in [1, %d], got %d", DTKD_MAX_THREADS, n);
    dtkd_set_num_threads(n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs)
{
    return PyLong_FromLong(dtkd_get_num_threads());
}

static PyObject *cache_dict(const struct dtkd_cache_level *c)
{
    return Py_BuildValue("{s:l,s:i,s:i,s:i}", "size", c->size, "ways", c->ways, "line", c->line,
                         "shared_by", c->shared_by);
}

/* The CPU as detected: identity, caches (and where they were read), SIMD support, path. */
static PyObject *py_cpu_features(PyObject *self, PyObject *noargs)
{
    const struct dtkd_cpu_info *ci = dtkd_cpu_info();
    /* "avx512": every feature the AVX-512 path is compiled for (avx512f, avx512dq, avx2, fma) */
    return Py_BuildValue("{s:O,s:O,s:s,s:s,s:s,s:i,s:i,s:i,s:N,s:N,s:N,s:s}", "avx2_fma",
                         dtkd_cpu_has_avx2_fma() ? Py_True : Py_False, "avx512",
                         dtkd_cpu_has_avx512() ? Py_True : Py_False, "isa",
                         dtkd_isa_name(dtkd_isa()), "vendor", ci->vendor, "brand", ci->brand,
                         "family", ci->family, "model", ci->model, "stepping", ci->stepping,
                         "l1d", cache_dict(&ci->l1d), "l2", cache_dict(&ci->l2), "l3",
                         cache_dict(&ci->l3), "cache_source", ci->cache_source);
}

static int isa_from_name(const char *name, enum dtkd_isa *isa)
{
    if (!strcmp(name, "scalar")) *isa = DTKD_ISA_SCALAR;
    else if (!strcmp(name, "avx2")) *isa = DTKD_ISA_AVX2;
    else if (!strcmp(name, "avx512")) *isa = DTKD_ISA_AVX512;
    else {
        PyErr_Format(PyExc_ValueError, "isa: expected 'scalar', 'avx2' or 'avx512', got '%s'", name);
        return -1;
    }
    int supported = *isa == DTKD_ISA_SCALAR || (*isa == DTKD_ISA_AVX2 && dtkd_cpu_has_avx2_fma()) ||
                    (*isa == DTKD_ISA_AVX512 && dtkd_cpu_has_avx512());
    if (!supported) {
        PyErr_Format(PyExc_ValueError, "isa: this CPU does not support '%s'", name);
        return -1;
    }
    return 0;
}

/* The SGEMM configurations of an instruction set (derived on first use: the FMA probe runs
 * then, ~10 ms) and the machine facts they come from. */
static PyObject *py_sgemm_configs(PyObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s:sgemm_configs", &name)) return NULL;
    enum dtkd_isa isa;
    if (isa_from_name(name, &isa)) return NULL;
    int count;
    const struct dtkd_sgemm_config *cfg;
    const struct dtkd_sgemm_machine *m;
    Py_BEGIN_ALLOW_THREADS
    cfg = dtkd_sgemm_configs(isa, &count);
    m = dtkd_sgemm_machine(isa);
    Py_END_ALLOW_THREADS
    PyObject *kernels = PyList_New(count);
    if (!kernels) return NULL;
    for (int i = 0; i < count; i++) {
        PyObject *d = Py_BuildValue("{s:i,s:i,s:l,s:l,s:l,s:d,s:O}", "mr", cfg[i].mr, "nr",
                                    cfg[i].nr, "kc", cfg[i].kc, "mc", cfg[i].mc, "nc", cfg[i].nc,
                                    "efficiency", cfg[i].efficiency, "tuned",
                                    cfg[i].tuned ? Py_True : Py_False);
        if (!d) {
            Py_DECREF(kernels);
            return NULL;
        }
        PyList_SET_ITEM(kernels, i, d);
    }
    return Py_BuildValue("{s:N,s:d,s:i,s:i}", "kernels", kernels, "fma_in_flight",
                         m->fma_in_flight, "vector_floats", m->vector_floats, "registers",
                         m->registers);
}

/* The blocking model on given machine facts (no CPU access): for tests and what-if studies. */
static PyObject *py_sgemm_blocking_model(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"mr", "nr", "l1", "l2", "l3", "fma_in_flight", "vector_floats",
                             "registers", NULL};
    int mr, nr, vec = 8, regs = 16;
    double in_flight = 8.0;
    struct dtkd_sgemm_machine m = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "ii(lii)(lii)(liii)|dii:sgemm_blocking_model",
                                     kwlist, &mr, &nr, &m.l1d.size, &m.l1d.ways, &m.l1d.line,
                                     &m.l2.size, &m.l2.ways, &m.l2.line, &m.l3.size, &m.l3.ways,
                                     &m.l3.line, &m.l3.shared_by, &in_flight, &vec, &regs))
        return NULL;
    if (mr < 1 || nr < 1 || mr > 64 || nr > 256)
        return DTKD_VALUE_ERR("mr, nr: expected 1..64 and 1..256, got %d, %d", mr, nr);
    if (m.l1d.size < 1024 || m.l1d.ways < 2 || m.l2.size < 4096 || m.l2.ways < 2 ||
        m.l3.size < 0 || m.l3.ways < 0 || vec < 1 || regs < 1 || !(in_flight > 0))
        return DTKD_VALUE_ERR("l1, l2: expected (size >= 1024/4096 bytes, ways >= 2, line); "
                              "l3 sizes >= 0; vector_floats, registers >= 1; fma_in_flight > 0");
    m.fma_in_flight = in_flight;
    m.vector_floats = vec;
    m.registers = regs;
    long kc, mc, nc;
    dtkd_sgemm_blocking_model(&m, mr, nr, &kc, &mc, &nc);
    return Py_BuildValue("{s:l,s:l,s:l,s:d}", "kc", kc, "mc", mc, "nc", nc, "efficiency",
                         dtkd_sgemm_tile_efficiency(&m, mr, nr));
}

static PyObject *py_sgemm_set_blocking(PyObject *self, PyObject *args)
{
    const char *name;
    int index;
    long kc, mc, nc;
    if (!PyArg_ParseTuple(args, "silll:sgemm_set_blocking", &name, &index, &kc, &mc, &nc))
        return NULL;
    enum dtkd_isa isa;
    if (isa_from_name(name, &isa)) return NULL;
    int count;
    dtkd_sgemm_configs(isa, &count);
    if (index < 0 || index >= count)
        return DTKD_VALUE_ERR("index: expected 0 <= index < %d, got %d", count, index);
    if (dtkd_sgemm_set_blocking(isa, index, kc, mc, nc) != DTKD_OK)
        return DTKD_VALUE_ERR("kc, mc, nc: expected 1 <= kc <= 8192, mr <= mc <= 8192, "
                              "nr <= nc <= 65536 (or all <= 0 for the model), got %ld, %ld, %ld",
                              kc, mc, nc);
    Py_RETURN_NONE;
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
static PyObject *py_keep_freed_memory(PyObject *self, PyObject *args)
{
    long trim_bytes;
    if (!PyArg_ParseTuple(args, "l:keep_freed_memory", &trim_bytes)) return NULL;
    if (trim_bytes < 0 || trim_bytes > 0x7fffffffL)
        return DTKD_VALUE_ERR("max_bytes: must be in [0, 2**31 - 1], got %ld", trim_bytes);
    return PyBool_FromLong(dtkd_keep_freed_memory(trim_bytes) == DTKD_OK);
}

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

static PyObject *py_sgemm_force_kernel(PyObject *self, PyObject *args)
{
    const char *name;
    int index;
    if (!PyArg_ParseTuple(args, "si:sgemm_force_kernel", &name, &index)) return NULL;
    enum dtkd_isa isa;
    if (isa_from_name(name, &isa)) return NULL;
    int count;
    dtkd_sgemm_configs(isa, &count);
    if (index < -1 || index >= count)
        return DTKD_VALUE_ERR("index: expected -1 (model's choice) or 0 <= index < %d, got %d",
                              count, index);
    dtkd_sgemm_force_kernel(isa, index);
    Py_RETURN_NONE;
}

static PyObject *py_workspace_trim(PyObject *self, PyObject *noargs)
{
    return PyLong_FromSize_t(dtkd_workspace_trim());
}

static PyObject *py_workspace_cached_bytes(PyObject *self, PyObject *noargs)
{
    return PyLong_FromSize_t(dtkd_workspace_cached_bytes());
}

PyMethodDef dtkd_runtime_methods[] = {
    {"workspace_trim", py_workspace_trim, METH_NOARGS,
     "workspace_trim() -> int: free the kernels' cached workspace blocks (bytes freed). They are "
     "kept across calls so a training step reuses them instead of allocating per call."},
    {"workspace_cached_bytes", py_workspace_cached_bytes, METH_NOARGS,
     "workspace_cached_bytes() -> int: bytes held by the workspace arena."},
    {"sgemm_force_kernel", py_sgemm_force_kernel, METH_VARARGS,
     "sgemm_force_kernel(isa, index): every SGEMM on `isa` uses micro-kernel `index` of "
     "sgemm_configs(isa) (-1: the model's choice per problem). For autotune and tests."},
    {"set_num_threads", py_set_num_threads, METH_VARARGS, "set_num_threads(n): OpenMP threads."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int."},
    {"cpu_features", py_cpu_features, METH_NOARGS,
     "cpu_features() -> dict: SIMD support, the path in use, vendor/brand/family/model, the "
     "data caches (size, ways, line, shared_by) and where they were read."},
    {"sgemm_configs", py_sgemm_configs, METH_VARARGS,
     "sgemm_configs(isa) -> dict: the micro-kernels (mr, nr) and blocking (kc, mc, nc) derived "
     "for this CPU, and the machine facts used (fma_in_flight, vector_floats, registers)."},
    {"sgemm_blocking_model", (PyCFunction)(void (*)(void))py_sgemm_blocking_model,
     METH_VARARGS | METH_KEYWORDS,
     "sgemm_blocking_model(mr, nr, l1, l2, l3, fma_in_flight=8, vector_floats=8, registers=16)"
     " -> dict(kc, mc, nc, efficiency); l1, l2 = (size, ways, line), l3 = (size, ways, line, "
     "shared_by). The analytical model alone, on given facts."},
    {"sgemm_set_blocking", py_sgemm_set_blocking, METH_VARARGS,
     "sgemm_set_blocking(isa, index, kc, mc, nc): override configuration `index` of `isa` "
     "(autotune); kc = mc = nc = 0 restores the model's values."},
    {"set_isa", py_set_isa, METH_VARARGS,
     "set_isa(name): cap the SIMD path ('scalar'|'avx2'|'avx512'); returns the path in use."},
    {"_raise_status", py_raise_status, METH_VARARGS,
     "_raise_status(status, context): raise the exception a kernel status maps to (tests)."},
    {"keep_freed_memory", py_keep_freed_memory, METH_VARARGS,
     "keep_freed_memory(max_bytes) -> bool: glibc mallopt so freed heap memory (up to max_bytes "
     "at the top of the heap) stays in the process and blocks up to 32 MB come from the heap; "
     "False where the C library is not glibc. Process-wide (dtkd.keep_freed_memory)."},
    {"_live_blocks", py_live_blocks, METH_NOARGS,
     "_live_blocks() -> blocks dtkd's C code has allocated and not freed (leak tests)."},
    {"_fail_alloc_after", py_fail_alloc_after, METH_VARARGS,
     "_fail_alloc_after(n): the n-th C allocation from now fails once (n <= 0 disarms)."},
    {"_fail_alloc_pending", py_fail_alloc_pending, METH_NOARGS,
     "_fail_alloc_pending() -> allocations left before the armed failure (0: none armed)."},
    {NULL, NULL, 0, NULL},
};
