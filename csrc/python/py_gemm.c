/* Bindings for the gemm kernels (csrc/kernels/). */
#include "boundary.h"

PyMethodDef dtkd_gemm_methods[] = {
    {NULL, NULL, 0, NULL},
};
