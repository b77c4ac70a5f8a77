/* Bindings for the layer kernels (csrc/kernels/{conv,batchnorm,pool,linear,elementwise}.c),
 * family "nn". Activations are NCHW float32 C-contiguous, weights in PyTorch's layout.
 * Parameter-gradient outputs (dw, db, dgamma, dbeta) are ACCUMULATED into caller arrays. */
#include "boundary.h"

#include "kernels/batchnorm.h"
#include "kernels/conv.h"
#include "kernels/elementwise.h"
#include "kernels/linear.h"
#include "kernels/pool.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static PyArrayObject *new_f32(int nd, const npy_intp *dims)
{
    return (PyArrayObject *)PyArray_SimpleNew(nd, (npy_intp *)dims, NPY_FLOAT32);
}

/* A float32 input array that must hold only finite values (checked in parallel, GIL released). */
static PyArrayObject *finite_input(PyObject *obj, const char *name, int ndim,
                                   const npy_intp *shape)
{
    PyArrayObject *a = shape ? dtkd_check_shape(obj, name, NPY_FLOAT32, ndim, shape)
                             : dtkd_check_array(obj, name, NPY_FLOAT32, ndim);
    if (!a) return NULL;
    int ok;
    DTKD_BEGIN_NOGIL
    ok = dtkd_all_finite(F32(a), (long)PyArray_SIZE(a));
    DTKD_END_NOGIL
    if (!ok) {
        dtkd_raise(PyExc_ValueError, "%s: contains NaN or Inf", name);
        return NULL;
    }
    return a;
}

/* Reject arrays with a zero-length dimension, naming the argument. */
static int nonempty(PyArrayObject *a, const char *name)
{
    if (PyArray_SIZE(a) > 0) return 0;
    dtkd_raise(PyExc_ValueError, "%s: empty array (a dimension is 0)", name);
    return -1;
}

/* A failed kernel status as an exception. The kernels that take an activation x check it for
 * NaN/Inf in the pass that reads it, so DTKD_ERR_NONFINITE means x holds one. */
static PyObject *raise_x_status(int st, const char *context)
{
    if (st == DTKD_ERR_NONFINITE) return DTKD_VALUE_ERR("x: contains NaN or Inf");
    return dtkd_raise_status(st, context);
}

/* Batch norm's kernels return DTKD_ERR_VALUE when finite inputs give a result float32 cannot
 * hold: say which values are to blame. */
static PyObject *raise_batchnorm_status(int st, const char *context)
{
    if (st == DTKD_ERR_VALUE)
        return DTKD_VALUE_ERR("%s: the output or the batch statistics leave float32's range "
                              "(|v| <= 3.4e38): x's variance, gamma, beta, the running "
                              "statistics or eps give a value beyond it", context);
    return raise_x_status(st, context);
}

static int at_least(long v, long lo, const char *name)
{
    if (v >= lo) return 0;
    dtkd_raise(PyExc_ValueError, "%s: must be >= %ld, got %ld", name, lo, v);
    return -1;
}

/* A float32 (n,) argument: an output the kernel writes (writable) or a finite input. */
static PyArrayObject *vector_arg(PyObject *obj, const char *name, npy_intp n, int writable)
{
    return writable ? dtkd_check_output(obj, name, NPY_FLOAT32, 1, &n)
                    : finite_input(obj, name, 1, &n);
}

/* An optional (may be None) vector_arg: *out = its data pointer, or NULL for None. */
static int optional_vector(PyObject *obj, const char *name, npy_intp n, int writable,
                           float **out)
{
    *out = NULL;
    if (obj == Py_None) return 0;
    PyArrayObject *a = vector_arg(obj, name, n, writable);
    if (!a) return -1;
    *out = F32(a);
    return 0;
}

/* ---- conv2d ------------------------------------------------------------------------------- */

/* Check x (N,C,H,W) against w (O,C/groups,KH,KW) and the geometry; fill d. */
static int conv_dims(struct dtkd_conv2d_dims *d, PyArrayObject *x, PyArrayObject *w, long sh,
                     long sw, long ph, long pw, long groups)
{
    if (nonempty(x, "x") || nonempty(w, "w")) return -1;
    if (at_least(sh, 1, "stride_h") || at_least(sw, 1, "stride_w") || at_least(ph, 0, "pad_h") ||
        at_least(pw, 0, "pad_w") || at_least(groups, 1, "groups"))
        return -1;
    const npy_intp *xs = PyArray_DIMS(x), *ws = PyArray_DIMS(w);
    *d = (struct dtkd_conv2d_dims){.N = xs[0], .C = xs[1], .H = xs[2], .W = xs[3], .O = ws[0],
                                   .KH = ws[2], .KW = ws[3], .SH = sh, .SW = sw, .PH = ph,
                                   .PW = pw, .G = groups};
    if (d->C % groups) {
        dtkd_raise(PyExc_ValueError, "groups: %ld does not divide the %ld input channels of x",
                     groups, d->C);
        return -1;
    }
    if (d->O % groups) {
        dtkd_raise(PyExc_ValueError,
                     "groups: %ld does not divide the %ld output channels of w (w.shape[0])",
                     groups, d->O);
        return -1;
    }
    if (ws[1] != d->C / groups) {
        dtkd_raise(PyExc_ValueError,
                     "w: expected w.shape[1] == C/groups = %ld (x has C=%ld channels, groups=%ld), "
                     "got w of shape (%ld, %ld, %ld, %ld)",
                     d->C / groups, d->C, groups, (long)ws[0], (long)ws[1], (long)ws[2],
                     (long)ws[3]);
        return -1;
    }
    if (d->H + 2 * ph < d->KH || d->W + 2 * pw < d->KW) {
        dtkd_raise(PyExc_ValueError,
                     "w: kernel %ldx%ld is larger than the padded input of x (%ldx%ld with "
                     "pad_h=%ld, pad_w=%ld)",
                     d->KH, d->KW, d->H + 2 * ph, d->W + 2 * pw, ph, pw);
        return -1;
    }
    if (dtkd_conv2d_dims_init(d)) {
        PyErr_SetString(PyExc_ValueError, "conv2d: inconsistent sizes");
        return -1;
    }
    return 0;
}

static PyObject *py_conv2d_forward(PyObject *self, PyObject *args)
{
    PyObject *xo, *wo, *bo;
    long sh, sw, ph, pw, groups;
    if (!PyArg_ParseTuple(args, "OOOlllll:conv2d_forward", &xo, &wo, &bo, &sh, &sw, &ph, &pw,
                          &groups))
        return NULL;
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, 4);
    PyArrayObject *w = x ? dtkd_check_array(wo, "w", NPY_FLOAT32, 4) : NULL;
    if (!w) return NULL;
    struct dtkd_conv2d_dims d;
    if (conv_dims(&d, x, w, sh, sw, ph, pw, groups)) return NULL;
    float *b;
    if (optional_vector(bo, "b", d.O, 0, &b)) return NULL;
    if (!finite_input(xo, "x", 4, NULL) || !finite_input(wo, "w", 4, NULL)) return NULL;

    npy_intp ydims[4] = {d.N, d.O, d.OH, d.OW};
    PyArrayObject *y = new_f32(4, ydims);
    if (!y) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    long len = dtkd_conv2d_forward_workspace(&d, dtkd_get_num_threads());
    float *ws = len ? dtkd_workspace_acquire((size_t)len) : NULL;
    st = len && !ws ? DTKD_ERR_NOMEM : dtkd_conv2d_forward(F32(y), ws, len, F32(x), F32(w), b, &d);
    dtkd_workspace_release(ws);
    DTKD_END_NOGIL
    if (st) {
        Py_DECREF(y);
        return dtkd_raise_status(st, "conv2d_forward");
    }
    return (PyObject *)y;
}

static PyObject *py_conv2d_backward(PyObject *self, PyObject *args)
{
    PyObject *dyo, *xo, *wo, *dwo, *dbo;
    long sh, sw, ph, pw, groups;
    int need_dx;
    if (!PyArg_ParseTuple(args, "OOOlllllOOp:conv2d_backward", &dyo, &xo, &wo, &sh, &sw, &ph, &pw,
                          &groups, &dwo, &dbo, &need_dx))
        return NULL;
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, 4);
    PyArrayObject *w = x ? dtkd_check_array(wo, "w", NPY_FLOAT32, 4) : NULL;
    if (!w) return NULL;
    struct dtkd_conv2d_dims d;
    if (conv_dims(&d, x, w, sh, sw, ph, pw, groups)) return NULL;
    npy_intp ydims[4] = {d.N, d.O, d.OH, d.OW};
    PyArrayObject *dy = finite_input(dyo, "dy", 4, ydims);
    if (!dy) return NULL;
    float *dw = NULL, *db;
    if (dwo != Py_None) {
        PyArrayObject *a = dtkd_check_output(dwo, "dw", NPY_FLOAT32, 4, PyArray_DIMS(w));
        if (!a) return NULL;
        dw = F32(a);
    }
    if (optional_vector(dbo, "db", d.O, 1, &db)) return NULL;

    PyArrayObject *dx = NULL;
    if (need_dx) {
        dx = new_f32(4, PyArray_DIMS(x));
        if (!dx) return NULL;
    }
    int st;
    DTKD_BEGIN_NOGIL
    long len = dtkd_conv2d_backward_workspace(&d, dtkd_get_num_threads(), dw != NULL);
    float *ws = len ? dtkd_workspace_acquire((size_t)len) : NULL;
    st = len && !ws ? DTKD_ERR_NOMEM
                    : dtkd_conv2d_backward(dx ? F32(dx) : NULL, dw, db, ws, len, F32(dy), F32(x),
                                           F32(w), &d);
    dtkd_workspace_release(ws);
    DTKD_END_NOGIL
    if (st) {
        Py_XDECREF(dx);
        return dtkd_raise_status(st, "conv2d_backward");
    }
    if (!dx) Py_RETURN_NONE;
    return (PyObject *)dx;
}

/* ---- batchnorm2d -------------------------------------------------------------------------- */

static int finite_positive(double v, const char *name)
{
    if (isfinite(v) && v > 0) return 0;
    dtkd_raise(PyExc_ValueError, "%s: must be finite and > 0, got %g", name, v);
    return -1;
}

static PyObject *py_batchnorm2d_forward_train(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "gamma", "beta", "running_mean", "running_var", "momentum",
                             "eps", "residual", "relu", NULL};
    PyObject *xo, *go, *bo, *rmo, *rvo, *reso = Py_None;
    double momentum, eps;
    int relu = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOdd|Op:batchnorm2d_forward_train", kwlist,
                                     &xo, &go, &bo, &rmo, &rvo, &momentum, &eps, &reso, &relu))
        return NULL;
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, 4);
    if (!x || nonempty(x, "x")) return NULL;
    const npy_intp *xs = PyArray_DIMS(x);
    npy_intp C = xs[1];
    PyArrayObject *gamma = vector_arg(go, "gamma", C, 0);
    PyArrayObject *beta = gamma ? vector_arg(bo, "beta", C, 0) : NULL;
    if (!beta) return NULL;
    if ((rmo == Py_None) != (rvo == Py_None))
        return DTKD_VALUE_ERR("running_mean, running_var: pass both arrays or both None");
    float *rm = NULL, *rv = NULL;
    if (rmo != Py_None) {
        PyArrayObject *a = vector_arg(rmo, "running_mean", C, 1);
        PyArrayObject *b = a ? vector_arg(rvo, "running_var", C, 1) : NULL;
        if (!b) return NULL;
        rm = F32(a);
        rv = F32(b);
    }
    const float *residual = NULL;
    if (reso != Py_None) {
        /* finite: the sum is checked only through x's statistics */
        PyArrayObject *r = finite_input(reso, "residual", 4, xs);
        if (!r) return NULL;
        residual = F32(r);
    }
    if (!(isfinite(momentum) && momentum >= 0 && momentum <= 1))
        return DTKD_VALUE_ERR("momentum: must be in [0, 1], got %g", momentum);
    if (finite_positive(eps, "eps")) return NULL;
    long HW = (long)(xs[2] * xs[3]);
    if (xs[0] * HW < 2)
        return DTKD_VALUE_ERR("x: batch statistics need more than 1 value per channel, got "
                              "shape (%ld, %ld, %ld, %ld)",
                              (long)xs[0], (long)xs[1], (long)xs[2], (long)xs[3]);

    PyArrayObject *y = new_f32(4, xs), *mean = new_f32(1, &C), *invstd = new_f32(1, &C);
    if (!y || !mean || !invstd) goto fail;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_batchnorm2d_act_forward_train(F32(y), F32(mean), F32(invstd), rm, rv, F32(x),
                                            F32(gamma), F32(beta), residual, relu,
                                            (float)momentum, (float)eps, (long)xs[0], (long)C, HW);
    DTKD_END_NOGIL
    if (st) {
        raise_batchnorm_status(st, "batchnorm2d_forward_train");
        goto fail;
    }
    return Py_BuildValue("NNN", y, mean, invstd);
fail:
    Py_XDECREF(y);
    Py_XDECREF(mean);
    Py_XDECREF(invstd);
    return NULL;
}

static PyObject *py_batchnorm2d_forward_eval(PyObject *self, PyObject *args)
{
    PyObject *xo, *go, *bo, *rmo, *rvo;
    double eps;
    if (!PyArg_ParseTuple(args, "OOOOOd:batchnorm2d_forward_eval", &xo, &go, &bo, &rmo, &rvo,
                          &eps))
        return NULL;
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, 4);
    if (!x || nonempty(x, "x")) return NULL;
    const npy_intp *xs = PyArray_DIMS(x);
    npy_intp C = xs[1];
    PyArrayObject *gamma = vector_arg(go, "gamma", C, 0);
    PyArrayObject *beta = gamma ? vector_arg(bo, "beta", C, 0) : NULL;
    PyArrayObject *rm = beta ? vector_arg(rmo, "running_mean", C, 0) : NULL;
    PyArrayObject *rv = rm ? vector_arg(rvo, "running_var", C, 0) : NULL;
    if (!rv) return NULL;
    if (finite_positive(eps, "eps")) return NULL;
    for (npy_intp c = 0; c < C; c++)
        if (F32(rv)[c] < 0) return DTKD_VALUE_ERR("running_var: must be >= 0, got %g at %ld",
                                                  (double)F32(rv)[c], (long)c);
    PyArrayObject *y = new_f32(4, xs);
    if (!y) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_batchnorm2d_forward_eval(F32(y), F32(x), F32(gamma), F32(beta), F32(rm), F32(rv),
                                       (float)eps, (long)xs[0], (long)C, (long)(xs[2] * xs[3]));
    DTKD_END_NOGIL
    if (st) {
        Py_DECREF(y);
        return raise_batchnorm_status(st, "batchnorm2d_forward_eval");
    }
    return (PyObject *)y;
}

/* dx (and, with residual_grad, the residual's gradient) of batchnorm2d_forward_train, fused
 * with its ReLU when y (its output) is given. */
static PyObject *bn_backward(PyObject *dyo, PyObject *yo, PyObject *xo, PyObject *go,
                             PyObject *mo, PyObject *io, PyObject *dgo, PyObject *dbo,
                             int residual_grad, int as_pair)
{
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, 4);
    if (!x || nonempty(x, "x")) return NULL;
    const npy_intp *xs = PyArray_DIMS(x);
    npy_intp C = xs[1];
    /* dy's NaN/Inf check happens in the kernel's first pass (DTKD_ERR_NONFINITE) */
    PyArrayObject *dy = dtkd_check_shape(dyo, "dy", NPY_FLOAT32, 4, xs);
    PyArrayObject *y = NULL;
    if (dy && yo != Py_None && !(y = dtkd_check_shape(yo, "y", NPY_FLOAT32, 4, xs))) return NULL;
    PyArrayObject *gamma = dy ? vector_arg(go, "gamma", C, 0) : NULL;
    PyArrayObject *mean = gamma ? vector_arg(mo, "save_mean", C, 0) : NULL;
    PyArrayObject *invstd = mean ? vector_arg(io, "save_invstd", C, 0) : NULL;
    PyArrayObject *dgamma = invstd ? vector_arg(dgo, "dgamma", C, 1) : NULL;
    PyArrayObject *dbeta = dgamma ? vector_arg(dbo, "dbeta", C, 1) : NULL;
    if (!dbeta) return NULL;
    PyArrayObject *dx = new_f32(4, xs), *dres = NULL;
    if (!dx) return NULL;
    if (residual_grad && !(dres = new_f32(4, xs))) {
        Py_DECREF(dx);
        return NULL;
    }
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_batchnorm2d_act_backward(F32(dx), dres ? F32(dres) : NULL, F32(dgamma),
                                       F32(dbeta), F32(dy), y ? F32(y) : NULL, F32(x),
                                       F32(gamma), F32(mean), F32(invstd), (long)xs[0], (long)C,
                                       (long)(xs[2] * xs[3]));
    DTKD_END_NOGIL
    if (st) { /* dgamma and dbeta are untouched */
        Py_DECREF(dx);
        Py_XDECREF(dres);
        if (st == DTKD_ERR_NONFINITE) return DTKD_VALUE_ERR("dy: contains NaN or Inf");
        return dtkd_raise_status(st, "batchnorm2d_act_backward");
    }
    if (!as_pair) return (PyObject *)dx;
    if (!dres) return Py_BuildValue("NO", dx, Py_None);
    return Py_BuildValue("NN", dx, dres);
}

static PyObject *py_batchnorm2d_backward(PyObject *self, PyObject *args)
{
    PyObject *dyo, *xo, *go, *mo, *io, *dgo, *dbo;
    if (!PyArg_ParseTuple(args, "OOOOOOO:batchnorm2d_backward", &dyo, &xo, &go, &mo, &io, &dgo,
                          &dbo))
        return NULL;
    return bn_backward(dyo, Py_None, xo, go, mo, io, dgo, dbo, 0, 0);
}

static PyObject *py_batchnorm2d_act_backward(PyObject *self, PyObject *args)
{
    PyObject *dyo, *yo, *xo, *go, *mo, *io, *dgo, *dbo;
    int residual_grad;
    if (!PyArg_ParseTuple(args, "OOOOOOOOp:batchnorm2d_act_backward", &dyo, &yo, &xo, &go, &mo,
                          &io, &dgo, &dbo, &residual_grad))
        return NULL;
    return bn_backward(dyo, yo, xo, go, mo, io, dgo, dbo, residual_grad, 1);
}

/* ---- synchronized batchnorm2d (a batch split over processes; see kernels/batchnorm.h) ---- */

static PyArrayObject *new_f64(npy_intp n)
{
    return (PyArrayObject *)PyArray_SimpleNew(1, &n, NPY_FLOAT64);
}

/* A float64 (C,) array of totals over the processes, finite. */
static PyArrayObject *totals_arg(PyObject *obj, const char *name, npy_intp C)
{
    PyArrayObject *a = dtkd_check_shape(obj, name, NPY_FLOAT64, 1, &C);
    if (!a) return NULL;
    const double *p = (const double *)PyArray_DATA(a);
    for (npy_intp c = 0; c < C; c++)
        if (!isfinite(p[c])) {
            dtkd_raise(PyExc_ValueError, "%s: contains NaN or Inf (at channel %ld)", name,
                       (long)c);
            return NULL;
        }
    return a;
}

static PyObject *py_batchnorm2d_sync_stats_forward(PyObject *self, PyObject *args)
{
    PyObject *xo, *co = Py_None;
    if (!PyArg_ParseTuple(args, "O|O:batchnorm2d_sync_stats_forward", &xo, &co)) return NULL;
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, 4);
    if (!x || nonempty(x, "x")) return NULL;
    const npy_intp *xs = PyArray_DIMS(x);
    npy_intp C = xs[1];
    float *center;
    if (optional_vector(co, "center", C, 0, &center)) return NULL;
    PyArrayObject *out = new_f64(C);
    if (!out) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_batchnorm2d_sync_stats_forward((double *)PyArray_DATA(out), F32(x), center,
                                             (long)xs[0], (long)C, (long)(xs[2] * xs[3]));
    DTKD_END_NOGIL
    if (st) {
        Py_DECREF(out);
        return raise_x_status(st, "batchnorm2d_sync_stats_forward");
    }
    return (PyObject *)out;
}

static PyObject *py_batchnorm2d_sync_forward(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "gamma", "beta", "running_mean", "running_var", "momentum",
                             "eps", "sum", "ssd", "count", "residual", "relu", NULL};
    PyObject *xo, *go, *bo, *rmo, *rvo, *so, *sso, *reso = Py_None;
    double momentum, eps;
    long M;
    int relu = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOddOOl|Op:batchnorm2d_sync_forward",
                                     kwlist, &xo, &go, &bo, &rmo, &rvo, &momentum, &eps, &so,
                                     &sso, &M, &reso, &relu))
        return NULL;
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, 4);
    if (!x || nonempty(x, "x")) return NULL;
    const npy_intp *xs = PyArray_DIMS(x);
    npy_intp C = xs[1];
    PyArrayObject *gamma = vector_arg(go, "gamma", C, 0);
    PyArrayObject *beta = gamma ? vector_arg(bo, "beta", C, 0) : NULL;
    PyArrayObject *sum = beta ? totals_arg(so, "sum", C) : NULL;
    PyArrayObject *ssd = sum ? totals_arg(sso, "ssd", C) : NULL;
    if (!ssd) return NULL;
    if ((rmo == Py_None) != (rvo == Py_None))
        return DTKD_VALUE_ERR("running_mean, running_var: pass both arrays or both None");
    float *rm = NULL, *rv = NULL;
    if (optional_vector(rmo, "running_mean", C, 1, &rm) ||
        optional_vector(rvo, "running_var", C, 1, &rv))
        return NULL;
    const float *residual = NULL;
    if (reso != Py_None) {
        PyArrayObject *r = finite_input(reso, "residual", 4, xs);
        if (!r) return NULL;
        residual = F32(r);
    }
    if (!(isfinite(momentum) && momentum >= 0 && momentum <= 1))
        return DTKD_VALUE_ERR("momentum: must be in [0, 1], got %g", momentum);
    if (finite_positive(eps, "eps")) return NULL;
    long HW = (long)(xs[2] * xs[3]);
    if (M < 2 || M < (long)xs[0] * HW)
        return DTKD_VALUE_ERR("count: the values per channel over all processes must be >= 2 "
                              "and >= this process's N*H*W = %ld, got %ld",
                              (long)xs[0] * HW, M);
    const double *ps = (const double *)PyArray_DATA(ssd);
    for (npy_intp c = 0; c < C; c++)
        if (ps[c] < 0) return DTKD_VALUE_ERR("ssd: must be >= 0, got %g at channel %ld", ps[c],
                                             (long)c);
    PyArrayObject *y = new_f32(4, xs), *mean = new_f32(1, &C), *invstd = new_f32(1, &C);
    if (!y || !mean || !invstd) goto fail;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_batchnorm2d_sync_forward(F32(y), F32(mean), F32(invstd), rm, rv, F32(x), F32(gamma),
                                       F32(beta), residual, relu, (float)momentum, (float)eps,
                                       (const double *)PyArray_DATA(sum), ps, M, (long)xs[0],
                                       (long)C, HW);
    DTKD_END_NOGIL
    if (st) {
        raise_batchnorm_status(st, "batchnorm2d_sync_forward");
        goto fail;
    }
    return Py_BuildValue("NNN", y, mean, invstd);
fail:
    Py_XDECREF(y);
    Py_XDECREF(mean);
    Py_XDECREF(invstd);
    return NULL;
}

static PyObject *py_batchnorm2d_sync_stats_backward(PyObject *self, PyObject *args)
{
    PyObject *go, *xo, *mo;
    if (!PyArg_ParseTuple(args, "OOO:batchnorm2d_sync_stats_backward", &go, &xo, &mo))
        return NULL;
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, 4);
    if (!x || nonempty(x, "x")) return NULL;
    const npy_intp *xs = PyArray_DIMS(x);
    npy_intp C = xs[1];
    PyArrayObject *g = finite_input(go, "g", 4, xs);
    PyArrayObject *mean = g ? vector_arg(mo, "save_mean", C, 0) : NULL;
    if (!mean) return NULL;
    PyArrayObject *sg = new_f64(C), *sd = new_f64(C);
    if (!sg || !sd) {
        Py_XDECREF(sg);
        Py_XDECREF(sd);
        return NULL;
    }
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_batchnorm2d_sync_stats_backward((double *)PyArray_DATA(sg),
                                              (double *)PyArray_DATA(sd), F32(g), F32(x),
                                              F32(mean), (long)xs[0], (long)C,
                                              (long)(xs[2] * xs[3]));
    DTKD_END_NOGIL
    if (st) {
        Py_DECREF(sg);
        Py_DECREF(sd);
        return dtkd_raise_status(st, "batchnorm2d_sync_stats_backward");
    }
    return Py_BuildValue("NN", sg, sd);
}

static PyObject *py_batchnorm2d_sync_backward(PyObject *self, PyObject *args)
{
    PyObject *go, *xo, *gmo, *mo, *io, *sgo, *sdo;
    long M;
    if (!PyArg_ParseTuple(args, "OOOOOOOl:batchnorm2d_sync_backward", &go, &xo, &gmo, &mo, &io,
                          &sgo, &sdo, &M))
        return NULL;
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, 4);
    if (!x || nonempty(x, "x")) return NULL;
    const npy_intp *xs = PyArray_DIMS(x);
    npy_intp C = xs[1];
    PyArrayObject *g = finite_input(go, "g", 4, xs);
    PyArrayObject *gamma = g ? vector_arg(gmo, "gamma", C, 0) : NULL;
    PyArrayObject *mean = gamma ? vector_arg(mo, "save_mean", C, 0) : NULL;
    PyArrayObject *invstd = mean ? vector_arg(io, "save_invstd", C, 0) : NULL;
    PyArrayObject *sg = invstd ? totals_arg(sgo, "sum_g", C) : NULL;
    PyArrayObject *sd = sg ? totals_arg(sdo, "sum_g_xmu", C) : NULL;
    if (!sd) return NULL;
    long local = (long)xs[0] * (long)(xs[2] * xs[3]);
    if (M < local)
        return DTKD_VALUE_ERR("count: the values per channel over all processes must be >= "
                              "this process's N*H*W = %ld, got %ld", local, M);
    PyArrayObject *dx = new_f32(4, xs);
    if (!dx) return NULL;
    DTKD_BEGIN_NOGIL
    dtkd_batchnorm2d_sync_backward(F32(dx), F32(g), F32(x), F32(gamma), F32(mean), F32(invstd),
                                   (const double *)PyArray_DATA(sg),
                                   (const double *)PyArray_DATA(sd), M, (long)xs[0], (long)C,
                                   (long)(xs[2] * xs[3]));
    DTKD_END_NOGIL
    return (PyObject *)dx;
}

/* ---- elementwise -------------------------------------------------------------------------- */

static PyObject *py_relu_forward(PyObject *self, PyObject *xo)
{
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, -1);
    if (!x || nonempty(x, "x")) return NULL;
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!y) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_relu_forward(F32(y), F32(x), (long)PyArray_SIZE(x));
    DTKD_END_NOGIL
    if (st) {
        Py_DECREF(y);
        return raise_x_status(st, "relu_forward");
    }
    return (PyObject *)y;
}

static PyObject *py_relu_backward(PyObject *self, PyObject *args)
{
    PyObject *dyo, *yo;
    if (!PyArg_ParseTuple(args, "OO:relu_backward", &dyo, &yo)) return NULL;
    PyArrayObject *y = dtkd_check_array(yo, "y", NPY_FLOAT32, -1);
    if (!y || nonempty(y, "y")) return NULL;
    PyArrayObject *dy = finite_input(dyo, "dy", PyArray_NDIM(y), PyArray_DIMS(y));
    if (!dy) return NULL;
    PyArrayObject *dx = new_f32(PyArray_NDIM(y), PyArray_DIMS(y));
    if (!dx) return NULL;
    DTKD_BEGIN_NOGIL
    dtkd_relu_backward(F32(dx), F32(dy), F32(y), (long)PyArray_SIZE(y));
    DTKD_END_NOGIL
    return (PyObject *)dx;
}

static PyObject *add_common(PyObject *args, const char *fmt, int fused_relu)
{
    PyObject *ao, *bo;
    if (!PyArg_ParseTuple(args, fmt, &ao, &bo)) return NULL;
    PyArrayObject *a = dtkd_check_array(ao, "a", NPY_FLOAT32, -1);
    if (!a || nonempty(a, "a")) return NULL;
    PyArrayObject *b = dtkd_check_shape(bo, "b", NPY_FLOAT32, PyArray_NDIM(a), PyArray_DIMS(a));
    if (!b) return NULL;
    PyArrayObject *y = new_f32(PyArray_NDIM(a), PyArray_DIMS(a));
    if (!y) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    long n = (long)PyArray_SIZE(a);
    st = fused_relu ? dtkd_add_relu_forward(F32(y), F32(a), F32(b), n)
                    : dtkd_add_forward(F32(y), F32(a), F32(b), n);
    DTKD_END_NOGIL
    if (st) {
        Py_DECREF(y);
        return DTKD_VALUE_ERR("a, b: contain NaN or Inf (or their sum overflows float32)");
    }
    return (PyObject *)y;
}

static PyObject *py_add_forward(PyObject *self, PyObject *args)
{
    return add_common(args, "OO:add_forward", 0);
}

static PyObject *py_add_relu_forward(PyObject *self, PyObject *args)
{
    return add_common(args, "OO:add_relu_forward", 1);
}

/* ---- pooling ------------------------------------------------------------------------------ */

/* Check the pool window against the plane (H, W) and fill OH, OW; messages name the argument. */
static int pool_geometry(long *OH, long *OW, long H, long W, long kernel, long stride, long pad)
{
    if (at_least(kernel, 1, "kernel") || at_least(stride, 1, "stride") || at_least(pad, 0, "pad"))
        return -1;
    if (pad > kernel / 2) {
        dtkd_raise(PyExc_ValueError, "pad: must be <= kernel/2 = %ld, got %ld", kernel / 2, pad);
        return -1;
    }
    if (H < 1 || W < 1 || dtkd_pool2d_out_size(OH, OW, H, W, kernel, stride, pad)) {
        dtkd_raise(PyExc_ValueError,
                     "kernel: %ld is larger than the padded input (%ldx%ld with pad=%ld)", kernel,
                     H + 2 * pad, W + 2 * pad, pad);
        return -1;
    }
    return 0;
}

/* x (N, C, H, W), non-empty, for a pool window that fits it: ydims = the output's shape. */
static PyArrayObject *pool_input(PyObject *xo, long kernel, long stride, long pad,
                                 npy_intp ydims[4])
{
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, 4);
    if (!x || nonempty(x, "x")) return NULL;
    const npy_intp *xs = PyArray_DIMS(x);
    long OH, OW;
    if (pool_geometry(&OH, &OW, xs[2], xs[3], kernel, stride, pad)) return NULL;
    ydims[0] = xs[0], ydims[1] = xs[1], ydims[2] = OH, ydims[3] = OW;
    return x;
}

static PyObject *py_maxpool2d_forward(PyObject *self, PyObject *args)
{
    PyObject *xo;
    long kernel, stride, pad;
    if (!PyArg_ParseTuple(args, "Olll:maxpool2d_forward", &xo, &kernel, &stride, &pad))
        return NULL;
    npy_intp ydims[4];
    PyArrayObject *x = pool_input(xo, kernel, stride, pad, ydims);
    if (!x) return NULL;
    const npy_intp *xs = PyArray_DIMS(x);
    PyArrayObject *y = new_f32(4, ydims);
    PyArrayObject *am = (PyArrayObject *)PyArray_SimpleNew(4, ydims, NPY_INT64);
    int st = DTKD_ERR_NOMEM;
    if (y && am) {
        DTKD_BEGIN_NOGIL
        st = dtkd_maxpool2d_forward(F32(y), (int64_t *)PyArray_DATA(am), F32(x),
                                    (long)(xs[0] * xs[1]), xs[2], xs[3], kernel, stride, pad);
        DTKD_END_NOGIL
    }
    if (st) {
        Py_XDECREF(y);
        Py_XDECREF(am);
        return PyErr_Occurred() ? NULL : raise_x_status(st, "maxpool2d_forward");
    }
    return Py_BuildValue("NN", y, am);
}

static PyObject *py_maxpool2d_backward(PyObject *self, PyObject *args)
{
    PyObject *dyo, *amo;
    long H, W;
    if (!PyArg_ParseTuple(args, "OOll:maxpool2d_backward", &dyo, &amo, &H, &W)) return NULL;
    PyArrayObject *dy = finite_input(dyo, "dy", 4, NULL);
    if (!dy || nonempty(dy, "dy")) return NULL;
    const npy_intp *ds = PyArray_DIMS(dy);
    PyArrayObject *am = dtkd_check_shape(amo, "argmax", NPY_INT64, 4, ds);
    if (!am) return NULL;
    if (at_least(H, 1, "H") || at_least(W, 1, "W")) return NULL;
    npy_intp xdims[4] = {ds[0], ds[1], H, W};
    PyArrayObject *dx = new_f32(4, xdims);
    if (!dx) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_maxpool2d_backward(F32(dx), F32(dy), (const int64_t *)PyArray_DATA(am),
                                 (long)(ds[0] * ds[1]), H, W, ds[2], ds[3]);
    DTKD_END_NOGIL
    if (st) {
        Py_DECREF(dx);
        return DTKD_VALUE_ERR("argmax: an index is outside [0, H*W) = [0, %ld)", H * W);
    }
    return (PyObject *)dx;
}

static PyObject *py_avgpool2d_forward(PyObject *self, PyObject *args)
{
    PyObject *xo;
    long kernel, stride, pad;
    if (!PyArg_ParseTuple(args, "Olll:avgpool2d_forward", &xo, &kernel, &stride, &pad))
        return NULL;
    npy_intp ydims[4];
    PyArrayObject *x = pool_input(xo, kernel, stride, pad, ydims);
    if (!x) return NULL;
    const npy_intp *xs = PyArray_DIMS(x);
    PyArrayObject *y = new_f32(4, ydims);
    if (!y) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_avgpool2d_forward(F32(y), F32(x), (long)(xs[0] * xs[1]), xs[2], xs[3], kernel,
                                stride, pad);
    DTKD_END_NOGIL
    if (st) {
        Py_DECREF(y);
        return raise_x_status(st, "avgpool2d_forward");
    }
    return (PyObject *)y;
}

static PyObject *py_avgpool2d_backward(PyObject *self, PyObject *args)
{
    PyObject *dyo;
    long H, W, kernel, stride, pad, OH, OW;
    if (!PyArg_ParseTuple(args, "Olllll:avgpool2d_backward", &dyo, &H, &W, &kernel, &stride,
                          &pad))
        return NULL;
    PyArrayObject *dy = finite_input(dyo, "dy", 4, NULL);
    if (!dy || nonempty(dy, "dy")) return NULL;
    if (at_least(H, 1, "H") || at_least(W, 1, "W")) return NULL;
    if (pool_geometry(&OH, &OW, H, W, kernel, stride, pad)) return NULL;
    const npy_intp *ds = PyArray_DIMS(dy);
    npy_intp want[4] = {ds[0], ds[1], OH, OW};
    if (!dtkd_check_shape(dyo, "dy", NPY_FLOAT32, 4, want)) return NULL;
    npy_intp xdims[4] = {ds[0], ds[1], H, W};
    PyArrayObject *dx = new_f32(4, xdims);
    if (!dx) return NULL;
    DTKD_BEGIN_NOGIL
    dtkd_avgpool2d_backward(F32(dx), F32(dy), (long)(ds[0] * ds[1]), H, W, kernel, stride, pad);
    DTKD_END_NOGIL
    return (PyObject *)dx;
}

static PyObject *py_global_avgpool_forward(PyObject *self, PyObject *xo)
{
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, 4);
    if (!x || nonempty(x, "x")) return NULL;
    const npy_intp *xs = PyArray_DIMS(x);
    PyArrayObject *y = new_f32(2, xs);
    if (!y) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_global_avgpool_forward(F32(y), F32(x), (long)(xs[0] * xs[1]), (long)(xs[2] * xs[3]));
    DTKD_END_NOGIL
    if (st) {
        Py_DECREF(y);
        return raise_x_status(st, "global_avgpool_forward");
    }
    return (PyObject *)y;
}

static PyObject *py_global_avgpool_backward(PyObject *self, PyObject *args)
{
    PyObject *dyo;
    long H, W;
    if (!PyArg_ParseTuple(args, "Oll:global_avgpool_backward", &dyo, &H, &W)) return NULL;
    PyArrayObject *dy = finite_input(dyo, "dy", 2, NULL);
    if (!dy || nonempty(dy, "dy")) return NULL;
    if (at_least(H, 1, "H") || at_least(W, 1, "W")) return NULL;
    const npy_intp *ds = PyArray_DIMS(dy);
    npy_intp xdims[4] = {ds[0], ds[1], H, W};
    PyArrayObject *dx = new_f32(4, xdims);
    if (!dx) return NULL;
    DTKD_BEGIN_NOGIL
    dtkd_global_avgpool_backward(F32(dx), F32(dy), (long)(ds[0] * ds[1]), H * W);
    DTKD_END_NOGIL
    return (PyObject *)dx;
}

/* ---- linear ------------------------------------------------------------------------------- */

/* x (N, IN) and w (OUT, IN): check and return IN/OUT/N. */
static int linear_dims(PyArrayObject *x, PyArrayObject *w, long *N, long *IN, long *OUT)
{
    if (nonempty(x, "x") || nonempty(w, "w")) return -1;
    const npy_intp *xs = PyArray_DIMS(x), *ws = PyArray_DIMS(w);
    if (ws[1] != xs[1]) {
        dtkd_raise(PyExc_ValueError,
                     "w: expected shape (out, %ld) to match x of shape (%ld, %ld), got (%ld, %ld)",
                     (long)xs[1], (long)xs[0], (long)xs[1], (long)ws[0], (long)ws[1]);
        return -1;
    }
    *N = xs[0];
    *IN = xs[1];
    *OUT = ws[0];
    return 0;
}

static PyObject *py_linear_forward(PyObject *self, PyObject *args)
{
    PyObject *xo, *wo, *bo;
    long N, IN, OUT;
    if (!PyArg_ParseTuple(args, "OOO:linear_forward", &xo, &wo, &bo)) return NULL;
    PyArrayObject *x = finite_input(xo, "x", 2, NULL);
    PyArrayObject *w = x ? finite_input(wo, "w", 2, NULL) : NULL;
    if (!w || linear_dims(x, w, &N, &IN, &OUT)) return NULL;
    float *b;
    if (optional_vector(bo, "b", OUT, 0, &b)) return NULL;
    npy_intp ydims[2] = {N, OUT};
    PyArrayObject *y = new_f32(2, ydims);
    if (!y) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_linear_forward(F32(y), F32(x), F32(w), b, N, IN, OUT);
    DTKD_END_NOGIL
    if (st) {
        Py_DECREF(y);
        return dtkd_raise_status(st, "linear_forward");
    }
    return (PyObject *)y;
}

static PyObject *py_linear_backward(PyObject *self, PyObject *args)
{
    PyObject *dyo, *xo, *wo, *dwo, *dbo;
    long N, IN, OUT;
    if (!PyArg_ParseTuple(args, "OOOOO:linear_backward", &dyo, &xo, &wo, &dwo, &dbo)) return NULL;
    PyArrayObject *x = dtkd_check_array(xo, "x", NPY_FLOAT32, 2);
    PyArrayObject *w = x ? dtkd_check_array(wo, "w", NPY_FLOAT32, 2) : NULL;
    if (!w || linear_dims(x, w, &N, &IN, &OUT)) return NULL;
    npy_intp ydims[2] = {N, OUT};
    PyArrayObject *dy = finite_input(dyo, "dy", 2, ydims);
    if (!dy) return NULL;
    PyArrayObject *dw = dtkd_check_output(dwo, "dw", NPY_FLOAT32, 2, PyArray_DIMS(w));
    if (!dw) return NULL;
    float *db;
    if (optional_vector(dbo, "db", OUT, 1, &db)) return NULL;
    PyArrayObject *dx = new_f32(2, PyArray_DIMS(x));
    if (!dx) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_linear_backward(F32(dx), F32(dw), db, F32(dy), F32(x), F32(w), N, IN, OUT);
    DTKD_END_NOGIL
    if (st) {
        Py_DECREF(dx);
        return dtkd_raise_status(st, "linear_backward");
    }
    return (PyObject *)dx;
}

PyMethodDef dtkd_nn_methods[] = {
    {"conv2d_forward", py_conv2d_forward, METH_VARARGS,
     "conv2d_forward(x, w, b, stride_h, stride_w, pad_h, pad_w, groups) -> y (N,O,OH,OW)."},
    {"conv2d_backward", py_conv2d_backward, METH_VARARGS,
     "conv2d_backward(dy, x, w, stride_h, stride_w, pad_h, pad_w, groups, dw, db, need_dx) -> "
     "dx or None; dw, db (may be None) accumulated."},
    {"batchnorm2d_forward_train", (PyCFunction)(void (*)(void))py_batchnorm2d_forward_train,
     METH_VARARGS | METH_KEYWORDS,
     "batchnorm2d_forward_train(x, gamma, beta, running_mean, running_var, momentum, eps, "
     "residual=None, relu=False) -> (y, save_mean, save_invstd); running stats updated in place "
     "(both may be None). y = relu?(bn(x) + residual) when residual/relu are given (one pass)."},
    {"batchnorm2d_act_backward", py_batchnorm2d_act_backward, METH_VARARGS,
     "batchnorm2d_act_backward(dy, y, x, gamma, save_mean, save_invstd, dgamma, dbeta, "
     "residual_grad) -> (dx, dresidual or None): backward of batchnorm2d_forward_train with "
     "relu (y its output; None: no ReLU) and a residual (residual_grad: also return its "
     "gradient); dgamma, dbeta accumulated."},
    {"batchnorm2d_sync_stats_forward", py_batchnorm2d_sync_stats_forward, METH_VARARGS,
     "batchnorm2d_sync_stats_forward(x, center=None) -> float64 (C,): per-channel sum of x, or "
     "of (x - center)^2; a process's part of synchronized BatchNorm statistics."},
    {"batchnorm2d_sync_forward", (PyCFunction)(void (*)(void))py_batchnorm2d_sync_forward,
     METH_VARARGS | METH_KEYWORDS,
     "batchnorm2d_sync_forward(x, gamma, beta, running_mean, running_var, momentum, eps, sum, "
     "ssd, count, residual=None, relu=False) -> (y, save_mean, save_invstd): BatchNorm with "
     "statistics from totals over all processes (count values per channel)."},
    {"batchnorm2d_sync_stats_backward", py_batchnorm2d_sync_stats_backward, METH_VARARGS,
     "batchnorm2d_sync_stats_backward(g, x, save_mean) -> (sum_g, sum_g_xmu) float64 (C,)."},
    {"batchnorm2d_sync_backward", py_batchnorm2d_sync_backward, METH_VARARGS,
     "batchnorm2d_sync_backward(g, x, gamma, save_mean, save_invstd, sum_g, sum_g_xmu, count) "
     "-> dx, from totals over all processes."},
    {"batchnorm2d_forward_eval", py_batchnorm2d_forward_eval, METH_VARARGS,
     "batchnorm2d_forward_eval(x, gamma, beta, running_mean, running_var, eps) -> y."},
    {"batchnorm2d_backward", py_batchnorm2d_backward, METH_VARARGS,
     "batchnorm2d_backward(dy, x, gamma, save_mean, save_invstd, dgamma, dbeta) -> dx; "
     "dgamma, dbeta accumulated."},
    {"relu_forward", py_relu_forward, METH_O, "relu_forward(x) -> y."},
    {"relu_backward", py_relu_backward, METH_VARARGS, "relu_backward(dy, y) -> dx."},
    {"add_forward", py_add_forward, METH_VARARGS, "add_forward(a, b) -> a + b."},
    {"add_relu_forward", py_add_relu_forward, METH_VARARGS,
     "add_relu_forward(a, b) -> max(a + b, 0); backward: relu_backward(dy, y)."},
    {"maxpool2d_forward", py_maxpool2d_forward, METH_VARARGS,
     "maxpool2d_forward(x, kernel, stride, pad) -> (y, argmax int64 index into each H*W plane)."},
    {"maxpool2d_backward", py_maxpool2d_backward, METH_VARARGS,
     "maxpool2d_backward(dy, argmax, H, W) -> dx."},
    {"avgpool2d_forward", py_avgpool2d_forward, METH_VARARGS,
     "avgpool2d_forward(x, kernel, stride, pad) -> y (count_include_pad=True)."},
    {"avgpool2d_backward", py_avgpool2d_backward, METH_VARARGS,
     "avgpool2d_backward(dy, H, W, kernel, stride, pad) -> dx."},
    {"global_avgpool_forward", py_global_avgpool_forward, METH_O,
     "global_avgpool_forward(x) -> y (N,C)."},
    {"global_avgpool_backward", py_global_avgpool_backward, METH_VARARGS,
     "global_avgpool_backward(dy, H, W) -> dx (N,C,H,W)."},
    {"linear_forward", py_linear_forward, METH_VARARGS,
     "linear_forward(x, w, b) -> y = x w^T + b (b may be None)."},
    {"linear_backward", py_linear_backward, METH_VARARGS,
     "linear_backward(dy, x, w, dw, db) -> dx; dw, db (db may be None) accumulated."},
    {NULL, NULL, 0, NULL},
};
