/* CPU feature detection: which SIMD path the kernels may take.
 * __builtin_cpu_supports checks both CPUID and the OS's XSAVE state (xgetbv), so a feature
 * reported here is usable. DTKD_ISA (env var: scalar|avx2|avx512) caps the choice at start-up,
 * dtkd_set_isa_limit later.
 *
 * Each SIMD path is compiled with a target attribute naming its features (DTKD_TARGET_AVX2 /
 * DTKD_TARGET_AVX512 in dtkd.h); a path is taken only if the CPU has every feature its
 * attribute names (tests/test_portability.py checks the two lists agree).
 *
 * The cap is read and written atomically: a kernel reads the path once when it starts, so
 * dtkd_set_isa_limit from one thread while kernels run on others changes the path of later
 * calls only (no torn read, no kernel switching paths midway). */
#include "dtkd.h"

#include <stdlib.h>
#include <string.h>

static int isa_limit = -1; /* -1: not yet read from the environment */

int dtkd_cpu_has_avx2_fma(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int dtkd_cpu_has_avx512(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    /* every feature of DTKD_TARGET_AVX512 */
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           dtkd_cpu_has_avx2_fma();
#else
    return 0;
#endif
}

static int isa_from_env(void)
{
    const char *s = getenv("DTKD_ISA");
    if (!s) return DTKD_ISA_AVX512;
    if (!strcmp(s, "scalar")) return DTKD_ISA_SCALAR;
    if (!strcmp(s, "avx2")) return DTKD_ISA_AVX2;
    return DTKD_ISA_AVX512;
}

static enum dtkd_isa best_isa(void)
{
    static int best = -1; /* the CPU does not change: detect once */
    int b = __atomic_load_n(&best, __ATOMIC_RELAXED);
    if (b < 0) {
        b = dtkd_cpu_has_avx512() ? DTKD_ISA_AVX512
          : dtkd_cpu_has_avx2_fma() ? DTKD_ISA_AVX2 : DTKD_ISA_SCALAR;
        __atomic_store_n(&best, b, __ATOMIC_RELAXED);
    }
    return (enum dtkd_isa)b;
}

enum dtkd_isa dtkd_isa(void)
{
    int limit = __atomic_load_n(&isa_limit, __ATOMIC_RELAXED);
    if (limit < 0) {
        /* first call: the environment's cap, unless dtkd_set_isa_limit got there first */
        int expected = -1;
        limit = isa_from_env();
        if (!__atomic_compare_exchange_n(&isa_limit, &expected, limit, 0, __ATOMIC_RELAXED,
                                         __ATOMIC_RELAXED))
            limit = expected;
    }
    enum dtkd_isa best = best_isa();
    return (int)best < limit ? best : (enum dtkd_isa)limit;
}

void dtkd_set_isa_limit(enum dtkd_isa limit) { __atomic_store_n(&isa_limit, (int)limit, __ATOMIC_RELAXED); }

const char *dtkd_isa_name(enum dtkd_isa isa)
{
    switch (isa) {
    case DTKD_ISA_AVX512: return "avx512";
    case DTKD_ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}
