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

/* Error codes returned by kernels; csrc/python/boundary.c turns them into exceptions. */
enum dtkd_status {
    DTKD_OK = 0,
    DTKD_ERR_SHAPE = 1,      /* a size is zero/negative or sizes disagree */
    DTKD_ERR_NONFINITE = 2,  /* an input holds NaN or Inf */
    DTKD_ERR_LABEL = 3,      /* a label is outside [0, C) */
    DTKD_ERR_VALUE = 4,      /* a scalar argument is out of its domain */
    DTKD_ERR_NOMEM = 5,      /* a workspace allocation failed */
};

/* Memory (csrc/runtime/alloc.c): dtkd's allocation functions, 64-byte aligned, NULL on failure
 * (-> DTKD_ERR_NOMEM -> MemoryError). */
void *dtkd_malloc(size_t bytes);
void dtkd_free(void *p);

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

/* Threads (csrc/runtime/threads.c): OpenMP team size used by every parallel kernel. */
void dtkd_set_num_threads(int n);
int dtkd_get_num_threads(void);

#endif
