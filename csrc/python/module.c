/* dtkd._C: joins the per-family method tables (csrc/python/py_*.c) into one module. */
#define DTKD_MODULE_INIT
#include "boundary.h"

static PyMethodDef *joined_methods;

static struct PyModuleDef dtkd_module = {
    PyModuleDef_HEAD_INIT, "dtkd._C",
    "C kernels of dtkd. Use the Python API (dtkd.losses, dtkd.nn, ...); these functions take "
    "float32/int64 C-contiguous arrays only and check them strictly.",
    -1, NULL,
};

PyMODINIT_FUNC PyInit__C(void)
{
    import_array();
    dtkd_fail_alloc_from_env();
    PyMethodDef *tables[] = {dtkd_runtime_methods, dtkd_losses_methods, dtkd_gemm_methods,
                             dtkd_nn_methods, dtkd_optim_methods, dtkd_data_methods,
                             dtkd_winograd_methods, dtkd_channels_methods,
                             dtkd_logit_cache_methods};
    size_t ntables = sizeof tables / sizeof tables[0], total = 0;
    for (size_t t = 0; t < ntables; t++)
        for (PyMethodDef *m = tables[t]; m->ml_name; m++) total++;
    joined_methods = PyMem_Calloc(total + 1, sizeof(PyMethodDef));
    if (!joined_methods) return PyErr_NoMemory();
    size_t k = 0;
    for (size_t t = 0; t < ntables; t++)
        for (PyMethodDef *m = tables[t]; m->ml_name; m++) joined_methods[k++] = *m;
    dtkd_module.m_methods = joined_methods;
    PyObject *mod = PyModule_Create(&dtkd_module);
#ifndef DTKD_BUILD_ID
#define DTKD_BUILD_ID "unknown" /* built without setup.py */
#endif
    if (mod && (PyModule_AddIntConstant(mod, "MAX_THREADS", DTKD_MAX_THREADS) < 0 ||
                PyModule_AddStringConstant(mod, "BUILD_ID", DTKD_BUILD_ID) < 0)) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
