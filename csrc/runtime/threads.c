/* Thread count for every OpenMP region in dtkd. Kept here (not only in OpenMP's ICV) so that a
 * kernel called from any Python thread uses the count set by dtkd.set_num_threads: OpenMP's
 * omp_set_num_threads is per calling thread, which a GIL-released call from another Python
 * thread would not see. Kernels write `#pragma omp parallel num_threads(dtkd_get_num_threads())`. */
#include "dtkd.h"

#include <omp.h>
#include <stdlib.h>

static int num_threads = 0; /* 0: not set yet -> OMP_NUM_THREADS or the core count */

void dtkd_set_num_threads(int n)
{
    if (n < 1) n = 1;
    if (n > DTKD_MAX_THREADS) n = DTKD_MAX_THREADS;
    __atomic_store_n(&num_threads, n, __ATOMIC_RELAXED);
}

int dtkd_get_num_threads(void)
{
    int n = __atomic_load_n(&num_threads, __ATOMIC_RELAXED);
    if (n > 0) return n;
    n = omp_get_max_threads(); /* OMP_NUM_THREADS may ask for more than the cap too */
    return n < 1 ? 1 : n > DTKD_MAX_THREADS ? DTKD_MAX_THREADS : n;
}
