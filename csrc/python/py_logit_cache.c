/* Bindings for the teacher-logit cache's slot table (csrc/kernels/logit_cache.c).
 *
 * The table is a writable 1-D uint8 array over the cache's memory (a NumPy view of an mmap);
 * its geometry travels as one tuple (nsets, ways, slot_bytes, classes, direct, half), checked
 * here against the array's size so a wrong geometry cannot reach past the mapping. */
#include "boundary.h"

#include "kernels/logit_cache.h"

#define GEOMETRY_FORMAT "(llllii)"

/* Check table and geometry; fill *t. Returns 0, or -1 with an exception set. */
static int table_from(struct dtkd_logit_table *t, PyObject *table_obj)
{
    PyArrayObject *table = dtkd_check_array(table_obj, "table", NPY_UINT8, 1);
    if (!table) return -1;
    if (!PyArray_ISWRITEABLE(table)) {
        DTKD_VALUE_ERR("table: must be writable (a read-write mapping of the cache)");
        return -1;
    }
    if (t->nsets <= 0 || t->ways <= 0 || t->classes <= 0 || (t->direct && t->ways != 1) ||
        t->slot_bytes < dtkd_logit_cache_slot_bytes(t->classes, t->half) || t->slot_bytes % 8) {
        DTKD_VALUE_ERR("geometry: (nsets %ld, ways %ld, slot_bytes %ld, classes %ld, direct %d, "
                       "half %d) is not a valid table (slot_bytes >= %ld and a multiple of 8, "
                       "ways 1 when direct)", t->nsets, t->ways, t->slot_bytes, t->classes,
                       t->direct, t->half, dtkd_logit_cache_slot_bytes(t->classes, t->half));
        return -1;
    }
    const double need = (double)t->nsets * (double)t->ways * (double)t->slot_bytes;
    if (need > (double)PyArray_DIM(table, 0)) {
        DTKD_VALUE_ERR("table: %ld bytes, but the geometry needs %.0f",
                       (long)PyArray_DIM(table, 0), need);
        return -1;
    }
    if ((uintptr_t)PyArray_DATA(table) % 8) {
        DTKD_VALUE_ERR("table: must be 8-byte aligned (the slot tags are atomic 64-bit words)");
        return -1;
    }
    t->slots = (unsigned char *)PyArray_DATA(table);
    return 0;
}

/* logit_cache_lookup(table, geometry, keys) -> (logits (B, C) float32, hit (B,) uint8);
 * rows of misses are zero. */
static PyObject *py_logit_cache_lookup(PyObject *self, PyObject *args)
{
    PyObject *table_obj, *keys_obj;
    struct dtkd_logit_table t = {0};
    if (!PyArg_ParseTuple(args, "O" GEOMETRY_FORMAT "O:logit_cache_lookup", &table_obj, &t.nsets,
                          &t.ways, &t.slot_bytes, &t.classes, &t.direct, &t.half, &keys_obj))
        return NULL;
    if (table_from(&t, table_obj)) return NULL;
    PyArrayObject *keys = dtkd_check_array(keys_obj, "keys", NPY_INT64, 1);
    if (!keys) return NULL;
    const npy_intp B = PyArray_DIM(keys, 0);
    const npy_intp out_shape[2] = {B, t.classes}, hit_shape[1] = {B};
    PyArrayObject *out = (PyArrayObject *)PyArray_ZEROS(2, out_shape, NPY_FLOAT32, 0);
    PyArrayObject *hit = (PyArrayObject *)PyArray_ZEROS(1, hit_shape, NPY_UINT8, 0);
    if (!out || !hit) {
        Py_XDECREF(out);
        Py_XDECREF(hit);
        return NULL;
    }
    int status;
    DTKD_BEGIN_NOGIL
    status = dtkd_logit_cache_lookup((float *)PyArray_DATA(out), (uint8_t *)PyArray_DATA(hit), &t,
                                     (const int64_t *)PyArray_DATA(keys), (long)B);
    DTKD_END_NOGIL
    if (status != DTKD_OK) {
        Py_DECREF(out);
        Py_DECREF(hit);
        return dtkd_raise_status(status, "logit_cache_lookup(keys: each in [0, 2^61 - 2], "
                                         "below nsets when direct)");
    }
    return Py_BuildValue("(NN)", out, hit);
}

/* logit_cache_insert(table, geometry, logits, keys, mask) -> status (B,) uint8 (see
 * logit_cache.h: 0 not offered, 1 stored, 2 present, 3 set full, 4 not storable). */
static PyObject *py_logit_cache_insert(PyObject *self, PyObject *args)
{
    PyObject *table_obj, *logits_obj, *keys_obj, *mask_obj;
    struct dtkd_logit_table t = {0};
    if (!PyArg_ParseTuple(args, "O" GEOMETRY_FORMAT "OOO:logit_cache_insert", &table_obj,
                          &t.nsets, &t.ways, &t.slot_bytes, &t.classes, &t.direct, &t.half,
                          &logits_obj, &keys_obj, &mask_obj))
        return NULL;
    if (table_from(&t, table_obj)) return NULL;
    PyArrayObject *keys = dtkd_check_array(keys_obj, "keys", NPY_INT64, 1);
    if (!keys) return NULL;
    const npy_intp B = PyArray_DIM(keys, 0);
    const npy_intp logits_shape[2] = {B, t.classes}, per_sample[1] = {B};
    PyArrayObject *logits = dtkd_check_shape(logits_obj, "logits", NPY_FLOAT32, 2, logits_shape);
    if (!logits) return NULL;
    PyArrayObject *mask = NULL;
    if (mask_obj != Py_None && !(mask = dtkd_check_shape(mask_obj, "mask", NPY_UINT8, 1,
                                                         per_sample)))
        return NULL;
    PyArrayObject *out = (PyArrayObject *)PyArray_ZEROS(1, per_sample, NPY_UINT8, 0);
    if (!out) return NULL;
    int status;
    DTKD_BEGIN_NOGIL
    status = dtkd_logit_cache_insert((uint8_t *)PyArray_DATA(out), &t,
                                     (const float *)PyArray_DATA(logits),
                                     (const int64_t *)PyArray_DATA(keys),
                                     mask ? (const uint8_t *)PyArray_DATA(mask) : NULL, (long)B);
    DTKD_END_NOGIL
    if (status != DTKD_OK) {
        Py_DECREF(out);
        return dtkd_raise_status(status, "logit_cache_insert(keys: each in [0, 2^61 - 2], "
                                         "below nsets when direct)");
    }
    return (PyObject *)out;
}

static PyObject *py_logit_cache_slot_bytes(PyObject *self, PyObject *args)
{
    long classes;
    int half;
    if (!PyArg_ParseTuple(args, "lp:logit_cache_slot_bytes", &classes, &half)) return NULL;
    if (classes <= 0) return DTKD_VALUE_ERR("classes: must be > 0, got %ld", classes);
    return PyLong_FromLong(dtkd_logit_cache_slot_bytes(classes, half));
}

PyMethodDef dtkd_logit_cache_methods[] = {
    {"logit_cache_lookup", py_logit_cache_lookup, METH_VARARGS,
     "logit_cache_lookup(table, (nsets, ways, slot_bytes, classes, direct, half), keys) -> "
     "(logits float32 (B, classes), hit uint8 (B,)): the ready entries of keys (misses: 0)."},
    {"logit_cache_insert", py_logit_cache_insert, METH_VARARGS,
     "logit_cache_insert(table, geometry, logits, keys, mask or None) -> status uint8 (B,): "
     "0 not offered, 1 stored, 2 already present, 3 set full, 4 not storable."},
    {"logit_cache_slot_bytes", py_logit_cache_slot_bytes, METH_VARARGS,
     "logit_cache_slot_bytes(classes, half) -> bytes of one slot (8-byte tag + logits)."},
    {NULL, NULL, 0, NULL},
};
