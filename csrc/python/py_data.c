/* Bindings for the data kernels (csrc/kernels/). */
#include "boundary.h"

PyMethodDef dtkd_data_methods[] = {
    {NULL, NULL, 0, NULL},
};
