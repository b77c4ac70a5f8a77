/* Bindings for the optim kernels (csrc/kernels/). */
#include "boundary.h"

PyMethodDef dtkd_optim_methods[] = {
    {NULL, NULL, 0, NULL},
};
