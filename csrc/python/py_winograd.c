/* Bindings for the Winograd 3x3 convolution (csrc/kernels/winograd.c): the forward, the input
 * gradient and the weight gradient. dtkd.nn uses them in eval (BN folded) and in training (see
 * dtkd/nn/conv.py for which weight gradient it takes). */
#include "boundary.h"

#include "kernels/conv.h"
#include "kernels/elementwise.h"
#include "kernels/reduce.h" /* DTKD_FLT_MAX_BITS */
#include "kernels/winograd.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* ---- float32 range of the Winograd transforms ---------------------------------------------
 * F(m x m, 3x3) multiplies values on their way through: the input transform B^T d B by up to
 * ||B^T||_inf^2, the weight transform G g G^T by ||G||_inf^2, the output transform A^T M A by
 * ||A^T||_inf^2, and the channel sum by the channel count (row sums of the matrices in
 * csrc/kernels/winograd.c: m = 2: B 2, G 1.5, A 3; m = 4: B 10, G 1, A 19). Each stage must stay
 * within float32: the transformed input alone (max|x| * B^2: x near 3.4e38 overflowed there
 * even with tiny weights, found by atheris), the transformed weights, and the whole product
 * max|x| * max|w| * B^2 G^2 A^2 * channels (+ max|b| + max|residual|). Beyond it (inputs near
 * 1e33 / (C |w|)) Winograd overflowed to Inf where the direct convolution stays finite, so
 * those calls run the direct convolution instead (the probe of issue 13: 1e37 inputs). */
static double input_growth(int m) { return m == 2 ? 4.0 : 100.0; }
static double weight_growth(int m) { return m == 2 ? 2.25 : 1.0; }
static double winograd_growth(int m) { return input_growth(m) * weight_growth(m) * (m == 2 ? 9.0 : 361.0); }

/* The finiteness check of a float32 input and its max |value| in one pass: ValueError naming
 * the argument for NaN/Inf, else *max_abs. */
static int finite_max_abs(PyArrayObject *arr, const char *name, double *max_abs)
{
    const float *p = (const float *)PyArray_DATA(arr);
    const npy_intp n = PyArray_SIZE(arr);
    uint32_t bits;
    Py_BEGIN_ALLOW_THREADS
    bits = dtkd_max_abs_bits_parallel(p, (long)n);
    Py_END_ALLOW_THREADS
    if (bits > DTKD_FLT_MAX_BITS) {
        dtkd_raise(PyExc_ValueError, "%s: contains NaN or Inf", name);
        return -1;
    }
    float m;
    memcpy(&m, &bits, sizeof m);
    *max_abs = m;
    return 0;
}

static int in_winograd_range(double max_in, double max_w, long channels, int m, double added)
{
    return max_in * input_growth(m) <= FLT_MAX && max_w * weight_growth(m) <= FLT_MAX &&
           max_in * max_w * winograd_growth(m) * (double)channels + added <= FLT_MAX;
}

/* The output check of the direct fallback: finite inputs whose true result is beyond float32. */
static PyObject *raise_output_range(const char *context)
{
    return DTKD_VALUE_ERR("%s: the output exceeds float32's range (|y| <= 3.4e38) for finite "
                          "inputs: x, w (or dy) and b are too large together", context);
}

static int check_tile(int m)
{
    if (m != 2 && m != 4) {
        dtkd_raise(PyExc_ValueError, "m: output tile size must be 2 or 4, got %d", m);
        return -1;
    }
    return 0;
}

/* w (O, C, 3, 3) float32 -> u (a*a, C, O), a = m + 2; for backward, (a*a, O, C) of the
 * rotated kernel. */
static PyArrayObject *transform_weights(PyObject *w_obj, int m, int backward, double *max_w,
                                        PyArrayObject **w_out)
{
    const npy_intp w_shape[4] = {-1, -1, 3, 3};
    PyArrayObject *w = dtkd_check_shape(w_obj, "w", NPY_FLOAT32, 4, w_shape);
    if (!w) return NULL;
    const npy_intp O = PyArray_DIM(w, 0), C = PyArray_DIM(w, 1);
    if (O == 0 || C == 0) {
        dtkd_raise(PyExc_ValueError, "w: expected a non-empty (O, C, 3, 3) array, got "
                     "(%ld, %ld, 3, 3)", (long)O, (long)C);
        return NULL;
    }
    double mw;
    if (finite_max_abs(w, "w", &mw)) return NULL;
    if (max_w) *max_w = mw;
    if (w_out) *w_out = w;
    const npy_intp u_shape[3] = {(npy_intp)(m + 2) * (m + 2), backward ? O : C, backward ? C : O};
    PyArrayObject *u = (PyArrayObject *)PyArray_SimpleNew(3, u_shape, NPY_FLOAT32);
    if (!u) return NULL;
    int status;
    DTKD_BEGIN_NOGIL
    status = (backward ? winograd_transform_weights_backward : winograd_transform_weights)(
        (float *)PyArray_DATA(u), (const float *)PyArray_DATA(w), (long)O, (long)C, m);
    DTKD_END_NOGIL
    if (status != DTKD_OK) {
        Py_DECREF(u);
        dtkd_raise_status(status, "winograd_transform_weights");
        return NULL;
    }
    return u;
}

static int overlap(PyArrayObject *a, PyArrayObject *b)
{
    const char *a0 = PyArray_BYTES(a), *b0 = PyArray_BYTES(b);
    return a0 < b0 + PyArray_NBYTES(b) && b0 < a0 + PyArray_NBYTES(a);
}

/* y = relu?(conv3x3(x, u) + b + residual) with u from transform_weights; u's first dim
 * gives m. y is out if given (reused buffers: no page faults of a fresh array per call). */
/* y = relu?(conv3x3(x, w) + b + residual) by the direct convolution (the fallback for values
 * beyond the Winograd range); y may be residual itself. */
static int direct_forward(float *y, const float *x, const float *w, const float *bias,
                          const float *residual, int relu, long N, long C, long H, long W, long O)
{
    struct dtkd_conv2d_dims d = {N, C, H, W, O, 3, 3, 1, 1, 1, 1, 1, 0, 0};
    int st = dtkd_conv2d_dims_init(&d);
    if (st) return st;
    const long n = N * O * H * W;
    float *tmp = NULL, *dst = y;
    if (residual == y) { /* the convolution must not overwrite the residual before it is added */
        tmp = dtkd_malloc_array((size_t)n, sizeof *tmp);
        if (!tmp) return DTKD_ERR_NOMEM;
        dst = tmp;
    }
    const long len = dtkd_conv2d_forward_workspace(&d, dtkd_get_num_threads());
    float *ws = len ? dtkd_workspace_acquire((size_t)len) : NULL;
    st = len && !ws ? DTKD_ERR_NOMEM : dtkd_conv2d_forward(dst, ws, len, x, w, bias, &d);
    dtkd_workspace_release(ws);
    if (!st && residual) st = (relu ? dtkd_add_relu_forward : dtkd_add_forward)(y, dst, residual, n);
    else if (!st && relu) st = dtkd_relu_forward(y, dst, n);
    dtkd_free(tmp);
    if (!st && !dtkd_all_finite(y, n)) st = DTKD_ERR_RANGE;
    return st;
}

static PyObject *forward_transformed(PyObject *x_obj, PyArrayObject *u, PyObject *b_obj,
                                     PyObject *residual_obj, int relu, PyObject *out_obj,
                                     PyArrayObject *w, double max_w)
{
    const npy_intp a2 = PyArray_DIM(u, 0);
    if (a2 != 16 && a2 != 36)
        return DTKD_VALUE_ERR("u: expected shape (16, C, O) for m=2 or (36, C, O) for m=4, got "
                              "first dimension %ld", (long)a2);
    const int m = a2 == 16 ? 2 : 4;
    const npy_intp C = PyArray_DIM(u, 1), O = PyArray_DIM(u, 2);
    if (C == 0 || O == 0) return DTKD_VALUE_ERR("u: empty C or O dimension");
    const npy_intp x_shape[4] = {-1, C, -1, -1};
    PyArrayObject *x = dtkd_check_shape(x_obj, "x", NPY_FLOAT32, 4, x_shape);
    if (!x) return NULL;
    const npy_intp *d = PyArray_DIMS(x);
    const npy_intp N = d[0], H = d[2], W = d[3];
    if (N == 0 || H == 0 || W == 0)
        return DTKD_VALUE_ERR("x: expected a non-empty (N, C, H, W) array, got (%ld, %ld, %ld, "
                              "%ld)", (long)N, (long)C, (long)H, (long)W);
    double max_x, max_b = 0.0, max_r = 0.0;
    if (finite_max_abs(x, "x", &max_x)) return NULL;
    const float *bias = NULL;
    if (b_obj != Py_None) {
        const npy_intp b_shape[1] = {O};
        PyArrayObject *b = dtkd_check_shape(b_obj, "b", NPY_FLOAT32, 1, b_shape);
        if (!b || finite_max_abs(b, "b", &max_b)) return NULL;
        bias = (const float *)PyArray_DATA(b);
    }
    const npy_intp y_shape[4] = {N, O, H, W};
    PyArrayObject *r = NULL, *y = NULL;
    if (residual_obj != Py_None) {
        r = dtkd_check_shape(residual_obj, "residual", NPY_FLOAT32, 4, y_shape);
        if (!r || finite_max_abs(r, "residual", &max_r)) return NULL;
    }
    /* beyond the Winograd range: the direct convolution when the weights are at hand, else
     * (u given pre-transformed) an error naming x. max|u| is read only for such inputs. */
    int winograd = 1;
    if (!in_winograd_range(max_x, w ? max_w : 1.0, (long)C, m, max_b + max_r)) {
        if (w) {
            winograd = 0;
        } else {
            double max_u;
            if (finite_max_abs(u, "u", &max_u)) return NULL;
            const double g2 = weight_growth(m); /* u already holds G g G^T */
            if (!in_winograd_range(max_x, max_u / g2, (long)C, m, max_b + max_r))
                return DTKD_VALUE_ERR(
                    "x: max |x| = %g is beyond float32's range for the Winograd transform of "
                    "these weights (max |x| * max |u| * %g * C must stay below 3.4e38); use "
                    "dtkd.nn.set_conv_algorithm(\"direct\") for such inputs", max_x,
                    winograd_growth(m) / g2);
        }
    }
    if (out_obj != Py_None) {
        y = dtkd_check_output(out_obj, "out", NPY_FLOAT32, 4, y_shape);
        if (!y) return NULL;
        /* x is read while y is written; residual is read element by element just before
         * the same element of y is written, so it may be out itself but not overlap it
         * otherwise. */
        if (overlap(y, x)) return DTKD_VALUE_ERR("out: must not share memory with x");
        if (r && overlap(y, r) && PyArray_DATA(r) != PyArray_DATA(y))
            return DTKD_VALUE_ERR("out: must be residual itself or not overlap it");
        Py_INCREF(y);
    } else {
        y = (PyArrayObject *)PyArray_SimpleNew(4, y_shape, NPY_FLOAT32);
        if (!y) return NULL;
    }
    const float *residual = r ? (const float *)PyArray_DATA(r) : NULL;
    if (!winograd) {
        int st;
        DTKD_BEGIN_NOGIL
        st = direct_forward((float *)PyArray_DATA(y), (const float *)PyArray_DATA(x),
                            (const float *)PyArray_DATA(w), bias, residual, relu, (long)N,
                            (long)C, (long)H, (long)W, (long)O);
        DTKD_END_NOGIL
        if (st) {
            Py_DECREF(y);
            return st == DTKD_ERR_RANGE ? raise_output_range("winograd_conv3x3_forward")
                                        : dtkd_raise_status(st, "winograd_conv3x3_forward");
        }
        return (PyObject *)y;
    }

    const size_t ws_floats = winograd_workspace_floats((long)N, (long)C, (long)H, (long)W,
                                                       (long)O, m, dtkd_get_num_threads());
    float *ws = dtkd_workspace_acquire(ws_floats);
    if (!ws) {
        Py_DECREF(y);
        return dtkd_raise_status(DTKD_ERR_NOMEM, "winograd_conv3x3_forward");
    }
    int status;
    DTKD_BEGIN_NOGIL
    status = winograd_conv3x3_forward((float *)PyArray_DATA(y), (const float *)PyArray_DATA(x),
                                      (const float *)PyArray_DATA(u), bias, residual, (long)N,
                                      (long)C, (long)H, (long)W, (long)O, m, relu, ws,
                                      ws_floats);
    DTKD_END_NOGIL
    dtkd_workspace_release(ws);
    if (status != DTKD_OK) {
        Py_DECREF(y);
        return dtkd_raise_status(status, "winograd_conv3x3_forward");
    }
    return (PyObject *)y;
}

static PyObject *py_winograd_transform_weights(PyObject *self, PyObject *args)
{
    PyObject *w_obj;
    int m = 4;
    if (!PyArg_ParseTuple(args, "O|i:winograd_transform_weights", &w_obj, &m)) return NULL;
    if (check_tile(m)) return NULL;
    return (PyObject *)transform_weights(w_obj, m, 0, NULL, NULL);
}

static PyObject *py_winograd_transform_weights_backward(PyObject *self, PyObject *args)
{
    PyObject *w_obj;
    int m = 4;
    if (!PyArg_ParseTuple(args, "O|i:winograd_transform_weights_backward", &w_obj, &m))
        return NULL;
    if (check_tile(m)) return NULL;
    return (PyObject *)transform_weights(w_obj, m, 1, NULL, NULL);
}

/* dx (N, C, H, W) for y = conv3x3(x, w) and dy (N, O, H, W). */
static PyObject *py_winograd_conv3x3_backward_input(PyObject *self, PyObject *args)
{
    PyObject *dy_obj, *w_obj;
    int m = 4;
    if (!PyArg_ParseTuple(args, "OO|i:winograd_conv3x3_backward_input", &dy_obj, &w_obj, &m))
        return NULL;
    if (check_tile(m)) return NULL;
    double max_w;
    PyArrayObject *w;
    PyArrayObject *u = transform_weights(w_obj, m, 1, &max_w, &w);
    if (!u) return NULL;
    const npy_intp O = PyArray_DIM(u, 1), C = PyArray_DIM(u, 2);
    const npy_intp dy_shape[4] = {-1, O, -1, -1};
    PyArrayObject *dy = dtkd_check_shape(dy_obj, "dy", NPY_FLOAT32, 4, dy_shape);
    if (!dy) goto fail;
    const npy_intp N = PyArray_DIM(dy, 0), H = PyArray_DIM(dy, 2), W = PyArray_DIM(dy, 3);
    if (N == 0 || H == 0 || W == 0) {
        dtkd_raise(PyExc_ValueError, "dy: expected a non-empty (N, O, H, W) array, got (%ld, "
                     "%ld, %ld, %ld)", (long)N, (long)O, (long)H, (long)W);
        goto fail;
    }
    double max_dy;
    if (finite_max_abs(dy, "dy", &max_dy)) goto fail;
    if (!in_winograd_range(max_dy, max_w, (long)O, m, 0.0)) {
        /* beyond the Winograd range: dx by the direct convolution of dy with the flipped,
         * transposed kernel (the input gradient of a 3x3 stride-1 pad-1 convolution) */
        Py_DECREF(u);
        const npy_intp dx_shape[4] = {N, C, H, W};
        PyArrayObject *dx = (PyArrayObject *)PyArray_SimpleNew(4, dx_shape, NPY_FLOAT32);
        if (!dx) return NULL;
        int st = DTKD_OK;
        DTKD_BEGIN_NOGIL
        float *wt = dtkd_malloc_array((size_t)(C * O * 9), sizeof *wt);
        if (!wt) {
            st = DTKD_ERR_NOMEM;
        } else {
            const float *wp = (const float *)PyArray_DATA(w);
            for (long o = 0; o < (long)O; o++)
                for (long c = 0; c < (long)C; c++)
                    for (int k = 0; k < 9; k++) wt[(c * O + o) * 9 + 8 - k] = wp[(o * C + c) * 9 + k];
            st = direct_forward((float *)PyArray_DATA(dx), (const float *)PyArray_DATA(dy), wt,
                                NULL, NULL, 0, (long)N, (long)O, (long)H, (long)W, (long)C);
            dtkd_free(wt);
        }
        DTKD_END_NOGIL
        if (st) {
            Py_DECREF(dx);
            return st == DTKD_ERR_RANGE ? raise_output_range("winograd_conv3x3_backward_input")
                                        : dtkd_raise_status(st, "winograd_conv3x3_backward_input");
        }
        return (PyObject *)dx;
    }
    const size_t ws_floats = winograd_workspace_floats((long)N, (long)O, (long)H, (long)W,
                                                       (long)C, m, dtkd_get_num_threads());
    float *ws = dtkd_workspace_acquire(ws_floats);
    if (!ws) {
        dtkd_raise_status(DTKD_ERR_NOMEM, "winograd_conv3x3_backward_input");
        goto fail;
    }
    const npy_intp dx_shape[4] = {N, C, H, W};
    PyArrayObject *dx = (PyArrayObject *)PyArray_SimpleNew(4, dx_shape, NPY_FLOAT32);
    if (!dx) {
        dtkd_workspace_release(ws);
        goto fail;
    }
    int status;
    DTKD_BEGIN_NOGIL
    status = winograd_conv3x3_backward_input((float *)PyArray_DATA(dx),
                                             (const float *)PyArray_DATA(dy),
                                             (const float *)PyArray_DATA(u), (long)N, (long)C,
                                             (long)H, (long)W, (long)O, m, ws, ws_floats);
    DTKD_END_NOGIL
    dtkd_workspace_release(ws);
    Py_DECREF(u);
    if (status != DTKD_OK) {
        Py_DECREF(dx);
        return dtkd_raise_status(status, "winograd_conv3x3_backward_input");
    }
    return (PyObject *)dx;
fail:
    Py_DECREF(u);
    return NULL;
}

static PyObject *py_winograd_conv3x3_forward(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "w", "b", "m", "residual", "relu", "out", NULL};
    PyObject *x_obj, *w_obj, *b_obj = Py_None, *residual_obj = Py_None, *out_obj = Py_None;
    int m = 4, relu = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|OiOpO:winograd_conv3x3_forward", kwlist,
                                     &x_obj, &w_obj, &b_obj, &m, &residual_obj, &relu, &out_obj))
        return NULL;
    if (check_tile(m)) return NULL;
    double max_w;
    PyArrayObject *w;
    PyArrayObject *u = transform_weights(w_obj, m, 0, &max_w, &w);
    if (!u) return NULL;
    PyObject *y = forward_transformed(x_obj, u, b_obj, residual_obj, relu, out_obj, w, max_w);
    Py_DECREF(u);
    return y;
}

static PyObject *py_winograd_conv3x3_forward_transformed(PyObject *self, PyObject *args,
                                                         PyObject *kwargs)
{
    static char *kwlist[] = {"x", "u", "b", "residual", "relu", "out", NULL};
    PyObject *x_obj, *u_obj, *b_obj = Py_None, *residual_obj = Py_None, *out_obj = Py_None;
    int relu = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs,
                                     "OO|OOpO:winograd_conv3x3_forward_transformed", kwlist,
                                     &x_obj, &u_obj, &b_obj, &residual_obj, &relu, &out_obj))
        return NULL;
    PyArrayObject *u = dtkd_check_array(u_obj, "u", NPY_FLOAT32, 3);
    if (!u) return NULL;
    return forward_transformed(x_obj, u, b_obj, residual_obj, relu, out_obj, NULL, 0.0);
}

/* Growth of the gradient transform A dY A^T (row sums of A, the transpose of A^T: m = 2: 2,
 * m = 4: 15), squared. */
static double winograd_gradient_growth(int m) { return m == 2 ? 4.0 : 225.0; }

/* dw (O, C, 3, 3) += weight gradient of y = conv3x3(x, w) (stride 1, pad 1) for dy: by
 * Winograd F(m x m, 3x3) (m 2 or 4), or the exact sum (m 0; also where the transformed values
 * could leave float32's range). The kernels work on a copy of dw, so dw is left as it was if
 * the sum overflows. `name` is the binding's, for the messages. */
static PyObject *weight_gradient_3x3(PyObject *dy_obj, PyObject *x_obj, PyObject *dw_obj, int m,
                                     const char *name)
{
    PyArrayObject *x = dtkd_check_array(x_obj, "x", NPY_FLOAT32, 4);
    if (!x) return NULL;
    const npy_intp N = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1), H = PyArray_DIM(x, 2),
                   W = PyArray_DIM(x, 3);
    if (N == 0 || C == 0 || H == 0 || W == 0)
        return DTKD_VALUE_ERR("x: expected a non-empty (N, C, H, W) array, got (%ld, %ld, %ld, "
                              "%ld)", (long)N, (long)C, (long)H, (long)W);
    const npy_intp dy_shape[4] = {N, -1, H, W};
    PyArrayObject *dy = dtkd_check_shape(dy_obj, "dy", NPY_FLOAT32, 4, dy_shape);
    if (!dy) return NULL;
    const npy_intp O = PyArray_DIM(dy, 1);
    if (O == 0) return DTKD_VALUE_ERR("dy: expected a non-empty channel dimension");
    double max_x, max_dy;
    if (finite_max_abs(x, "x", &max_x) || finite_max_abs(dy, "dy", &max_dy)) return NULL;
    const npy_intp dw_shape[4] = {O, C, 3, 3};
    PyArrayObject *dw = dtkd_check_output(dw_obj, "dw", NPY_FLOAT32, 4, dw_shape);
    if (!dw || dtkd_check_finite(dw, "dw")) return NULL; /* else a range error would blame x, dy */
    /* V = B^T d B, P = A dY A^T, their products summed over the tiles; G^T Q G is in double */
    const long tiles = m ? (long)N * (((long)H + m - 1) / m) * (((long)W + m - 1) / m) : 0;
    const int winograd = m && max_x * input_growth(m) <= FLT_MAX &&
                         max_dy * winograd_gradient_growth(m) <= FLT_MAX &&
                         max_x * input_growth(m) * max_dy * winograd_gradient_growth(m) *
                                 (double)tiles <= FLT_MAX;
    const long n_dw = (long)(O * C * 9);
    int st;
    DTKD_BEGIN_NOGIL
    const size_t len = winograd
        ? winograd_backward_weight_workspace_floats((long)N, (long)C, (long)H, (long)W, (long)O,
                                                    m, dtkd_get_num_threads())
        : (size_t)dtkd_conv3x3_backward_weight_workspace(N, C, H, W, O);
    float *ws = dtkd_workspace_acquire(len + (size_t)n_dw);
    if (!ws) {
        st = DTKD_ERR_NOMEM;
    } else {
        /* the kernels accumulate into a copy of dw (the same additions, in the same order, as
         * into dw itself), which replaces dw only if every value stayed finite */
        float *copy = ws + len;
        memcpy(copy, F32(dw), (size_t)n_dw * sizeof *copy);
        st = winograd ? winograd_conv3x3_backward_weight(copy, F32(x), F32(dy), (long)N, (long)C,
                                                         (long)H, (long)W, (long)O, m, ws, len)
                      : dtkd_conv3x3_backward_weight(copy, ws, (long)len, F32(dy), F32(x), N, C,
                                                     H, W, O);
        if (!st && !dtkd_all_finite(copy, n_dw)) st = DTKD_ERR_RANGE;
        if (!st) memcpy(F32(dw), copy, (size_t)n_dw * sizeof *copy);
    }
    dtkd_workspace_release(ws);
    DTKD_END_NOGIL
    if (st == DTKD_ERR_RANGE)
        return DTKD_VALUE_ERR("%s: the weight gradient exceeds float32's range (|dw| <= 3.4e38) "
                              "for finite inputs: dy and x are too large together (dw is "
                              "unchanged)", name);
    if (st) return dtkd_raise_status(st, name);
    Py_RETURN_NONE;
}

static PyObject *py_winograd_conv3x3_backward_weight(PyObject *self, PyObject *args)
{
    PyObject *dy_obj, *x_obj, *dw_obj;
    int m = 4;
    if (!PyArg_ParseTuple(args, "OOO|i:winograd_conv3x3_backward_weight", &dy_obj, &x_obj,
                          &dw_obj, &m))
        return NULL;
    if (check_tile(m)) return NULL;
    return weight_gradient_3x3(dy_obj, x_obj, dw_obj, m, "winograd_conv3x3_backward_weight");
}

static PyObject *py_conv3x3_backward_weight(PyObject *self, PyObject *args)
{
    PyObject *dy_obj, *x_obj, *dw_obj;
    if (!PyArg_ParseTuple(args, "OOO:conv3x3_backward_weight", &dy_obj, &x_obj, &dw_obj))
        return NULL;
    return weight_gradient_3x3(dy_obj, x_obj, dw_obj, 0, "conv3x3_backward_weight");
}

PyMethodDef dtkd_winograd_methods[] = {
    {"winograd_transform_weights", py_winograd_transform_weights, METH_VARARGS,
     "winograd_transform_weights(w, m=4) -> u float32 (a*a, C, O), a = m + 2: Winograd "
     "F(m x m, 3x3) transform G g G^T of the (O, C, 3, 3) weights w, computed once per weight "
     "version. m is 2 or 4."},
    {"winograd_conv3x3_forward", (PyCFunction)(void (*)(void))py_winograd_conv3x3_forward,
     METH_VARARGS | METH_KEYWORDS,
     "winograd_conv3x3_forward(x, w, b=None, m=4, residual=None, relu=False, out=None) -> y\n"
     "(N, O, H, W): 3x3 convolution, stride 1, pad 1, of x (N, C, H, W) with w (O, C, 3, 3), "
     "plus bias b (O,) and residual (N, O, H, W) if given, then ReLU if relu; by Winograd "
     "F(m x m, 3x3). out: optional float32 (N, O, H, W) array to write y into (may be residual "
     "itself, must not overlap x)."},
    {"winograd_conv3x3_forward_transformed",
     (PyCFunction)(void (*)(void))py_winograd_conv3x3_forward_transformed,
     METH_VARARGS | METH_KEYWORDS,
     "winograd_conv3x3_forward_transformed(x, u, b=None, residual=None, relu=False, out=None)"
     " -> y:\n"
     "as winograd_conv3x3_forward with u = winograd_transform_weights(w, m) precomputed (m read "
     "from u.shape[0]: 16 -> 2, 36 -> 4). u is not re-checked for NaN/Inf on every call (w was "
     "checked when it was transformed; the scan would cost a few % of the call)."},
    {"winograd_transform_weights_backward", py_winograd_transform_weights_backward, METH_VARARGS,
     "winograd_transform_weights_backward(w, m=4) -> u float32 (a*a, O, C): the transform of "
     "w rotated by 180 degrees with O and C swapped, for the input gradient."},
    {"winograd_conv3x3_backward_input", py_winograd_conv3x3_backward_input, METH_VARARGS,
     "winograd_conv3x3_backward_input(dy, w, m=4) -> dx (N, C, H, W): gradient of sum(y * dy) "
     "with respect to x for y = conv3x3(x, w) (stride 1, pad 1), by Winograd F(m x m, 3x3). "
     "The weight gradient is winograd_conv3x3_backward_weight or conv3x3_backward_weight "
     "(exact)."},
    {"conv3x3_backward_weight", py_conv3x3_backward_weight, METH_VARARGS,
     "conv3x3_backward_weight(dy, x, dw) -> None: dw (O, C, 3, 3) += the weight gradient of the "
     "3x3 stride-1 pad-1 ungrouped convolution of x (N, C, H, W) given dy (N, O, H, W), an exact "
     "sum of products: from padded rows without im2col (thin layers on AVX-512/AVX2), else by "
     "im2col + SGEMM. A gradient beyond float32 raises ValueError and leaves dw unchanged."},
    {"winograd_conv3x3_backward_weight", py_winograd_conv3x3_backward_weight, METH_VARARGS,
     "winograd_conv3x3_backward_weight(dy, x, dw, m=4) -> None: dw (O, C, 3, 3) += gradient of "
     "sum(y * dy) with respect to w for y = conv3x3(x, w) (stride 1, pad 1), by Winograd "
     "F(m x m, 3x3): G^T [(A dY A^T) .* (B^T d B)] G summed over tiles. 4x (m=4) / 2.25x (m=2) "
     "fewer products than conv3x3_backward_weight, with the transforms' rounding; where the "
     "transformed values could exceed float32 it runs the exact sum instead."},
    {NULL, NULL, 0, NULL},
};
