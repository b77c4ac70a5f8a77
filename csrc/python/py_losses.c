/* Bindings for the losses kernels (csrc/kernels/losses.c).
 *
 * Each binding checks its arrays once (float32 / int64, C-contiguous, shapes), allocates the
 * outputs, runs forward then backward with the GIL released (the KL, DKD, cross-entropy and
 * objective bindings: one fused *_forward_backward kernel, METH_FASTCALL arguments, since at
 * (64, 100) a call's fixed cost is a visible share of its time), and returns plain tuples; the
 * Python layer (dtkd/losses.py) turns them into result objects. Non-finite logits and bad
 * labels are found by the kernels; the error path then names the argument. */
#include "boundary.h"

#include "kernels/losses.h"

#include <float.h>
#include <math.h>

/* (N, C) float32 logits with N >= 1 and C >= min_classes. */
static PyArrayObject *check_logits(PyObject *obj, const char *name, long min_classes)
{
    PyArrayObject *a = dtkd_check_array(obj, name, NPY_FLOAT32, 2);
    if (!a) return NULL;
    npy_intp n = PyArray_DIM(a, 0), c = PyArray_DIM(a, 1);
    if (n < 1) {
        dtkd_raise(PyExc_ValueError, "%s: expected at least one sample (N >= 1), got shape (%ld, %ld)",
                     name, (long)n, (long)c);
        return NULL;
    }
    if (c < min_classes) {
        dtkd_raise(PyExc_ValueError, "%s: expected at least %ld classes (C >= %ld), got shape (%ld, %ld)",
                     name, min_classes, min_classes, (long)n, (long)c);
        return NULL;
    }
    return a;
}

/* An array with the same (N, C) as `like`. */
static PyArrayObject *check_like(PyObject *obj, const char *name, PyArrayObject *like, const char *like_name)
{
    PyArrayObject *a = dtkd_check_array(obj, name, NPY_FLOAT32, 2);
    if (!a) return NULL;
    if (PyArray_DIM(a, 0) != PyArray_DIM(like, 0) || PyArray_DIM(a, 1) != PyArray_DIM(like, 1)) {
        dtkd_raise(PyExc_ValueError, "%s: expected the shape of %s (%ld, %ld), got (%ld, %ld)",
                     name, like_name, (long)PyArray_DIM(like, 0), (long)PyArray_DIM(like, 1),
                     (long)PyArray_DIM(a, 0), (long)PyArray_DIM(a, 1));
        return NULL;
    }
    return a;
}

static PyArrayObject *check_labels(PyObject *obj, npy_intp n)
{
    npy_intp shape[1] = {n};
    return dtkd_check_shape(obj, "labels", NPY_INT64, 1, shape);
}

static PyObject *new_array(int ndim, npy_intp n, npy_intp c)
{
    npy_intp dims[2] = {n, c};
    return PyArray_EMPTY(ndim, dims, NPY_FLOAT32, 0);
}

/* Turn a kernel status into an exception naming the offending argument. */
static PyObject *raise_for(int status, const char *fn, PyArrayObject *a, const char *a_name,
                           PyArrayObject *b, const char *b_name, PyArrayObject *labels, long C)
{
    if (status == DTKD_ERR_NONFINITE) {
        if (a && dtkd_check_finite(a, a_name) < 0) return NULL;
        if (b && dtkd_check_finite(b, b_name) < 0) return NULL;
    }
    if (status == DTKD_ERR_LABEL && labels) {
        const int64_t *y = (const int64_t *)PyArray_DATA(labels);
        for (npy_intp i = 0; i < PyArray_DIM(labels, 0); i++)
            if (y[i] < 0 || y[i] >= C)
                return DTKD_VALUE_ERR("labels: expected values in [0, %ld), found %lld at index %ld",
                                      C, (long long)y[i], (long)i);
    }
    if (status == DTKD_ERR_VALUE)
        return DTKD_VALUE_ERR("%s: temperature must be finite and > 0, within float32's range for a divisor "
                              "[1.2e-38, 3.4e38]", fn);
    if (status == DTKD_ERR_RANGE)
        return DTKD_VALUE_ERR("%s: finite inputs whose loss or gradient (or logits / temperature) "
                              "leaves float32's range (|x| <= 3.4e38): scale the logits, the "
                              "temperature or the loss weights", fn);
    return dtkd_raise_status(status, fn);
}

/* ---- METH_FASTCALL argument parsing (no argument tuple, no format string: at (64, 100) a
 * call's fixed cost is a visible part of its time) ---- */

static int check_nargs(const char *fn, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs == expected) return 0;
    dtkd_raise(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)", fn, expected, nargs);
    return -1;
}

/* A float argument as the "f" format converts it (anything with __float__ or __index__), but
 * a finite value beyond float32's range is a ValueError rather than a silent inf. */
static int arg_float(PyObject *obj, float *out)
{
    double v = PyFloat_AsDouble(obj);
    if (v == -1.0 && PyErr_Occurred()) return -1;
    if (isfinite(v) && !(fabs(v) <= FLT_MAX)) {
        DTKD_VALUE_ERR("a float argument, %g, is beyond float32's range (|x| <= 3.4e38)", v);
        return -1;
    }
    *out = (float)v;
    return 0;
}

/* An int argument as the "i" format converts it. */
static int arg_int(PyObject *obj, int *out)
{
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < INT_MIN || v > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "integer argument out of range");
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* A truth value as the "p" format converts it. */
static int arg_bool(PyObject *obj, int *out)
{
    int v = PyObject_IsTrue(obj);
    if (v < 0) return -1;
    *out = v;
    return 0;
}

static double sum_f32(const float *x, npy_intp n)
{
    double s = 0.0;
    for (npy_intp i = 0; i < n; i++) s += x[i];
    return s;
}

/* same_float32_matrices(*arrays) -> True if every argument is an exact numpy.ndarray of native
 * float32, 2-D, C-contiguous and aligned, all of one shape: what the bindings take as is. The
 * Python layer asks this before converting (one call instead of ~10 attribute reads). */
/* The (student, teacher, labels) arguments of every loss that takes labels: student (N, C)
 * logits, teacher of the same shape, labels (N,) in [0, C). Raises naming the argument. */
static int check_student_teacher_labels(PyObject *const *args, PyArrayObject **s,
                                        PyArrayObject **t, PyArrayObject **y)
{
    if (!(*s = check_logits(args[0], "student", 2))) return -1;
    if (!(*t = check_like(args[1], "teacher", *s, "student"))) return -1;
    if (!(*y = check_labels(args[2], PyArray_DIM(*s, 0)))) return -1;
    return 0;
}

/* What both objectives return besides sums: t_student, t_teacher (N,), grad (N, C), and their
 * float scratch; all or nothing (MemoryError raised). */
static int new_objective_outputs(npy_intp n, npy_intp c, npy_intp scratch_floats, PyObject **ts,
                                 PyObject **tt, PyObject **grad, float **scratch)
{
    *ts = new_array(1, n, 0);
    *tt = new_array(1, n, 0);
    *grad = new_array(2, n, c);
    *scratch = dtkd_malloc_array(scratch_floats, sizeof(float));
    if (*ts && *tt && *grad && *scratch) return 0;
    Py_XDECREF(*ts);
    Py_XDECREF(*tt);
    Py_XDECREF(*grad);
    dtkd_free(*scratch);
    if (!PyErr_Occurred()) dtkd_raise_status(DTKD_ERR_NOMEM, "scratch");
    return -1;
}

static void drop_objective_outputs(PyObject *ts, PyObject *tt, PyObject *grad)
{
    Py_DECREF(ts);
    Py_DECREF(tt);
    Py_DECREF(grad);
}

static PyObject *py_same_float32_matrices(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    for (Py_ssize_t k = 0; k < nargs; k++) {
        if (!PyArray_CheckExact(args[k])) Py_RETURN_FALSE;
        PyArrayObject *a = (PyArrayObject *)args[k], *first = (PyArrayObject *)args[0];
        if (PyArray_TYPE(a) != NPY_FLOAT32 || !PyArray_ISNOTSWAPPED(a) || PyArray_NDIM(a) != 2 ||
            !PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) ||
            PyArray_DIM(a, 0) != PyArray_DIM(first, 0) || PyArray_DIM(a, 1) != PyArray_DIM(first, 1))
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

/* ---- softmax family ---- */

typedef int (*rowwise_kernel)(float *, const float *, float, long, long);

static PyObject *rowwise_forward(PyObject *args, const char *fmt, const char *fn,
                                 rowwise_kernel kernel, int per_row)
{
    PyObject *xo;
    float temperature;
    if (!PyArg_ParseTuple(args, fmt, &xo, &temperature)) return NULL;
    PyArrayObject *x = check_logits(xo, "x", 1);
    if (!x) return NULL;
    npy_intp n = PyArray_DIM(x, 0), c = PyArray_DIM(x, 1);
    PyObject *out = per_row ? new_array(1, n, 0) : new_array(2, n, c);
    if (!out) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = kernel((float *)PyArray_DATA((PyArrayObject *)out), (const float *)PyArray_DATA(x),
                temperature, n, c);
    DTKD_END_NOGIL
    if (st != DTKD_OK) {
        Py_DECREF(out);
        return raise_for(st, fn, x, "x", NULL, NULL, NULL, c);
    }
    return out;
}

static PyObject *py_log_softmax_forward(PyObject *self, PyObject *args)
{
    return rowwise_forward(args, "Of:log_softmax_forward", "log_softmax(x)",
                           dtkd_log_softmax_forward, 0);
}

static PyObject *py_softmax_forward(PyObject *self, PyObject *args)
{
    return rowwise_forward(args, "Of:softmax_forward", "softmax(x)", dtkd_softmax_forward, 0);
}

static PyObject *py_logsumexp_forward(PyObject *self, PyObject *args)
{
    return rowwise_forward(args, "Of:logsumexp_forward", "logsumexp(x)", dtkd_logsumexp_forward, 1);
}

typedef int (*rowwise_backward_kernel)(float *, const float *, const float *, float, long, long);

static PyObject *rowwise_backward(PyObject *args, const char *fmt, const char *fn,
                                  rowwise_backward_kernel kernel)
{
    PyObject *douto, *outo;
    float temperature;
    if (!PyArg_ParseTuple(args, fmt, &douto, &outo, &temperature)) return NULL;
    PyArrayObject *out = check_logits(outo, "output", 1);
    if (!out) return NULL;
    PyArrayObject *dout = check_like(douto, "grad_output", out, "output");
    if (!dout) return NULL;
    if (dtkd_check_finite(dout, "grad_output") < 0 || dtkd_check_finite(out, "output") < 0)
        return NULL;
    npy_intp n = PyArray_DIM(out, 0), c = PyArray_DIM(out, 1);
    PyObject *dx = new_array(2, n, c);
    if (!dx) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = kernel((float *)PyArray_DATA((PyArrayObject *)dx), (const float *)PyArray_DATA(dout),
                (const float *)PyArray_DATA(out), temperature, n, c);
    DTKD_END_NOGIL
    if (st != DTKD_OK) {
        Py_DECREF(dx);
        return raise_for(st, fn, NULL, NULL, NULL, NULL, NULL, c);
    }
    return dx;
}

static PyObject *py_log_softmax_backward(PyObject *self, PyObject *args)
{
    return rowwise_backward(args, "OOf:log_softmax_backward", "log_softmax_backward",
                            dtkd_log_softmax_backward);
}

static PyObject *py_softmax_backward(PyObject *self, PyObject *args)
{
    return rowwise_backward(args, "OOf:softmax_backward", "softmax_backward", dtkd_softmax_backward);
}

static PyObject *py_logsumexp_backward(PyObject *self, PyObject *args)
{
    PyObject *douto, *xo, *outo;
    float temperature;
    if (!PyArg_ParseTuple(args, "OOOf:logsumexp_backward", &douto, &xo, &outo, &temperature))
        return NULL;
    PyArrayObject *x = check_logits(xo, "x", 1);
    if (!x) return NULL;
    npy_intp n = PyArray_DIM(x, 0), c = PyArray_DIM(x, 1), shape[1] = {n};
    PyArrayObject *dout = dtkd_check_shape(douto, "grad_output", NPY_FLOAT32, 1, shape);
    if (!dout) return NULL;
    PyArrayObject *out = dtkd_check_shape(outo, "output", NPY_FLOAT32, 1, shape);
    if (!out) return NULL;
    if (dtkd_check_finite(dout, "grad_output") < 0 || dtkd_check_finite(x, "x") < 0 ||
        dtkd_check_finite(out, "output") < 0)
        return NULL;
    PyObject *dx = new_array(2, n, c);
    if (!dx) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_logsumexp_backward((float *)PyArray_DATA((PyArrayObject *)dx),
                                 (const float *)PyArray_DATA(dout), (const float *)PyArray_DATA(x),
                                 (const float *)PyArray_DATA(out), temperature, n, c);
    DTKD_END_NOGIL
    if (st != DTKD_OK) {
        Py_DECREF(dx);
        return raise_for(st, "logsumexp_backward", NULL, NULL, NULL, NULL, NULL, c);
    }
    return dx;
}

/* ---- logit standardization ---- */

/* logit_standardize(x) -> z (N,C) float32. */
static PyObject *py_logit_standardize(PyObject *self, PyObject *xo)
{
    PyArrayObject *x = check_logits(xo, "x", 2);
    if (!x) return NULL;
    npy_intp n = PyArray_DIM(x, 0), c = PyArray_DIM(x, 1);
    PyObject *z = new_array(2, n, c);
    if (!z) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_logit_standardize_forward((float *)PyArray_DATA((PyArrayObject *)z),
                                        (const float *)PyArray_DATA(x), n, c);
    DTKD_END_NOGIL
    if (st != DTKD_OK) {
        Py_DECREF(z);
        return raise_for(st, "logit_standardize(x)", x, "x", NULL, NULL, NULL, c);
    }
    return z;
}

/* logit_standardize_backward(grad_output, x, output) -> dx (N,C). */
static PyObject *py_logit_standardize_backward(PyObject *self, PyObject *args)
{
    PyObject *dzo, *xo, *zo;
    if (!PyArg_ParseTuple(args, "OOO:logit_standardize_backward", &dzo, &xo, &zo)) return NULL;
    PyArrayObject *x = check_logits(xo, "x", 2);
    if (!x) return NULL;
    PyArrayObject *dz = check_like(dzo, "grad_output", x, "x");
    if (!dz) return NULL;
    PyArrayObject *z = check_like(zo, "output", x, "x");
    if (!z) return NULL;
    if (dtkd_check_finite(dz, "grad_output") < 0 || dtkd_check_finite(x, "x") < 0 ||
        dtkd_check_finite(z, "output") < 0)
        return NULL;
    npy_intp n = PyArray_DIM(x, 0), c = PyArray_DIM(x, 1);
    PyObject *dx = new_array(2, n, c);
    if (!dx) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_logit_standardize_backward((float *)PyArray_DATA((PyArrayObject *)dx),
                                         (const float *)PyArray_DATA(dz),
                                         (const float *)PyArray_DATA(x),
                                         (const float *)PyArray_DATA(z), n, c);
    DTKD_END_NOGIL
    if (st != DTKD_OK) {
        Py_DECREF(dx);
        return raise_for(st, "logit_standardize_backward", NULL, NULL, NULL, NULL, NULL, c);
    }
    return dx;
}

/* ---- DTKD temperatures ---- */

static PyObject *py_dynamic_temperatures(PyObject *self, PyObject *args)
{
    PyObject *so, *to;
    float temperature;
    if (!PyArg_ParseTuple(args, "OOf:dynamic_temperatures", &so, &to, &temperature)) return NULL;
    PyArrayObject *s = check_logits(so, "student", 2);
    if (!s) return NULL;
    PyArrayObject *t = check_like(to, "teacher", s, "student");
    if (!t) return NULL;
    npy_intp n = PyArray_DIM(s, 0), c = PyArray_DIM(s, 1);
    PyObject *ts = new_array(1, n, 0), *tt = new_array(1, n, 0);
    if (!ts || !tt) {
        Py_XDECREF(ts);
        Py_XDECREF(tt);
        return NULL;
    }
    long n_fallback = 0;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_dynamic_temperatures((float *)PyArray_DATA((PyArrayObject *)ts),
                                   (float *)PyArray_DATA((PyArrayObject *)tt), &n_fallback,
                                   (const float *)PyArray_DATA(s), (const float *)PyArray_DATA(t),
                                   temperature, n, c);
    DTKD_END_NOGIL
    if (st != DTKD_OK) {
        Py_DECREF(ts);
        Py_DECREF(tt);
        return raise_for(st, "dynamic_temperatures(student, teacher)", s, "student", t, "teacher",
                         NULL, c);
    }
    return Py_BuildValue("NNl", ts, tt, n_fallback);
}

/* ---- cross-entropy ---- */

/* cross_entropy(logits, labels, dloss) -> (sum of losses, losses (N,), grad (N,C)). */
static PyObject *py_cross_entropy(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    float dloss;
    if (check_nargs("cross_entropy", nargs, 3) < 0 || arg_float(args[2], &dloss) < 0) return NULL;
    PyObject *so = args[0], *yo = args[1];
    PyArrayObject *s = check_logits(so, "logits", 2);
    if (!s) return NULL;
    npy_intp n = PyArray_DIM(s, 0), c = PyArray_DIM(s, 1);
    PyArrayObject *y = check_labels(yo, n);
    if (!y) return NULL;
    PyObject *loss = new_array(1, n, 0), *grad = new_array(2, n, c);
    if (!loss || !grad) {
        Py_XDECREF(loss);
        Py_XDECREF(grad);
        return NULL;
    }
    const float *sp = PyArray_DATA(s);
    const int64_t *yp = PyArray_DATA(y);
    float *lp = PyArray_DATA((PyArrayObject *)loss);
    int st;
    double total = 0.0;
    DTKD_BEGIN_NOGIL
    st = dtkd_cross_entropy_forward_backward(lp, PyArray_DATA((PyArrayObject *)grad), sp, yp,
                                             dloss, n, c);
    if (st == DTKD_OK) total = sum_f32(lp, n);
    DTKD_END_NOGIL
    if (st != DTKD_OK) {
        Py_DECREF(loss);
        Py_DECREF(grad);
        return raise_for(st, "cross_entropy(logits, labels)", s, "logits", NULL, NULL, y, c);
    }
    return Py_BuildValue("dNN", total, loss, grad);
}

/* ---- KD / DTKD ---- */

/* kl(student, teacher, temperature, mode, dloss)
 *   -> (sum of losses, losses (N,), t_student (N,), t_teacher (N,), n_fallback, grad (N,C));
 * t_student and t_teacher are None for mode 0 (KD: they are T). */
static PyObject *py_kl(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    float temperature, dloss;
    int mode;
    if (check_nargs("kl", nargs, 5) < 0 || arg_float(args[2], &temperature) < 0 ||
        arg_int(args[3], &mode) < 0 || arg_float(args[4], &dloss) < 0)
        return NULL;
    PyObject *so = args[0], *to = args[1];
    if (mode < DTKD_KL_FIXED || mode > DTKD_KL_EXACT_DETACHED)
        return DTKD_VALUE_ERR("kl: mode must be 0, 1, 2, 3 or 4, got %d", mode);
    PyArrayObject *s = check_logits(so, "student", 2);
    if (!s) return NULL;
    PyArrayObject *t = check_like(to, "teacher", s, "student");
    if (!t) return NULL;
    npy_intp n = PyArray_DIM(s, 0), c = PyArray_DIM(s, 1);
    const int fixed = mode == DTKD_KL_FIXED;
    PyObject *loss = new_array(1, n, 0), *grad = new_array(2, n, c);
    PyObject *ts = fixed ? Py_None : new_array(1, n, 0), *tt = fixed ? Py_None : new_array(1, n, 0);
    Py_XINCREF(fixed ? ts : NULL);
    Py_XINCREF(fixed ? tt : NULL);
    /* scratch: the kernel's, then (KD) the temperatures nobody asked for */
    const npy_intp kernel_scratch = DTKD_KL_SCRATCH_FLOATS(n, c);
    float *scratch = dtkd_malloc_array(kernel_scratch + (fixed ? 2 * n : 0), sizeof(float));
    if (!loss || !ts || !tt || !grad || !scratch) {
        Py_XDECREF(loss);
        Py_XDECREF(ts);
        Py_XDECREF(tt);
        Py_XDECREF(grad);
        dtkd_free(scratch);
        return PyErr_Occurred() ? NULL : dtkd_raise_status(DTKD_ERR_NOMEM, "kl: scratch");
    }
    float *tsp = fixed ? scratch + kernel_scratch : PyArray_DATA((PyArrayObject *)ts);
    float *ttp = fixed ? scratch + kernel_scratch + n : PyArray_DATA((PyArrayObject *)tt);
    const float *sp = PyArray_DATA(s), *tp = PyArray_DATA(t);
    float *lp = PyArray_DATA((PyArrayObject *)loss);
    long n_fallback = 0;
    double total = 0.0;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_kl_forward_backward(lp, tsp, ttp, PyArray_DATA((PyArrayObject *)grad), scratch,
                                  &n_fallback, sp, tp, temperature, (enum dtkd_kl_mode)mode,
                                  dloss, n, c);
    if (st == DTKD_OK) total = sum_f32(lp, n);
    DTKD_END_NOGIL
    dtkd_free(scratch);
    if (st != DTKD_OK) {
        Py_DECREF(loss);
        Py_DECREF(ts);
        Py_DECREF(tt);
        Py_DECREF(grad);
        return raise_for(st, mode ? "dtkd(student, teacher)" : "kd(student, teacher)", s,
                         "student", t, "teacher", NULL, c);
    }
    return Py_BuildValue("dNNNlN", total, loss, ts, tt, n_fallback, grad);
}

/* kd_temperature(student, teacher, temperature (N,), dloss)
 *   -> (sum of losses, losses (N,), d loss / d temperature (N,), grad (N,C)). */
static PyObject *py_kd_temperature(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    float dloss;
    if (check_nargs("kd_temperature", nargs, 4) < 0 || arg_float(args[3], &dloss) < 0) return NULL;
    PyArrayObject *s = check_logits(args[0], "student", 1);
    if (!s) return NULL;
    PyArrayObject *t = check_like(args[1], "teacher", s, "student");
    if (!t) return NULL;
    npy_intp n = PyArray_DIM(s, 0), c = PyArray_DIM(s, 1), shape[1] = {n};
    PyArrayObject *temp = dtkd_check_shape(args[2], "temperature", NPY_FLOAT32, 1, shape);
    if (!temp) return NULL;
    PyObject *loss = new_array(1, n, 0), *dtemp = new_array(1, n, 0), *grad = new_array(2, n, c);
    float *exp_t = dtkd_malloc_array(n * c, sizeof(float));
    if (!loss || !dtemp || !grad || !exp_t) {
        Py_XDECREF(loss);
        Py_XDECREF(dtemp);
        Py_XDECREF(grad);
        dtkd_free(exp_t);
        return PyErr_Occurred() ? NULL : dtkd_raise_status(DTKD_ERR_NOMEM, "kd_temperature: scratch");
    }
    float *lp = PyArray_DATA((PyArrayObject *)loss);
    double total = 0.0;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_kd_temperature_forward_backward(lp, PyArray_DATA((PyArrayObject *)dtemp),
                                              PyArray_DATA((PyArrayObject *)grad), exp_t,
                                              PyArray_DATA(s), PyArray_DATA(t), PyArray_DATA(temp),
                                              dloss, n, c);
    if (st == DTKD_OK) total = sum_f32(lp, n);
    DTKD_END_NOGIL
    dtkd_free(exp_t);
    if (st != DTKD_OK) {
        Py_DECREF(loss);
        Py_DECREF(dtemp);
        Py_DECREF(grad);
        if (st == DTKD_ERR_VALUE)
            return DTKD_VALUE_ERR("temperature: every entry must be finite and > 0");
        return raise_for(st, "kd_temperature(student, teacher)", s, "student", t, "teacher", NULL, c);
    }
    return Py_BuildValue("dNNN", total, loss, dtemp, grad);
}

/* ---- DKD ---- */

/* dkd(student, teacher, labels, alpha, beta, temperature, dynamic_tckd, dynamic_nckd, mode, dloss)
 *   -> (sum of losses, losses, tckd, nckd (N,), sum of tckd, sum of nckd, t_student,
 *       t_teacher (N,), n_fallback, grad). */
static PyObject *py_dkd(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    float alpha, beta, temperature, dloss;
    int dyn_tc, dyn_nc, mode;
    if (check_nargs("dkd", nargs, 10) < 0 || arg_float(args[3], &alpha) < 0 ||
        arg_float(args[4], &beta) < 0 || arg_float(args[5], &temperature) < 0 ||
        arg_bool(args[6], &dyn_tc) < 0 || arg_bool(args[7], &dyn_nc) < 0 ||
        arg_int(args[8], &mode) < 0 || arg_float(args[9], &dloss) < 0)
        return NULL;
    if (mode < DTKD_KL_FIXED || mode > DTKD_KL_DYNAMIC_DETACHED)
        return DTKD_VALUE_ERR("dkd: mode must be 0, 1 or 2, got %d", mode);
    PyArrayObject *s, *t, *y;
    if (check_student_teacher_labels(args, &s, &t, &y) < 0) return NULL;
    npy_intp n = PyArray_DIM(s, 0), c = PyArray_DIM(s, 1);
    PyObject *loss = new_array(1, n, 0), *tckd = new_array(1, n, 0), *nckd = new_array(1, n, 0);
    PyObject *ts = new_array(1, n, 0), *tt = new_array(1, n, 0), *grad = new_array(2, n, c);
    float *exp_t = dtkd_malloc_array(n * c, sizeof(float));
    if (!loss || !tckd || !nckd || !ts || !tt || !grad || !exp_t) {
        Py_XDECREF(loss);
        Py_XDECREF(tckd);
        Py_XDECREF(nckd);
        Py_XDECREF(ts);
        Py_XDECREF(tt);
        Py_XDECREF(grad);
        dtkd_free(exp_t);
        return PyErr_Occurred() ? NULL : dtkd_raise_status(DTKD_ERR_NOMEM, "dkd: scratch");
    }
    const float *sp = PyArray_DATA(s), *tp = PyArray_DATA(t);
    const int64_t *yp = PyArray_DATA(y);
    float *lp = PyArray_DATA((PyArrayObject *)loss);
    long n_fallback = 0;
    double total = 0.0, tckd_total = 0.0, nckd_total = 0.0;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_dkd_forward_backward(lp, PyArray_DATA((PyArrayObject *)tckd),
                                   PyArray_DATA((PyArrayObject *)nckd),
                                   PyArray_DATA((PyArrayObject *)ts), PyArray_DATA((PyArrayObject *)tt),
                                   PyArray_DATA((PyArrayObject *)grad), exp_t, &n_fallback, sp, tp,
                                   yp, alpha, beta, temperature, dyn_tc, dyn_nc,
                                   (enum dtkd_kl_mode)mode, dloss, n, c);
    if (st == DTKD_OK) {
        total = sum_f32(lp, n);
        tckd_total = sum_f32(PyArray_DATA((PyArrayObject *)tckd), n);
        nckd_total = sum_f32(PyArray_DATA((PyArrayObject *)nckd), n);
    }
    DTKD_END_NOGIL
    dtkd_free(exp_t);
    if (st != DTKD_OK) {
        Py_DECREF(loss);
        Py_DECREF(tckd);
        Py_DECREF(nckd);
        Py_DECREF(ts);
        Py_DECREF(tt);
        Py_DECREF(grad);
        return raise_for(st, "dkd(student, teacher, labels)", s, "student", t, "teacher", y, c);
    }
    return Py_BuildValue("dNNNddNNlN", total, loss, tckd, nckd, tckd_total, nckd_total, ts, tt,
                         n_fallback, grad);
}

/* ---- the trainers' objectives ---- */

/* dtkd_objective(student, teacher, labels, temperature, mode, w_dtkd, w_kd, w_ce)
 *   -> (sum of dtkd, sum of kd, sum of ce, t_student, t_teacher (N,), n_fallback, grad),
 * grad = d(w_dtkd sum dtkd + w_kd sum kd + w_ce sum ce)/d student. */
static PyObject *py_dtkd_objective(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    float temperature, w_dtkd, w_kd, w_ce;
    int mode;
    if (check_nargs("dtkd_objective", nargs, 8) < 0 || arg_float(args[3], &temperature) < 0 ||
        arg_int(args[4], &mode) < 0 || arg_float(args[5], &w_dtkd) < 0 ||
        arg_float(args[6], &w_kd) < 0 || arg_float(args[7], &w_ce) < 0)
        return NULL;
    if (mode < DTKD_KL_DYNAMIC || mode > DTKD_KL_EXACT_DETACHED)
        return DTKD_VALUE_ERR("dtkd_objective: mode must be 1, 2, 3 or 4, got %d", mode);
    PyArrayObject *s, *t, *y;
    if (check_student_teacher_labels(args, &s, &t, &y) < 0) return NULL;
    npy_intp n = PyArray_DIM(s, 0), c = PyArray_DIM(s, 1);
    PyObject *ts, *tt, *grad;
    float *scratch;
    /* scratch: the per-sample terms (3 N), then the kernel's (2 N C) */
    if (new_objective_outputs(n, c, 3 * n + 2 * n * c, &ts, &tt, &grad, &scratch) < 0)
        return NULL;
    float *dt = scratch, *kd = scratch + n, *ce = scratch + 2 * n;
    long n_fallback = 0;
    double dt_total = 0.0, kd_total = 0.0, ce_total = 0.0;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_dtkd_objective_forward_backward(
        dt, kd, ce, PyArray_DATA((PyArrayObject *)ts), PyArray_DATA((PyArrayObject *)tt),
        PyArray_DATA((PyArrayObject *)grad), scratch + 3 * n, &n_fallback, PyArray_DATA(s),
        PyArray_DATA(t), PyArray_DATA(y), temperature, (enum dtkd_kl_mode)mode, w_dtkd, w_kd,
        w_ce, n, c);
    if (st == DTKD_OK) {
        dt_total = sum_f32(dt, n);
        kd_total = sum_f32(kd, n);
        ce_total = sum_f32(ce, n);
    }
    DTKD_END_NOGIL
    dtkd_free(scratch);
    if (st != DTKD_OK) {
        drop_objective_outputs(ts, tt, grad);
        return raise_for(st, "dtkd_objective(student, teacher, labels)", s, "student", t,
                         "teacher", y, c);
    }
    return Py_BuildValue("dddNNlN", dt_total, kd_total, ce_total, ts, tt, n_fallback, grad);
}

/* dkd_objective(student, teacher, labels, alpha, beta, temperature, dynamic_tckd, dynamic_nckd,
 *               mode, w_dkd, w_ce)
 *   -> (sum of alpha tckd + beta nckd, sum of tckd, sum of nckd, sum of ce, t_student,
 *       t_teacher (N,), n_fallback, grad),
 * grad = d(w_dkd sum (alpha tckd + beta nckd) + w_ce sum ce)/d student. */
static PyObject *py_dkd_objective(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    float alpha, beta, temperature, w_dkd, w_ce;
    int dyn_tc, dyn_nc, mode;
    if (check_nargs("dkd_objective", nargs, 11) < 0 || arg_float(args[3], &alpha) < 0 ||
        arg_float(args[4], &beta) < 0 || arg_float(args[5], &temperature) < 0 ||
        arg_bool(args[6], &dyn_tc) < 0 || arg_bool(args[7], &dyn_nc) < 0 ||
        arg_int(args[8], &mode) < 0 || arg_float(args[9], &w_dkd) < 0 ||
        arg_float(args[10], &w_ce) < 0)
        return NULL;
    if (mode < DTKD_KL_FIXED || mode > DTKD_KL_DYNAMIC_DETACHED)
        return DTKD_VALUE_ERR("dkd_objective: mode must be 0, 1 or 2, got %d", mode);
    PyArrayObject *s, *t, *y;
    if (check_student_teacher_labels(args, &s, &t, &y) < 0) return NULL;
    npy_intp n = PyArray_DIM(s, 0), c = PyArray_DIM(s, 1);
    PyObject *ts, *tt, *grad;
    float *scratch;
    /* scratch: the per-sample terms (4 N), then the kernel's (2 N C) */
    if (new_objective_outputs(n, c, 4 * n + 2 * n * c, &ts, &tt, &grad, &scratch) < 0)
        return NULL;
    float *dkd = scratch, *tckd = scratch + n, *nckd = scratch + 2 * n, *ce = scratch + 3 * n;
    long n_fallback = 0;
    double dkd_total = 0.0, tckd_total = 0.0, nckd_total = 0.0, ce_total = 0.0;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_dkd_objective_forward_backward(
        dkd, tckd, nckd, ce, PyArray_DATA((PyArrayObject *)ts), PyArray_DATA((PyArrayObject *)tt),
        PyArray_DATA((PyArrayObject *)grad), scratch + 4 * n, &n_fallback, PyArray_DATA(s),
        PyArray_DATA(t), PyArray_DATA(y), alpha, beta, temperature, dyn_tc, dyn_nc,
        (enum dtkd_kl_mode)mode, w_dkd, w_ce, n, c);
    if (st == DTKD_OK) {
        dkd_total = sum_f32(dkd, n);
        tckd_total = sum_f32(tckd, n);
        nckd_total = sum_f32(nckd, n);
        ce_total = sum_f32(ce, n);
    }
    DTKD_END_NOGIL
    dtkd_free(scratch);
    if (st != DTKD_OK) {
        drop_objective_outputs(ts, tt, grad);
        return raise_for(st, "dkd_objective(student, teacher, labels)", s, "student", t,
                         "teacher", y, c);
    }
    return Py_BuildValue("ddddNNlN", dkd_total, tckd_total, nckd_total, ce_total, ts, tt,
                         n_fallback, grad);
}

PyMethodDef dtkd_losses_methods[] = {
    {"same_float32_matrices", (PyCFunction)(void (*)(void))py_same_float32_matrices, METH_FASTCALL,
     "same_float32_matrices(*arrays) -> True if each is a native float32 2-D C-contiguous aligned"
     " numpy.ndarray (exact type) and all have one shape."},
    {"log_softmax_forward", py_log_softmax_forward, METH_VARARGS,
     "log_softmax_forward(x, temperature) -> log_softmax(x / T), (N,C) float32."},
    {"log_softmax_backward", py_log_softmax_backward, METH_VARARGS,
     "log_softmax_backward(grad_output, output, temperature) -> grad of x."},
    {"softmax_forward", py_softmax_forward, METH_VARARGS,
     "softmax_forward(x, temperature) -> softmax(x / T), (N,C) float32."},
    {"softmax_backward", py_softmax_backward, METH_VARARGS,
     "softmax_backward(grad_output, output, temperature) -> grad of x."},
    {"logsumexp_forward", py_logsumexp_forward, METH_VARARGS,
     "logsumexp_forward(x, temperature) -> logsumexp(x / T) per row, (N,) float32."},
    {"logsumexp_backward", py_logsumexp_backward, METH_VARARGS,
     "logsumexp_backward(grad_output, x, output, temperature) -> grad of x."},
    {"logit_standardize", py_logit_standardize, METH_O,
     "logit_standardize(x) -> (x - mean) / (std + 1e-7) per row (unbiased std), (N,C) float32."},
    {"logit_standardize_backward", py_logit_standardize_backward, METH_VARARGS,
     "logit_standardize_backward(grad_output, x, output) -> grad of x."},
    {"dynamic_temperatures", py_dynamic_temperatures, METH_VARARGS,
     "dynamic_temperatures(student, teacher, temperature) -> (t_student, t_teacher, n_fallback)."},
    {"cross_entropy", (PyCFunction)(void (*)(void))py_cross_entropy, METH_FASTCALL,
     "cross_entropy(logits, labels, dloss) -> (sum, losses, grad of dloss*sum)."},
    {"kl", (PyCFunction)(void (*)(void))py_kl, METH_FASTCALL,
     "kl(student, teacher, temperature, mode 0=KD 1=DTKD 2=DTKD detached 3=DTKD exact rule"
     " 4=exact rule detached, dloss)"
     " -> (sum, losses, t_student, t_teacher (None for KD), n_fallback, grad of dloss*sum)."},
    {"kd_temperature", (PyCFunction)(void (*)(void))py_kd_temperature, METH_FASTCALL,
     "kd_temperature(student, teacher, temperature (N,), dloss) -> (sum, losses,"
     " d(dloss*loss_i)/d temperature_i, grad of dloss*sum)."},
    {"dkd", (PyCFunction)(void (*)(void))py_dkd, METH_FASTCALL,
     "dkd(student, teacher, labels, alpha, beta, temperature, dynamic_tckd, dynamic_nckd, mode,"
     " dloss) -> (sum, losses, tckd, nckd, sum of tckd, sum of nckd, t_student, t_teacher,"
     " n_fallback, grad)."},
    {"dtkd_objective", (PyCFunction)(void (*)(void))py_dtkd_objective, METH_FASTCALL,
     "dtkd_objective(student, teacher, labels, temperature, mode 1-4 (as kl's), w_dtkd, w_kd, w_ce)"
     " -> (sum dtkd, sum kd, sum ce, t_student, t_teacher, n_fallback, grad of the weighted sum)."},
    {"dkd_objective", (PyCFunction)(void (*)(void))py_dkd_objective, METH_FASTCALL,
     "dkd_objective(student, teacher, labels, alpha, beta, temperature, dynamic_tckd,"
     " dynamic_nckd, mode, w_dkd, w_ce) -> (sum dkd, sum tckd, sum nckd, sum ce, t_student,"
     " t_teacher, n_fallback, grad of the weighted sum)."},
    {NULL, NULL, 0, NULL},
};
