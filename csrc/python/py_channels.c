/* Bindings for the channel gather (csrc/kernels/channels.c), family "channels".
 *
 *   concat_shuffle_forward(parts, groups) -> y
 *   concat_shuffle_backward(dy, parts, groups) -> None (writes into the parts' arrays)
 *
 * parts: a list of (array, offset, count): channels [offset, offset + count) of a float32
 * C-contiguous (N, C_k, H, W) array; every array has the same N, H, W. */
#include "boundary.h"

#include "kernels/channels.h"

#define MAX_PARTS 8

/* Parse `parts` into out[] (at most MAX_PARTS). Fills N, H, W from the first array. Returns the
 * number of parts, or -1 with an exception set. */
static int parse_parts(PyObject *obj, struct dtkd_channel_part *out, npy_intp *nhw, int writable)
{
    PyObject *seq = PySequence_Fast(obj, "parts: expected a list of (array, offset, count)");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > MAX_PARTS) {
        Py_DECREF(seq);
        dtkd_raise(PyExc_ValueError, "parts: expected 1 to %d parts, got %zd", MAX_PARTS, n);
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        char name[32];
        snprintf(name, sizeof name, "parts[%zd]", k);
        PyObject *array_obj;
        long offset, count;
        PyObject *item = PySequence_Fast_GET_ITEM(seq, k);
        if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "Oll", &array_obj, &offset, &count)) {
            PyErr_Clear();
            Py_DECREF(seq);
            dtkd_raise(PyExc_TypeError, "%s: expected a tuple (array, offset, count)", name);
            return -1;
        }
        npy_intp shape[4] = {-1, -1, -1, -1};
        if (k > 0) shape[0] = nhw[0], shape[2] = nhw[1], shape[3] = nhw[2];
        PyArrayObject *a = writable ? dtkd_check_output(array_obj, name, NPY_FLOAT32, 4, shape)
                                    : dtkd_check_shape(array_obj, name, NPY_FLOAT32, 4, shape);
        if (!a) {
            Py_DECREF(seq);
            return -1;
        }
        npy_intp *d = PyArray_DIMS(a);
        if (k == 0) nhw[0] = d[0], nhw[1] = d[2], nhw[2] = d[3];
        if (offset < 0 || count < 1 || offset + count > (long)d[1]) {
            Py_DECREF(seq);
            dtkd_raise(PyExc_ValueError,
                       "%s: channels [%ld, %ld) are not a non-empty range of the array's %ld",
                       name, offset, offset + count, (long)d[1]);
            return -1;
        }
        if (d[0] < 1 || d[2] < 1 || d[3] < 1) {
            Py_DECREF(seq);
            dtkd_raise(PyExc_ValueError, "%s: empty array (a dimension is 0)", name);
            return -1;
        }
        out[k] = (struct dtkd_channel_part){(float *)PyArray_DATA(a), (long)d[1], offset, count};
    }
    Py_DECREF(seq);  /* the caller's list keeps the arrays alive for the call */
    return (int)n;
}

static int check_groups(long C, long groups)
{
    if (groups >= 1 && C % groups == 0) return 0;
    dtkd_raise(PyExc_ValueError, "groups: must be >= 1 and divide the %ld channels, got %ld", C,
               groups);
    return -1;
}

static long total_channels(const struct dtkd_channel_part *parts, int n)
{
    long c = 0;
    for (int k = 0; k < n; k++) c += parts[k].count;
    return c;
}

static PyObject *py_concat_shuffle_forward(PyObject *self, PyObject *args)
{
    PyObject *parts_obj;
    long groups;
    if (!PyArg_ParseTuple(args, "Ol:concat_shuffle_forward", &parts_obj, &groups)) return NULL;
    struct dtkd_channel_part parts[MAX_PARTS];
    npy_intp nhw[3];
    int n = parse_parts(parts_obj, parts, nhw, 0);
    if (n < 0) return NULL;
    long C = total_channels(parts, n);
    if (check_groups(C, groups)) return NULL;
    npy_intp dims[4] = {nhw[0], C, nhw[1], nhw[2]};
    PyArrayObject *y = (PyArrayObject *)PyArray_SimpleNew(4, dims, NPY_FLOAT32);
    if (!y) return NULL;
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_concat_shuffle_forward((float *)PyArray_DATA(y), parts, n, (long)nhw[0],
                                     (long)(nhw[1] * nhw[2]), groups);
    DTKD_END_NOGIL
    if (st) {
        Py_DECREF(y);
        return dtkd_raise_status(st, "concat_shuffle_forward");
    }
    return (PyObject *)y;
}

static PyObject *py_concat_shuffle_backward(PyObject *self, PyObject *args)
{
    PyObject *dyo, *parts_obj;
    long groups;
    if (!PyArg_ParseTuple(args, "OOl:concat_shuffle_backward", &dyo, &parts_obj, &groups))
        return NULL;
    struct dtkd_channel_part parts[MAX_PARTS];
    npy_intp nhw[3];
    int n = parse_parts(parts_obj, parts, nhw, 1);
    if (n < 0) return NULL;
    long C = total_channels(parts, n);
    if (check_groups(C, groups)) return NULL;
    npy_intp dims[4] = {nhw[0], C, nhw[1], nhw[2]};
    PyArrayObject *dy = dtkd_check_shape(dyo, "dy", NPY_FLOAT32, 4, dims);
    if (!dy) return NULL;
    for (int k = 0; k < n; k++)
        if (parts[k].data == (float *)PyArray_DATA(dy))
            return DTKD_VALUE_ERR("parts[%d]: must not be dy itself", k);
    int st;
    DTKD_BEGIN_NOGIL
    st = dtkd_concat_shuffle_backward(parts, n, (const float *)PyArray_DATA(dy), (long)nhw[0],
                                      (long)(nhw[1] * nhw[2]), groups);
    DTKD_END_NOGIL
    if (st) return dtkd_raise_status(st, "concat_shuffle_backward");
    Py_RETURN_NONE;
}

PyMethodDef dtkd_channels_methods[] = {
    {"concat_shuffle_forward", py_concat_shuffle_forward, METH_VARARGS,
     "concat_shuffle_forward(parts, groups) -> y: channel shuffle (groups) of the concatenation "
     "of parts, each (array, offset, count) = array[:, offset:offset+count]."},
    {"concat_shuffle_backward", py_concat_shuffle_backward, METH_VARARGS,
     "concat_shuffle_backward(dy, parts, groups): write each part's gradient into "
     "array[:, offset:offset+count] of its (array, offset, count)."},
    {NULL},
};
