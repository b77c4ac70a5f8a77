/* The one allocator of dtkd's C code: every workspace, scratch buffer and pointer table that the
 * kernels and bindings malloc comes from dtkd_malloc and goes back through dtkd_free.
 *
 * Why one function: (1) alignment -- every block starts on a 64-byte cache line, which the SIMD
 * paths assume; (2) accounting -- a live-block count lets tests prove that no path, including
 * the error paths, leaks; (3) fault injection -- dtkd_fail_alloc_after(n) makes the n-th
 * allocation from now on fail (once), so tests can drive every allocation-failure path and check
 * that it ends in MemoryError, without a crash or a leak. The check is one relaxed atomic load
 * per allocation, which costs nothing next to the allocation itself. In DTKD_SANITIZE/DTKD_DEBUG
 * builds (DTKD_FAULT_ENV defined by setup.py) the environment variable DTKD_FAIL_ALLOC=n arms the
 * same counter when the module loads. */
#include "dtkd.h"

#include <stdlib.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#define DTKD_ALIGN 64

static long live_blocks;      /* dtkd_malloc'ed and not yet dtkd_free'd */
static long fail_countdown;   /* > 0: the allocation that brings it to 0 fails */

void *dtkd_malloc(size_t bytes)
{
    if (__atomic_load_n(&fail_countdown, __ATOMIC_RELAXED) > 0 &&
        __atomic_sub_fetch(&fail_countdown, 1, __ATOMIC_RELAXED) == 0)
        return NULL;
    if (bytes == 0) bytes = 1;  /* a distinct pointer, never NULL-for-success */
    if (bytes > SIZE_MAX - DTKD_ALIGN) return NULL;
    void *p = aligned_alloc(DTKD_ALIGN, (bytes + DTKD_ALIGN - 1) / DTKD_ALIGN * DTKD_ALIGN);
    if (p) __atomic_add_fetch(&live_blocks, 1, __ATOMIC_RELAXED);
    return p;
}

void *dtkd_malloc_array(size_t count, size_t size)
{
    if (size && count > SIZE_MAX / size) return NULL;
    return dtkd_malloc(count * size);
}

void dtkd_free(void *p)
{
    if (!p) return;
    __atomic_sub_fetch(&live_blocks, 1, __ATOMIC_RELAXED);
    free(p);
}

long dtkd_live_blocks(void) { return __atomic_load_n(&live_blocks, __ATOMIC_RELAXED); }

void dtkd_fail_alloc_after(long n)
{
    __atomic_store_n(&fail_countdown, n > 0 ? n : 0, __ATOMIC_RELAXED);
}

long dtkd_fail_alloc_pending(void) { return __atomic_load_n(&fail_countdown, __ATOMIC_RELAXED); }

void dtkd_fail_alloc_from_env(void)
{
#ifdef DTKD_FAULT_ENV
    const char *s = getenv("DTKD_FAIL_ALLOC");
    if (s && *s) dtkd_fail_alloc_after(strtol(s, NULL, 10));
#endif
}

/* A training step allocates its activations (NumPy arrays of 1-16 MB each) in the forward and
 * frees them in the backward. glibc serves blocks above its mmap threshold with fresh mmaps and
 * returns freed heap above its trim threshold to the OS, so every step faults its activations'
 * pages in again (~19,000 faults per resnet32 step at batch 64; BatchNorm's forward alone took
 * 53 ms per step instead of 20). Raising both keeps those pages in the process: RSS stays at
 * the step's peak, as with PyTorch's caching allocators. Process-wide; glibc only. */
int dtkd_keep_freed_memory(long trim_bytes)
{
#if defined(__GLIBC__)
    if (trim_bytes < 0 || trim_bytes > 0x7fffffffL) return DTKD_ERR_VALUE;
    /* 32 MB: glibc's largest mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit) */
    if (!mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)) return DTKD_ERR_VALUE;
    if (!mallopt(M_TRIM_THRESHOLD, (int)trim_bytes)) return DTKD_ERR_VALUE;
    return DTKD_OK;
#else
    (void)trim_bytes;
    return DTKD_ERR_VALUE; /* not glibc: nothing to tune, the caller reports it */
#endif
}
