/* Argument checks and error raising shared by every binding (see boundary.h). */
#include "boundary.h"
#include "kernels/reduce.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

PyObject *dtkd_raise(PyObject *type, const char *fmt, ...)
{
    char message[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    PyErr_SetString(type, message);
    return NULL;
}

static const char *dtype_name(int typenum)
{
    PyArray_Descr *d = PyArray_DescrFromType(typenum);
    const char *s = d ? d->typeobj->tp_name : "?";
    Py_XDECREF(d);
    return s;
}

int dtkd_check_byte_order(PyArrayObject *a, const char *name)
{
    if (PyArray_ISNOTSWAPPED(a)) return 0;
    PyArray_Descr *d = PyArray_DESCR(a);
    dtkd_raise(PyExc_TypeError, "%s: expected native byte order, got a byte-swapped ('%c%c%d') "
               "array; convert it with a.astype(a.dtype.newbyteorder('='))", name,
               d->byteorder, d->kind, (int)PyArray_ITEMSIZE(a));
    return -1;
}

PyArrayObject *dtkd_check_array(PyObject *obj, const char *name, int typenum, int ndim)
{
    if (!PyArray_Check(obj)) {
        dtkd_raise(PyExc_TypeError, "%s: expected a numpy.ndarray, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != typenum) {
        dtkd_raise(PyExc_TypeError, "%s: expected dtype %s, got %s", name, dtype_name(typenum),
                     dtype_name(PyArray_TYPE(a)));
        return NULL;
    }
    if (dtkd_check_byte_order(a, name) < 0) return NULL; /* '>f4' is NPY_FLOAT32 too */
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        dtkd_raise(PyExc_ValueError, "%s: expected a %d-D array, got %d-D", name, ndim,
                     PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        dtkd_raise(PyExc_ValueError, "%s: expected a C-contiguous aligned array "
                     "(use numpy.ascontiguousarray)", name);
        return NULL;
    }
    return a;
}

PyArrayObject *dtkd_check_shape(PyObject *obj, const char *name, int typenum, int ndim,
                                const npy_intp *shape)
{
    PyArrayObject *a = dtkd_check_array(obj, name, typenum, ndim);
    if (!a) return NULL;
    const npy_intp *dims = PyArray_DIMS(a);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] >= 0 && dims[i] != shape[i]) {
            char want[256], got[256];
            int pw = 0, pg = 0;
            for (int j = 0; j < ndim; j++) {
                if (shape[j] >= 0)
                    pw += snprintf(want + pw, sizeof want - pw, "%s%ld", j ? ", " : "", (long)shape[j]);
                else
                    pw += snprintf(want + pw, sizeof want - pw, "%s*", j ? ", " : "");
                pg += snprintf(got + pg, sizeof got - pg, "%s%ld", j ? ", " : "", (long)dims[j]);
                if (pw >= (int)sizeof want || pg >= (int)sizeof got) break;
            }
            dtkd_raise(PyExc_ValueError, "%s: expected shape (%s), got (%s)", name, want, got);
            return NULL;
        }
    }
    return a;
}

PyArrayObject *dtkd_check_output(PyObject *obj, const char *name, int typenum, int ndim,
                                 const npy_intp *shape)
{
    PyArrayObject *a = dtkd_check_shape(obj, name, typenum, ndim, shape);
    if (a && !PyArray_ISWRITEABLE(a)) {
        dtkd_raise(PyExc_ValueError, "%s: output array is read-only", name);
        return NULL;
    }
    return a;
}

int dtkd_check_finite(PyArrayObject *arr, const char *name)
{
    npy_intp n = PyArray_SIZE(arr);
    int bad = 0;
    /* NaN and Inf are the values whose exponent bits are all ones: an integer test, which
     * vectorizes (isfinite in a loop does not) */
    if (PyArray_TYPE(arr) == NPY_FLOAT32) {
        const float *p = (const float *)PyArray_DATA(arr);
        Py_BEGIN_ALLOW_THREADS
        bad = dtkd_any_nonfinite(p, (long)n);
        Py_END_ALLOW_THREADS
    } else if (PyArray_TYPE(arr) == NPY_FLOAT64) {
        const double *p = (const double *)PyArray_DATA(arr);
        const uint64_t exponent = 0x7ff0000000000000u;
        Py_BEGIN_ALLOW_THREADS
        for (npy_intp i = 0; i < n; i++) {
            uint64_t u;
            memcpy(&u, p + i, sizeof u); /* the bits, without breaking type aliasing */
            bad |= (u & exponent) == exponent;
        }
        Py_END_ALLOW_THREADS
    }
    if (bad) {
        dtkd_raise(PyExc_ValueError, "%s: contains NaN or Inf", name);
        return -1;
    }
    return 0;
}

/* The one map from kernel status to exception (documented in docs/RELIABILITY.md):
 *   DTKD_ERR_SHAPE, _NONFINITE, _LABEL, _VALUE, _RANGE -> ValueError (the caller's input)
 *   DTKD_ERR_NOMEM                             -> MemoryError  (an allocation failed)
 *   DTKD_ERR_WORKSPACE, unknown codes          -> RuntimeError (a bug in dtkd, not the input)
 * Bindings that can name the offending argument more precisely raise before calling this. */
PyObject *dtkd_raise_status(int status, const char *context)
{
    switch (status) {
    case DTKD_ERR_SHAPE: return DTKD_VALUE_ERR("%s: inconsistent or empty shape", context);
    case DTKD_ERR_NONFINITE: return DTKD_VALUE_ERR("%s: input contains NaN or Inf", context);
    case DTKD_ERR_LABEL: return DTKD_VALUE_ERR("%s: a label is outside [0, num_classes)", context);
    case DTKD_ERR_VALUE: return DTKD_VALUE_ERR("%s: argument out of range", context);
    case DTKD_ERR_RANGE:
        return DTKD_VALUE_ERR("%s: finite inputs whose result leaves float32's range (|x| <= "
                              "3.4e38)", context);
    case DTKD_ERR_NOMEM:
        return dtkd_raise(PyExc_MemoryError, "%s: out of memory (a workspace allocation failed)",
                          context);
    case DTKD_ERR_WORKSPACE:
        return dtkd_raise(PyExc_RuntimeError, "%s: workspace: smaller than the kernel needs or "
                          "misaligned (a bug in dtkd, please report it)", context);
    default:
        return dtkd_raise(PyExc_RuntimeError, "%s: kernel failed with unknown status %d (a bug "
                          "in dtkd, please report it)", context, status);
    }
}
