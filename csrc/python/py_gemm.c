/* Bindings for the gemm kernels (csrc/kernels/gemm.h): sgemm and the FMA peak probe. */
#include "boundary.h"
#include "kernels/gemm.h"
#include "kernels/reduce.h"

#include <math.h>

/* A float32 matrix whose rows may be strided (a column slice of a larger array, so lda may
 * exceed the column count) but whose elements within a row are contiguous. Returns the array
 * and its row stride in elements through *ld, or NULL with an exception naming `name`. */
static PyArrayObject *check_matrix(PyObject *obj, const char *name, long *ld)
{
    if (!PyArray_Check(obj))
        return (PyArrayObject *)DTKD_TYPE_ERR("%s: expected a numpy.ndarray, got %s", name,
                                              Py_TYPE(obj)->tp_name);
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32)
        return (PyArrayObject *)DTKD_TYPE_ERR("%s: expected dtype float32, got %s", name,
                                              PyArray_DESCR(a)->typeobj->tp_name);
    if (dtkd_check_byte_order(a, name) < 0) return NULL;
    if (PyArray_NDIM(a) != 2)
        return (PyArrayObject *)DTKD_VALUE_ERR("%s: expected a 2-D array, got %d-D", name,
                                               PyArray_NDIM(a));
    npy_intp rows = PyArray_DIM(a, 0), cols = PyArray_DIM(a, 1);
    if (rows == 0 || cols == 0)
        return (PyArrayObject *)DTKD_VALUE_ERR("%s: expected a non-empty matrix, got shape "
                                               "(%ld, %ld)", name, (long)rows, (long)cols);
    npy_intp s0 = PyArray_STRIDE(a, 0), s1 = PyArray_STRIDE(a, 1);
    int elements_contiguous = cols == 1 || s1 == (npy_intp)sizeof(float);
    int rows_ok = rows == 1 || (s0 % (npy_intp)sizeof(float) == 0 &&
                                s0 >= cols * (npy_intp)sizeof(float));
    if (!elements_contiguous || !rows_ok || !PyArray_ISALIGNED(a))
        return (PyArrayObject *)DTKD_VALUE_ERR(
            "%s: expected rows of contiguous float32 with a positive row stride of at least "
            "the row length (a C-contiguous array or a column slice of one), got strides "
            "(%ld, %ld) bytes; use numpy.ascontiguousarray", name, (long)s0, (long)s1);
    *ld = rows == 1 ? (long)cols : (long)(s0 / (npy_intp)sizeof(float));
    return a;
}

/* Raise ValueError naming `name` if the strided matrix holds NaN or Inf; returns -1 if raised.
 * (boundary.h's dtkd_check_finite assumes a contiguous array.) */
static int check_finite_matrix(PyArrayObject *a, long ld, const char *name)
{
    long rows = PyArray_DIM(a, 0), cols = PyArray_DIM(a, 1);
    const float *p = (const float *)PyArray_DATA(a);
    int bad = 0;
    DTKD_BEGIN_NOGIL
    /* reduce.h's bit test (NaN and Inf: exponent bits all ones), which vectorizes where
     * isfinite in a loop did not, keeping this check small beside the GEMM it guards */
    for (long i = 0; i < rows; i++) bad |= dtkd_any_nonfinite(p + i * ld, cols);
    DTKD_END_NOGIL
    if (bad) {
        dtkd_raise(PyExc_ValueError, "%s: contains NaN or Inf", name);
        return -1;
    }
    return 0;
}

/* [first, last) byte range a strided matrix touches. */
static void matrix_span(PyArrayObject *a, long ld, const char **lo, const char **hi)
{
    *lo = PyArray_BYTES(a);
    *hi = *lo + ((PyArray_DIM(a, 0) - 1) * ld + PyArray_DIM(a, 1)) * (long)sizeof(float);
}

static int spans_overlap(PyArrayObject *x, long ldx, PyArrayObject *y, long ldy)
{
    const char *xlo, *xhi, *ylo, *yhi;
    matrix_span(x, ldx, &xlo, &xhi);
    matrix_span(y, ldy, &ylo, &yhi);
    return xlo < yhi && ylo < xhi;
}

static PyObject *py_sgemm(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"a", "b", "trans_a", "trans_b", "alpha", "beta", "c", NULL};
    PyObject *a_obj, *b_obj, *c_obj = Py_None;
    int trans_a = 0, trans_b = 0;
    double alpha = 1.0, beta = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|ppddO:sgemm", kwlist, &a_obj, &b_obj,
                                     &trans_a, &trans_b, &alpha, &beta, &c_obj))
        return NULL;
    long lda, ldb, ldc;
    PyArrayObject *a = check_matrix(a_obj, "sgemm: a", &lda);
    if (!a) return NULL;
    PyArrayObject *b = check_matrix(b_obj, "sgemm: b", &ldb);
    if (!b) return NULL;
    if (!isfinite(alpha) || !isfinite(beta))
        return DTKD_VALUE_ERR("sgemm: alpha and beta must be finite, got alpha=%g, beta=%g",
                              alpha, beta);

    long M = PyArray_DIM(a, trans_a ? 1 : 0), K = PyArray_DIM(a, trans_a ? 0 : 1);
    long Kb = PyArray_DIM(b, trans_b ? 1 : 0), N = PyArray_DIM(b, trans_b ? 0 : 1);
    if (Kb != K)
        return DTKD_VALUE_ERR("sgemm: b: expected %s %ld (the inner size of op(a), shape "
                              "(%ld, %ld) with trans_a=%d), got b of shape (%ld, %ld) with "
                              "trans_b=%d", trans_b ? "columns" : "rows", K,
                              (long)PyArray_DIM(a, 0), (long)PyArray_DIM(a, 1), trans_a,
                              (long)PyArray_DIM(b, 0), (long)PyArray_DIM(b, 1), trans_b);
    if (check_finite_matrix(a, lda, "sgemm: a") || check_finite_matrix(b, ldb, "sgemm: b"))
        return NULL;

    PyArrayObject *c;
    if (c_obj == Py_None) {
        if (beta != 0.0)
            return DTKD_VALUE_ERR("sgemm: c: required when beta != 0 (got beta=%g)", beta);
        npy_intp dims[2] = {M, N};
        c = (PyArrayObject *)PyArray_EMPTY(2, dims, NPY_FLOAT32, 0);
        if (!c) return NULL;
        ldc = N;
    } else {
        c = check_matrix(c_obj, "sgemm: c", &ldc);
        if (!c) return NULL;
        if (PyArray_DIM(c, 0) != M || PyArray_DIM(c, 1) != N)
            return DTKD_VALUE_ERR("sgemm: c: expected shape (%ld, %ld), got (%ld, %ld)", M, N,
                                  (long)PyArray_DIM(c, 0), (long)PyArray_DIM(c, 1));
        if (!PyArray_ISWRITEABLE(c)) return DTKD_VALUE_ERR("sgemm: c: output array is read-only");
        if (spans_overlap(c, ldc, a, lda) || spans_overlap(c, ldc, b, ldb))
            return DTKD_VALUE_ERR("sgemm: c: must not share memory with a or b");
        if (beta != 0.0 && check_finite_matrix(c, ldc, "sgemm: c")) return NULL;
        Py_INCREF(c);
    }

    int status;
    const float *A = (const float *)PyArray_DATA(a), *B = (const float *)PyArray_DATA(b);
    float *C = (float *)PyArray_DATA(c);
    DTKD_BEGIN_NOGIL
    status = dtkd_sgemm(trans_a, trans_b, M, N, K, (float)alpha, A, lda, B, ldb, (float)beta, C,
                        ldc);
    DTKD_END_NOGIL
    if (status != DTKD_OK) {
        Py_DECREF(c);
        return dtkd_raise_status(status, "sgemm");
    }
    return (PyObject *)c;
}

static PyObject *py_fma_peak_gflops(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"isa", "seconds", "threads", NULL};
    const char *name;
    double seconds = 0.2;
    int threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|di:fma_peak_gflops", kwlist, &name,
                                     &seconds, &threads))
        return NULL;
    enum dtkd_isa isa;
    if (!strcmp(name, "scalar")) isa = DTKD_ISA_SCALAR;
    else if (!strcmp(name, "avx2")) isa = DTKD_ISA_AVX2;
    else if (!strcmp(name, "avx512")) isa = DTKD_ISA_AVX512;
    else
        return DTKD_VALUE_ERR("fma_peak_gflops: isa: expected 'scalar', 'avx2' or 'avx512', "
                              "got '%s'", name);
    if (!(seconds > 0.0 && seconds <= 60.0))
        return DTKD_VALUE_ERR("fma_peak_gflops: seconds: expected 0 < seconds <= 60, got %g",
                              seconds);
    if (threads < 1)
        return DTKD_VALUE_ERR("fma_peak_gflops: threads: expected >= 1, got %d", threads);
    double gflops;
    DTKD_BEGIN_NOGIL
    gflops = dtkd_fma_peak_gflops(isa, seconds, threads);
    DTKD_END_NOGIL
    if (gflops < 0.0)
        return DTKD_VALUE_ERR("fma_peak_gflops: isa: this CPU does not support '%s'", name);
    return PyFloat_FromDouble(gflops);
}

PyMethodDef dtkd_gemm_methods[] = {
    {"sgemm", (PyCFunction)(void (*)(void))py_sgemm, METH_VARARGS | METH_KEYWORDS,
     "sgemm(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None) -> c\n"
     "c = alpha * op(a) @ op(b) + beta * c, float32, op(x) = x.T when trans_x. a, b, c are 2-D "
     "float32 with contiguous rows (column slices allowed). c=None allocates it (beta must be "
     "0); beta == 0 overwrites c without reading it."},
    {"fma_peak_gflops", (PyCFunction)(void (*)(void))py_fma_peak_gflops,
     METH_VARARGS | METH_KEYWORDS,
     "fma_peak_gflops(isa, seconds=0.2, threads=1) -> float\n"
     "Measured FP32 FMA throughput (GFLOP/s) of 'scalar' | 'avx2' | 'avx512' on `threads` "
     "threads."},
    {NULL, NULL, 0, NULL},
};
