/* boundary.h -- the one place where argument checking and error raising at the C/Python
 * boundary live, so every binding is short and all report errors the same way.
 *
 * Include this (not numpy headers directly) from every csrc/python/ source file. */
#ifndef DTKD_BOUNDARY_H
#define DTKD_BOUNDARY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define PY_ARRAY_UNIQUE_SYMBOL dtkd_ARRAY_API
#ifndef DTKD_MODULE_INIT
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

#include "dtkd.h"

/* Release the GIL around a kernel call. */
#define DTKD_BEGIN_NOGIL Py_BEGIN_ALLOW_THREADS
#define DTKD_END_NOGIL Py_END_ALLOW_THREADS

/* Check that `obj` is a NumPy array of dtype `typenum` (NPY_FLOAT32, NPY_INT64, ...),
 * C-contiguous, aligned, with `ndim` dimensions (ndim < 0: any). On failure raise TypeError
 * or ValueError naming `name` (the argument) and return NULL; on success return obj as a
 * borrowed PyArrayObject*. The Python layer converts array-likes before calling _C, so this
 * is a strict check, not a conversion. */
PyArrayObject *dtkd_check_array(PyObject *obj, const char *name, int typenum, int ndim);

/* Raise TypeError naming `name` for a byte-swapped array (a '>f4' array has type NPY_FLOAT32
 * too, and its bytes would be read as native floats); returns -1 if raised, 0 if native.
 * dtkd_check_array calls it; a binding with its own checks must too. */
int dtkd_check_byte_order(PyArrayObject *a, const char *name);

/* Like dtkd_check_array, but also require every dim to equal `shape` (entries < 0: any). */
PyArrayObject *dtkd_check_shape(PyObject *obj, const char *name, int typenum, int ndim,
                                const npy_intp *shape);

/* Require that a writable output array matches (checked via dtkd_check_shape) and is writable. */
PyArrayObject *dtkd_check_output(PyObject *obj, const char *name, int typenum, int ndim,
                                 const npy_intp *shape);

/* Raise ValueError for an array with NaN/Inf; returns -1 if raised, 0 if all finite. */
int dtkd_check_finite(PyArrayObject *arr, const char *name);

/* Turn a kernel status into its one Python exception (ValueError for bad input, MemoryError for
 * DTKD_ERR_NOMEM, RuntimeError for DTKD_ERR_WORKSPACE; table in boundary.c) with `context`
 * (e.g. "dtkd(student, teacher)") in its message. Returns NULL so a binding can
 * `return dtkd_raise_status(st, "...")`. */
PyObject *dtkd_raise_status(int status, const char *context);

/* Raise `type` with a message formatted by C's printf (so %g, %e and %.3f work, which
 * PyErr_Format lacks: before Python 3.12 it copies them unformatted, from 3.12 it raises
 * SystemError) and return NULL. The compiler checks the arguments against the format. Use it,
 * or the two shorthands below, for every message with a number in it. */
PyObject *dtkd_raise(PyObject *type, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The float32 data of a checked array. */
#define F32(a) ((float *)PyArray_DATA(a))

#define DTKD_VALUE_ERR(...) dtkd_raise(PyExc_ValueError, __VA_ARGS__)
#define DTKD_TYPE_ERR(...) dtkd_raise(PyExc_TypeError, __VA_ARGS__)

/* Method tables, one per kernel family; module.c joins them into dtkd._C. Each is terminated
 * by a {NULL} sentinel. */
extern PyMethodDef dtkd_runtime_methods[];
extern PyMethodDef dtkd_losses_methods[];
extern PyMethodDef dtkd_gemm_methods[];
extern PyMethodDef dtkd_nn_methods[];
extern PyMethodDef dtkd_optim_methods[];
extern PyMethodDef dtkd_data_methods[];
extern PyMethodDef dtkd_winograd_methods[];
extern PyMethodDef dtkd_channels_methods[];
extern PyMethodDef dtkd_logit_cache_methods[];

#endif
