/* CPU detection: which SIMD path the kernels may take, and the facts the GEMM blocking model
 * (csrc/kernels/gemm_blocking.c) derives its parameters from -- vendor, family/model, cache
 * sizes and associativity (from Linux's sysfs /sys/devices/system/cpu/cpu0/cache, else CPUID
 * leaf 4 on Intel / 0x8000001D on AMD, else conservative defaults; the source is reported).
 *
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

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

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

/* ---- identification and caches ---- */

static struct dtkd_cpu_info info;
static pthread_once_t info_once = PTHREAD_ONCE_INIT;

static void identify(struct dtkd_cpu_info *ci)
{
    strcpy(ci->vendor, "unknown");
    strcpy(ci->brand, "unknown");
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (__get_cpuid(0, &a, &b, &c, &d)) {
        memcpy(ci->vendor, &b, 4);
        memcpy(ci->vendor + 4, &d, 4);
        memcpy(ci->vendor + 8, &c, 4);
        ci->vendor[12] = '\0';
    }
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        int family = (a >> 8) & 0xf, model = (a >> 4) & 0xf;
        if (family == 0xf) family += (a >> 20) & 0xff;
        if (family == 0x6 || family >= 0xf) model += ((a >> 16) & 0xf) << 4;
        ci->family = family;
        ci->model = model;
        ci->stepping = a & 0xf;
    }
    unsigned max_ext = __get_cpuid_max(0x80000000, NULL);
    if (max_ext >= 0x80000004) {
        unsigned regs[12];
        for (unsigned i = 0; i < 3; i++)
            __get_cpuid(0x80000002 + i, &regs[4 * i], &regs[4 * i + 1], &regs[4 * i + 2],
                        &regs[4 * i + 3]);
        char raw[49];
        memcpy(raw, regs, 48);
        raw[48] = '\0';
        const char *s = raw;
        while (*s == ' ') s++; /* some brand strings are right-aligned */
        snprintf(ci->brand, sizeof ci->brand, "%s", s);
        for (size_t n = strlen(ci->brand); n > 0 && ci->brand[n - 1] == ' '; n--)
            ci->brand[n - 1] = '\0';
    }
#elif defined(__aarch64__)
    strcpy(ci->vendor, "arm");
#endif
}

static long read_long(const char *dir, const char *name, int *ok)
{
    char path[256], buf[64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(buf, sizeof buf, f)) {
        if (f) fclose(f);
        *ok = 0;
        return 0;
    }
    fclose(f);
    char *end;
    long v = strtol(buf, &end, 10);
    if (*end == 'K') v *= 1024;
    else if (*end == 'M') v *= 1024 * 1024;
    return v;
}

/* CPUs in a sysfs list such as "0-1,4,6-7". */
static int count_cpu_list(const char *s)
{
    int count = 0;
    while (*s && *s != '\n') {
        char *end;
        long lo = strtol(s, &end, 10), hi = lo;
        if (end == s) break;
        s = end;
        if (*s == '-') hi = strtol(s + 1, &end, 10), s = end;
        count += (int)(hi - lo + 1);
        if (*s == ',') s++;
    }
    return count;
}

static int caches_from_sysfs(struct dtkd_cpu_info *ci)
{
    int found = 0;
    for (int i = 0; i < 8; i++) {
        char dir[128], type[32] = "", shared[256] = "";
        snprintf(dir, sizeof dir, "/sys/devices/system/cpu/cpu0/cache/index%d", i);
        int ok = 1;
        long level = read_long(dir, "level", &ok);
        char path[192];
        snprintf(path, sizeof path, "%s/type", dir);
        FILE *f = fopen(path, "r");
        if (!ok || !f) {
            if (f) fclose(f);
            continue;
        }
        if (!fgets(type, sizeof type, f)) type[0] = '\0';
        fclose(f);
        if (!strncmp(type, "Instruction", 11)) continue;
        struct dtkd_cache_level cl = {0};
        cl.size = read_long(dir, "size", &ok);
        cl.ways = (int)read_long(dir, "ways_of_associativity", &ok);
        cl.line = (int)read_long(dir, "coherency_line_size", &ok);
        snprintf(path, sizeof path, "%s/shared_cpu_list", dir);
        f = fopen(path, "r");
        if (f) {
            if (fgets(shared, sizeof shared, f)) cl.shared_by = count_cpu_list(shared);
            fclose(f);
        }
        if (!ok || cl.size <= 0 || cl.ways <= 0 || cl.line <= 0) continue;
        if (cl.shared_by < 1) cl.shared_by = 1;
        if (level == 1) ci->l1d = cl, found |= 1;
        else if (level == 2) ci->l2 = cl, found |= 2;
        else if (level == 3) ci->l3 = cl, found |= 4;
    }
    return (found & 3) == 3;
}

static int caches_from_cpuid(struct dtkd_cpu_info *ci)
{
#if defined(__x86_64__) || defined(__i386__)
    unsigned leaf;
    if (!strcmp(ci->vendor, "GenuineIntel")) leaf = 4;
    else if (!strcmp(ci->vendor, "AuthenticAMD") && __get_cpuid_max(0x80000000, NULL) >= 0x8000001D)
        leaf = 0x8000001D;
    else return 0;
    int found = 0;
    for (unsigned sub = 0; sub < 8; sub++) {
        unsigned a, b, c, d;
        __cpuid_count(leaf, sub, a, b, c, d);
        unsigned type = a & 0x1f, level = (a >> 5) & 0x7;
        if (type == 0) break;
        if (type == 2) continue; /* instruction cache */
        struct dtkd_cache_level cl;
        cl.ways = (int)((b >> 22) & 0x3ff) + 1;
        cl.line = (int)(b & 0xfff) + 1;
        long partitions = ((b >> 12) & 0x3ff) + 1, sets = (long)c + 1;
        cl.size = (long)cl.ways * partitions * cl.line * sets;
        cl.shared_by = (int)((a >> 14) & 0xfff) + 1;
        if (level == 1) ci->l1d = cl, found |= 1;
        else if (level == 2) ci->l2 = cl, found |= 2;
        else if (level == 3) ci->l3 = cl, found |= 4;
    }
    return (found & 3) == 3;
#else
    return 0;
#endif
}

static void detect(void)
{
    identify(&info);
    if (caches_from_sysfs(&info)) info.cache_source = "sysfs";
    else if (caches_from_cpuid(&info)) info.cache_source = "cpuid";
    else {
        /* Typical of every x86-64 and arm64 server core of the last decade. */
        info.l1d = (struct dtkd_cache_level){32 * 1024, 8, 64, 1};
        info.l2 = (struct dtkd_cache_level){512 * 1024, 8, 64, 1};
        info.cache_source = "default";
    }
    if (info.l3.size <= 0) info.l3 = (struct dtkd_cache_level){0, 0, 64, 1};
}

const struct dtkd_cpu_info *dtkd_cpu_info(void)
{
    pthread_once(&info_once, detect);
    return &info;
}
