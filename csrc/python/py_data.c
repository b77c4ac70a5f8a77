/* Bindings for the data kernels (csrc/kernels/augment.c). */
#include "boundary.h"

#include <string.h>

#include "kernels/augment.h"

/* augment_batch(images, index, offset, flip, mean, std, out_height, out_width, layout) -> out
 * images (N,H,W,C) ('NHWC') or (N,C,H,W) ('NCHW') uint8; index (B,) int64; offset (B,2) int64;
 * flip (B,) uint8; mean, std (C,) float32. Returns out (B,C,out_height,out_width) float32. */
static PyObject *py_augment_batch(PyObject *self, PyObject *args)
{
    PyObject *images_obj, *index_obj, *offset_obj, *flip_obj, *mean_obj, *std_obj;
    long out_h, out_w;
    const char *layout;
    if (!PyArg_ParseTuple(args, "OOOOOOlls:augment_batch", &images_obj, &index_obj, &offset_obj,
                          &flip_obj, &mean_obj, &std_obj, &out_h, &out_w, &layout))
        return NULL;

    int channels_last;
    if (!strcmp(layout, "NHWC")) channels_last = 1;
    else if (!strcmp(layout, "NCHW")) channels_last = 0;
    else return DTKD_VALUE_ERR("layout: expected 'NHWC' or 'NCHW', got '%s'", layout);

    PyArrayObject *images = dtkd_check_array(images_obj, "images", NPY_UINT8, 4);
    if (!images) return NULL;
    const npy_intp *d = PyArray_DIMS(images);
    const npy_intp N = d[0];
    const npy_intp H = channels_last ? d[1] : d[2];
    const npy_intp W = channels_last ? d[2] : d[3];
    const npy_intp C = channels_last ? d[3] : d[1];
    if (N == 0 || H == 0 || W == 0 || C == 0)
        return DTKD_VALUE_ERR("images: expected a non-empty (N, H, W, C) or (N, C, H, W) array, "
                              "got shape (%ld, %ld, %ld, %ld)", (long)d[0], (long)d[1],
                              (long)d[2], (long)d[3]);
    if (out_h <= 0 || out_w <= 0)
        return DTKD_VALUE_ERR("out_height, out_width: must be > 0, got %ld, %ld", out_h, out_w);

    PyArrayObject *index = dtkd_check_array(index_obj, "index", NPY_INT64, 1);
    if (!index) return NULL;
    const npy_intp B = PyArray_DIM(index, 0);
    if (B == 0) return DTKD_VALUE_ERR("index: empty batch (expected shape (B,) with B > 0)");
    const npy_intp offset_shape[2] = {B, 2}, per_sample[1] = {B}, per_channel[1] = {C};
    PyArrayObject *offset = dtkd_check_shape(offset_obj, "offset", NPY_INT64, 2, offset_shape);
    if (!offset) return NULL;
    PyArrayObject *flip = dtkd_check_shape(flip_obj, "flip", NPY_UINT8, 1, per_sample);
    if (!flip) return NULL;
    PyArrayObject *mean = dtkd_check_shape(mean_obj, "mean", NPY_FLOAT32, 1, per_channel);
    if (!mean || dtkd_check_finite(mean, "mean")) return NULL;
    PyArrayObject *std = dtkd_check_shape(std_obj, "std", NPY_FLOAT32, 1, per_channel);
    if (!std || dtkd_check_finite(std, "std")) return NULL;

    /* Value checks here give messages that name the entry; the kernel re-checks them. */
    const int64_t *idx = (const int64_t *)PyArray_DATA(index);
    const int64_t *off = (const int64_t *)PyArray_DATA(offset);
    const float *sd = (const float *)PyArray_DATA(std);
    for (npy_intp b = 0; b < B; b++) {
        if (idx[b] < 0 || idx[b] >= N)
            return DTKD_VALUE_ERR("index: entry %ld is %lld, outside [0, %ld) (images has %ld "
                                  "images)", (long)b, (long long)idx[b], (long)N, (long)N);
        if (off[2 * b] <= -out_h || off[2 * b] >= H || off[2 * b + 1] <= -out_w ||
            off[2 * b + 1] >= W)
            return DTKD_VALUE_ERR("offset: row %ld is (%lld, %lld); the crop must overlap the "
                                  "image: row offset in (%ld, %ld), column offset in (%ld, %ld)",
                                  (long)b, (long long)off[2 * b], (long long)off[2 * b + 1],
                                  -out_h, (long)H, -out_w, (long)W);
    }
    for (npy_intp c = 0; c < C; c++)
        if (!(sd[c] > 0.0f))
            return DTKD_VALUE_ERR("std: entry %ld is %g, must be > 0", (long)c, (double)sd[c]);

    const npy_intp out_shape[4] = {B, C, out_h, out_w};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(4, out_shape, NPY_FLOAT32);
    if (!out) return NULL;
    int status;
    DTKD_BEGIN_NOGIL
    status = dtkd_augment_batch((float *)PyArray_DATA(out), (const uint8_t *)PyArray_DATA(images),
                                idx, off, (const uint8_t *)PyArray_DATA(flip),
                                (const float *)PyArray_DATA(mean), sd, (long)B, (long)N, (long)H,
                                (long)W, (long)C, out_h, out_w, channels_last);
    DTKD_END_NOGIL
    if (status != DTKD_OK) {
        Py_DECREF(out);
        return dtkd_raise_status(status, "augment_batch");
    }
    return (PyObject *)out;
}

PyMethodDef dtkd_data_methods[] = {
    {"augment_batch", py_augment_batch, METH_VARARGS,
     "augment_batch(images, index, offset, flip, mean, std, out_height, out_width, layout) -> "
     "float32 (B, C, out_height, out_width): gather images[index], crop at offset with zero "
     "padding, mirror where flip != 0, then (v/255 - mean)/std. layout is 'NHWC' or 'NCHW'."},
    {NULL, NULL, 0, NULL},
};
