/* Bindings for the nn kernels (csrc/kernels/). */
#include "boundary.h"

PyMethodDef dtkd_nn_methods[] = {
    {NULL, NULL, 0, NULL},
};
