/* Bindings for the optim kernels (csrc/kernels/sgd.c). */
#include "boundary.h"

#include "kernels/sgd.h"

#include <math.h>

/* Fetch item i of a list/tuple `seq` as a float32 C-contiguous writable array; the name in
 * error messages is e.g. "params[3]". */
static PyArrayObject *sequence_item_array(PyObject *seq, Py_ssize_t i, const char *seq_name,
                                          int writable, const npy_intp *shape, int ndim)
{
    char name[64];
    snprintf(name, sizeof name, "%s[%zd]", seq_name, i);
    PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
    PyArrayObject *a = writable ? dtkd_check_output(item, name, NPY_FLOAT32, ndim, shape)
                                : dtkd_check_shape(item, name, NPY_FLOAT32, ndim, shape);
    return a;
}

static PyObject *py_sgd_step(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"params", "grads", "momentum_buffers", "lr", "momentum", "dampening",
                             "weight_decay", "nesterov", "first_step", NULL};
    PyObject *params_obj, *grads_obj, *bufs_obj;
    double lr, momentum, dampening, weight_decay;
    int nesterov, first_step = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOddddp|p", kwlist, &params_obj, &grads_obj,
                                     &bufs_obj, &lr, &momentum, &dampening, &weight_decay,
                                     &nesterov, &first_step))
        return NULL;
    if (!isfinite(lr) || lr < 0) return DTKD_VALUE_ERR("lr: must be finite and >= 0");
    if (!isfinite(momentum) || momentum < 0) return DTKD_VALUE_ERR("momentum: must be finite and >= 0");
    if (!isfinite(dampening)) return DTKD_VALUE_ERR("dampening: must be finite");
    if (!isfinite(weight_decay) || weight_decay < 0)
        return DTKD_VALUE_ERR("weight_decay: must be finite and >= 0");
    if (nesterov && (momentum <= 0 || dampening != 0))
        return DTKD_VALUE_ERR("nesterov: requires momentum > 0 and dampening == 0");

    PyObject *params = NULL, *grads = NULL, *bufs = NULL, *result = NULL;
    float **param_ptrs = NULL, **buf_ptrs = NULL;
    const float **grad_ptrs = NULL;
    long *sizes = NULL;

    params = PySequence_Fast(params_obj, "params: expected a list of float32 arrays");
    if (!params) goto done;
    grads = PySequence_Fast(grads_obj, "grads: expected a list of float32 arrays");
    if (!grads) goto done;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(params);
    if (PySequence_Fast_GET_SIZE(grads) != count) {
        dtkd_raise(PyExc_ValueError, "grads: expected %zd arrays (one per param), got %zd", count,
                       PySequence_Fast_GET_SIZE(grads));
        goto done;
    }
    int use_bufs = momentum != 0;
    if (use_bufs) {
        if (bufs_obj == Py_None) {
            dtkd_raise(PyExc_ValueError, "momentum_buffers: required when momentum != 0, got None");
            goto done;
        }
        bufs = PySequence_Fast(bufs_obj, "momentum_buffers: expected a list of float32 arrays");
        if (!bufs) goto done;
        if (PySequence_Fast_GET_SIZE(bufs) != count) {
            dtkd_raise(PyExc_ValueError, "momentum_buffers: expected %zd arrays (one per param), got %zd", count,
                           PySequence_Fast_GET_SIZE(bufs));
            goto done;
        }
    }
    size_t n = count ? (size_t)count : 1;
    param_ptrs = dtkd_malloc_array(n, sizeof *param_ptrs);
    buf_ptrs = dtkd_malloc_array(n, sizeof *buf_ptrs);
    grad_ptrs = dtkd_malloc_array(n, sizeof *grad_ptrs);
    sizes = dtkd_malloc_array(n, sizeof *sizes);
    if (!param_ptrs || !buf_ptrs || !grad_ptrs || !sizes) {
        dtkd_raise_status(DTKD_ERR_NOMEM, "sgd_step: pointer tables");
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyArrayObject *p = sequence_item_array(params, i, "params", 1, NULL, -1);
        if (!p) goto done;
        int nd = PyArray_NDIM(p);
        const npy_intp *shape = PyArray_DIMS(p);
        PyArrayObject *g = sequence_item_array(grads, i, "grads", 0, shape, nd);
        if (!g) goto done;
        if (dtkd_check_finite(g, "grads") < 0) goto done;
        param_ptrs[i] = (float *)PyArray_DATA(p);
        grad_ptrs[i] = (const float *)PyArray_DATA(g);
        sizes[i] = (long)PyArray_SIZE(p);
        if (use_bufs) {
            PyArrayObject *b = sequence_item_array(bufs, i, "momentum_buffers", 1, shape, nd);
            if (!b) goto done;
            buf_ptrs[i] = (float *)PyArray_DATA(b);
        }
    }
    int status;
    DTKD_BEGIN_NOGIL
    status = dtkd_sgd_step(param_ptrs, use_bufs ? buf_ptrs : NULL, grad_ptrs, sizes, (long)count,
                           (float)lr, (float)momentum, (float)dampening, (float)weight_decay,
                           nesterov, first_step);
    DTKD_END_NOGIL
    if (status != DTKD_OK) {
        dtkd_raise_status(status, "sgd_step");
        goto done;
    }
    Py_INCREF(Py_None); /* not Py_NewRef: that needs Python 3.10 */
    result = Py_None;
done:
    dtkd_free(param_ptrs);
    dtkd_free(buf_ptrs);
    dtkd_free(grad_ptrs);
    dtkd_free(sizes);
    Py_XDECREF(params);
    Py_XDECREF(grads);
    Py_XDECREF(bufs);
    return result;
}

PyMethodDef dtkd_optim_methods[] = {
    {"sgd_step", (PyCFunction)(void (*)(void))py_sgd_step, METH_VARARGS | METH_KEYWORDS,
     "sgd_step(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov,\n"
     "         first_step=False)\n--\n\n"
     "One torch.optim.SGD step over lists of float32 C-contiguous arrays, updated in place in\n"
     "one fused call. momentum_buffers may be None when momentum == 0. first_step=True sets\n"
     "each buffer to the (decayed) gradient, as torch does when a buffer is first created."},
    {NULL, NULL, 0, NULL},
};
