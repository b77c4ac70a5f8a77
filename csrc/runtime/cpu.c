/* CPU feature detection: which SIMD path the kernels may take.
 * __builtin_cpu_supports checks both CPUID and the OS's XSAVE state (xgetbv), so a feature
 * reported here is usable. DTKD_ISA (env var: scalar|avx2|avx512) caps the choice at start-up. */
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

int dtkd_cpu_has_avx512f(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && dtkd_cpu_has_avx2_fma();
#else
    return 0;
#endif
}

static enum dtkd_isa isa_from_env(void)
{
    const char *s = getenv("DTKD_ISA");
    if (!s) return DTKD_ISA_AVX512;
    if (!strcmp(s, "scalar")) return DTKD_ISA_SCALAR;
    if (!strcmp(s, "avx2")) return DTKD_ISA_AVX2;
    return DTKD_ISA_AVX512;
}

enum dtkd_isa dtkd_isa(void)
{
    if (isa_limit < 0) isa_limit = (int)isa_from_env();
    enum dtkd_isa best = dtkd_cpu_has_avx512f() ? DTKD_ISA_AVX512
                       : dtkd_cpu_has_avx2_fma() ? DTKD_ISA_AVX2 : DTKD_ISA_SCALAR;
    return (int)best < isa_limit ? best : (enum dtkd_isa)isa_limit;
}

void dtkd_set_isa_limit(enum dtkd_isa limit) { isa_limit = (int)limit; }

const char *dtkd_isa_name(enum dtkd_isa isa)
{
    switch (isa) {
    case DTKD_ISA_AVX512: return "avx512";
    case DTKD_ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}
