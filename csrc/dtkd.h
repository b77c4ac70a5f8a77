/* dtkd.h -- what every C file of dtkd shares: error codes, CPU features, threads.
 *
 * Kernels (csrc/kernels/) are plain C11: raw pointers and sizes in, caller-owned memory,
 * an int error code out (0 = success). Only csrc/python/ touches the CPython/NumPy API.
 * Each kernel family has its own header beside its .c file (csrc/kernels/<family>.h).
 */
#ifndef DTKD_H
#define DTKD_H

#include <stddef.h>
#include <stdint.h>

/* Error codes returned by kernels. csrc/python/boundary.c (dtkd_raise_status) maps each to
 * exactly one Python exception; the table there and docs/RELIABILITY.md list them. */
enum dtkd_status {
    DTKD_OK = 0,
    DTKD_ERR_SHAPE = 1,      /* a size is zero/negative or sizes disagree      -> ValueError */
    DTKD_ERR_NONFINITE = 2,  /* an input holds NaN or Inf                      -> ValueError */
    DTKD_ERR_LABEL = 3,      /* a label is outside [0, C)                      -> ValueError */
    DTKD_ERR_VALUE = 4,      /* a scalar argument is out of its domain         -> ValueError */
    DTKD_ERR_NOMEM = 5,      /* an allocation (dtkd_malloc) failed             -> MemoryError */
    DTKD_ERR_WORKSPACE = 6,  /* the caller's workspace is smaller than the kernel's *_workspace
                              * size or misaligned: a bug in the caller       -> RuntimeError */
    DTKD_ERR_RANGE = 7,      /* finite inputs whose result (or an intermediate the kernel cannot
                              * avoid, e.g. x / T) lies beyond float32's range -> ValueError */
};

/* Memory (csrc/runtime/alloc.c): the one allocator of dtkd's C code. Blocks are 64-byte aligned;
 * dtkd_malloc_array checks count * size for overflow. NULL on failure (or injected failure). */
void *dtkd_malloc(size_t bytes);
void *dtkd_malloc_array(size_t count, size_t size);
void dtkd_free(void *p);
long dtkd_live_blocks(void);          /* blocks allocated and not yet freed (leak tests) */
void dtkd_fail_alloc_after(long n);   /* the n-th allocation from now fails; n <= 0 disarms */
long dtkd_fail_alloc_pending(void);   /* > 0: the injected failure has not happened yet */
void dtkd_fail_alloc_from_env(void);  /* DTKD_FAIL_ALLOC=n, honoured in sanitize/debug builds */
/* Keep freed heap memory (up to trim_bytes at the top of the heap) and serve blocks up to 32 MB
 * from the heap, so a training loop stops faulting its activations in every step (glibc's
 * mallopt; process-wide). DTKD_OK, or DTKD_ERR_VALUE when not glibc or refused. */
int dtkd_keep_freed_memory(long trim_bytes);

/* Workspace arena (csrc/runtime/arena.c): scratch blocks kept across calls. acquire returns a
 * 64-byte aligned block of >= floats floats (NULL: out of memory) that only the caller uses
 * until it releases it; trim frees the cached blocks not in use (returns the bytes freed). */
float *dtkd_workspace_acquire(size_t floats);
void dtkd_workspace_release(float *p);
size_t dtkd_workspace_trim(void);
size_t dtkd_workspace_cached_bytes(void);

/* CPU features, detected once (csrc/runtime/cpu.c). */
enum dtkd_isa { DTKD_ISA_SCALAR = 0, DTKD_ISA_AVX2 = 1, DTKD_ISA_AVX512 = 2 };
int dtkd_cpu_has_avx2_fma(void);
int dtkd_cpu_has_avx512(void); /* every feature of DTKD_TARGET_AVX512 */

/* The target attributes of the SIMD paths. dtkd_isa() picks a path only when the CPU has every
 * feature its attribute names (csrc/runtime/cpu.c; tests/test_portability.py keeps the lists in
 * step). Off x86 they are empty and only the portable path runs. */
#if defined(__x86_64__) || defined(__i386__)
#define DTKD_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define DTKD_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma")))
#else
#define DTKD_TARGET_AVX2
#define DTKD_TARGET_AVX512
#endif
/* Best ISA the CPU supports, capped by dtkd_set_isa_limit (tests and benchmarks force a path). */
enum dtkd_isa dtkd_isa(void);
void dtkd_set_isa_limit(enum dtkd_isa limit);
const char *dtkd_isa_name(enum dtkd_isa isa);

/* What the CPU is and its data caches (csrc/runtime/cpu.c), detected once. A level absent from
 * the machine has size 0. */
struct dtkd_cache_level {
    long size;     /* bytes, one instance */
    int ways;      /* associativity */
    int line;      /* bytes per line */
    int shared_by; /* logical CPUs sharing one instance */
};
struct dtkd_cpu_info {
    char vendor[16];     /* CPUID vendor string, e.g. "AuthenticAMD" */
    char brand[64];      /* CPUID brand string */
    int family, model, stepping;
    struct dtkd_cache_level l1d, l2, l3;
    const char *cache_source; /* "sysfs", "cpuid" or "default" */
};
const struct dtkd_cpu_info *dtkd_cpu_info(void);

/* Threads (csrc/runtime/threads.c): OpenMP team size used by every parallel kernel, in
 * [1, DTKD_MAX_THREADS]. The cap: libgomp segfaults when asked for a team of 10^6 threads (issue
 * 13), and a team larger than a few hundred only adds fork/join cost on any machine dtkd targets.
 * dtkd_set_num_threads clamps into the range; the binding rejects values outside it. */
#define DTKD_MAX_THREADS 1024
void dtkd_set_num_threads(int n);
int dtkd_get_num_threads(void);

#endif
