/* Bindings for the losses kernels (csrc/kernels/). */
#include "boundary.h"

PyMethodDef dtkd_losses_methods[] = {
    {NULL, NULL, 0, NULL},
};
