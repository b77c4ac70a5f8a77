/* gemm_blocking.c -- the SGEMM's blocking and micro-kernel, derived at run time from the CPU
 * (BLIS-style analytical model: Low, Igual, Smith, Quintana-Orti, "Analytical Modeling Is Enough
 * for High-Performance BLIS", ACM TOMS 43(2), 2016), instead of one CPU's constants.
 *
 * Inputs (dtkd_sgemm_machine): the data caches (size, ways, line, sharing: csrc/runtime/cpu.c),
 * the vector width and register count of the instruction set, and the number of independent
 * FMAs needed to hide the FMA latency, measured (fma_peak.c: latency x pipes, e.g. 4 x 2 = 8 on
 * Zen 3 with AVX2, 4 x 1 on Zen 4 with AVX-512, whose 512-bit FMA is two 256-bit halves).
 *
 * Model, in dtkd's row-major terms (A micro-panel kc x mr broadcast, B micro-panel kc x nr
 * loaded as vectors; gemm.c's macro-kernel keeps one B micro-panel in L1 while A micro-panels
 * stream from L2):
 *   register tile  accumulators mr*nr/vec >= fma_in_flight (else the FMA pipes idle on
 *                  latency), accumulators + nr/vec + 1 <= registers;
 *   kc (L1)        the largest kc whose A and B micro-panels, each rounded up to whole cache
 *                  ways, fit in L1's ways minus one (the paper keeps one way for the C tile
 *                  and the next panel's stream); the smallest kc of a path's
 *                  micro-kernels is used by all of them (shared_model_kc: kc fixes the
 *                  rounding);
 *   mc (L2)        the packed A block (mc x kc) fills L2's ways minus one, minus the ways of a
 *                  B micro-panel, and stays within the first-level data TLB's reach
 *                  (L1_DTLB_REACH): the A block is streamed once per B micro-panel, and
 *                  beyond that reach every pass walks the second-level TLB. Measured on a
 *                  Zen 4 (1 MB L2, so the L2 term alone gave mc 612-1224): SGEMM 1024^3 at
 *                  0.50 (AVX2 6x16) / 0.77 (AVX-512 8x32) of the FMA peak with the L2 term,
 *                  0.82 / 0.87 with the A block at 256 KB (benchmarks/RESULTS.md, 2026-12-07);
 *                  on a 512 KB L2 (Zen 3) the L2 term is the smaller one for kc >= 256;
 *   nc (L3)        the packed B block (kc x nc) fills this thread's share of L3's ways minus
 *                  one (each thread packs its own B block), at most 4096 columns; without an
 *                  L3, 4096.
 * Among an instruction set's micro-kernels, dtkd_sgemm_choose takes per call the one with the
 * least padded tile area over efficiency: edge tiles are computed in full, so a 4 x 24 tile
 * wastes nothing on a 64-row conv GEMM but half its columns on a 16-column Winograd GEMM. */
#include "kernels/gemm.h"

#include <pthread.h>
#include <string.h>

#define NC_MAX 4096
/* Floats the first-level data TLB maps with 4 KB pages: 64 entries, the smallest L1 DTLB of
 * the x86 cores dtkd targets (Haswell to Golden Cove 64, Zen 1-3 64, Zen 4 72); a floor, so a
 * larger TLB only leaves some reach unused. */
#define L1_DTLB_REACH (64L * 4096 / (long)sizeof(float))
#define KC_STEP 16 /* kc a multiple of 16: the k loops and packing stay aligned */

static long ceil_div(long a, long b) { return (a + b - 1) / b; }

double dtkd_sgemm_tile_efficiency(const struct dtkd_sgemm_machine *m, int mr, int nr)
{
    const int vec = m->vector_floats > 0 ? m->vector_floats : 1;
    const int acc = mr * ceil_div(nr, vec);
    if (acc + ceil_div(nr, vec) + 1 > m->registers) return 0.0;
    return m->fma_in_flight <= acc ? 1.0 : acc / m->fma_in_flight;
}

/* The largest kc whose A and B micro-panels, rounded up to whole L1 ways, leave one way free. */
static long model_kc(const struct dtkd_sgemm_machine *m, int mr, int nr)
{
    const long way1 = m->l1d.size / (m->l1d.ways > 0 ? m->l1d.ways : 1) / (long)sizeof(float);
    long k = KC_STEP;
    for (long t = KC_STEP; t <= 2048; t += KC_STEP)
        if (ceil_div(t * mr, way1) + ceil_div(t * nr, way1) <= m->l1d.ways - 1) k = t;
    return k;
}

void dtkd_sgemm_blocking_for_kc(const struct dtkd_sgemm_machine *m, int mr, int nr, long k,
                                long *mc, long *nc)
{
    const long way2 = m->l2.size / (m->l2.ways > 0 ? m->l2.ways : 1) / (long)sizeof(float);
    long a_ways = m->l2.ways - 1 - ceil_div(k * nr, way2);
    if (a_ways < 1) a_ways = 1;
    long mcv = a_ways * way2 / k / mr * mr;
    const long tlb_mc = L1_DTLB_REACH / k / mr * mr;
    if (mcv > tlb_mc) mcv = tlb_mc;
    if (mcv < mr) mcv = mr;
    long ncv = NC_MAX;
    if (m->l3.size > 0 && m->l3.ways > 1) {
        const long way3 = m->l3.size / m->l3.ways / (long)sizeof(float);
        const long share = m->l3.shared_by > 0 ? m->l3.shared_by : 1;
        /* one way for A blocks and C streaming; the rest split among the sharing threads */
        long floats = (m->l3.ways - 1) * way3 / share;
        long fit = floats / k / nr * nr;
        if (fit < ncv) ncv = fit;
    }
    ncv = ncv / nr * nr;
    if (ncv < nr) ncv = nr;
    *mc = mcv;
    *nc = ncv;
}

void dtkd_sgemm_blocking_model(const struct dtkd_sgemm_machine *m, int mr, int nr, long *kc,
                               long *mc, long *nc)
{
    *kc = model_kc(m, mr, nr);
    dtkd_sgemm_blocking_for_kc(m, mr, nr, *kc, mc, nc);
}

/* ---- per-ISA configurations, derived once ---- */

#define MAX_KERNELS 4

struct isa_configs {
    int ready, count;
    int forced; /* >= 0: dtkd_sgemm_choose returns cfg[forced] (autotune, tests) */
    long model_kc; /* the kc every micro-kernel of this path shares (see shared_model_kc) */
    struct dtkd_sgemm_machine machine;
    struct dtkd_sgemm_config cfg[MAX_KERNELS];
};

/* One kc for all micro-kernels of a path, the smallest of their L1 kc's (so every kernel's
 * panels fit): the K dimension is summed in kc-long blocks, so kc fixes the rounding, and the
 * kernel is chosen per GEMM by its M and N, which hold the batch (a conv's N is batch x pixels).
 * With one kc per kernel a sample's logits changed in their last bits with the batch it was in
 * (seen on a Zen 3, whose AVX2 path has a 6x16 kernel at kc 320 and a 4x24 at kc 256), which
 * the teacher-logit cache's bitwise guarantee rules out. */
static long shared_model_kc(const struct isa_configs *s)
{
    long k = 0;
    for (int i = 0; i < s->count; i++) {
        long ki = model_kc(&s->machine, s->cfg[i].mr, s->cfg[i].nr);
        if (k == 0 || ki < k) k = ki;
    }
    return k > 0 ? k : KC_STEP;
}

static struct isa_configs configs[3];
static pthread_mutex_t configs_lock = PTHREAD_MUTEX_INITIALIZER;

static void derive(enum dtkd_isa isa, struct isa_configs *s)
{
    const struct dtkd_cpu_info *ci = dtkd_cpu_info();
    const struct dtkd_sgemm_kernel_desc *list = isa == DTKD_ISA_AVX512 ? dtkd_sgemm_kernels_avx512
                                              : isa == DTKD_ISA_AVX2   ? dtkd_sgemm_kernels_avx2
                                                                       : dtkd_sgemm_kernels_scalar;
    s->machine.l1d = ci->l1d;
    s->machine.l2 = ci->l2;
    s->machine.l3 = ci->l3;
    s->machine.vector_floats = isa == DTKD_ISA_AVX512 ? 16 : isa == DTKD_ISA_AVX2 ? 8 : 4;
    s->machine.registers = isa == DTKD_ISA_AVX512 ? 32 : 16;
    double in_flight = dtkd_fma_in_flight(isa);
    /* a failed or absurd probe (a heavily loaded machine): the common latency 4 x 2 pipes */
    s->machine.fma_in_flight = in_flight >= 1.0 && in_flight <= 32.0 ? in_flight : 8.0;
    s->count = 0;
    for (int i = 0; list[i].fn && s->count < MAX_KERNELS; i++) {
        double eff = dtkd_sgemm_tile_efficiency(&s->machine, list[i].mr, list[i].nr);
        if (eff <= 0.0) continue;
        struct dtkd_sgemm_config *c = &s->cfg[s->count++];
        memset(c, 0, sizeof *c);
        c->mr = list[i].mr;
        c->nr = list[i].nr;
        c->kernel = list[i].fn;
        c->efficiency = eff;
        c->pack_8rows = isa == DTKD_ISA_SCALAR ? NULL : dtkd_sgemm_pack_8rows_avx2;
    }
    s->model_kc = shared_model_kc(s);
    for (int i = 0; i < s->count; i++) {
        struct dtkd_sgemm_config *c = &s->cfg[i];
        c->kc = s->model_kc;
        dtkd_sgemm_blocking_for_kc(&s->machine, c->mr, c->nr, c->kc, &c->mc, &c->nc);
    }
}

static struct isa_configs *get(enum dtkd_isa isa)
{
    struct isa_configs *s = &configs[isa];
    if (__atomic_load_n(&s->ready, __ATOMIC_ACQUIRE)) return s;
    pthread_mutex_lock(&configs_lock);
    if (!s->ready) {
        derive(isa, s);
        s->forced = -1;
        __atomic_store_n(&s->ready, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&configs_lock);
    return s;
}

const struct dtkd_sgemm_config *dtkd_sgemm_configs(enum dtkd_isa isa, int *count)
{
    struct isa_configs *s = get(isa);
    *count = s->count;
    return s->cfg;
}

const struct dtkd_sgemm_machine *dtkd_sgemm_machine(enum dtkd_isa isa)
{
    return &get(isa)->machine;
}

const struct dtkd_sgemm_config *dtkd_sgemm_choose(enum dtkd_isa isa, long M, long N)
{
    struct isa_configs *s = get(isa);
    const int forced = __atomic_load_n(&s->forced, __ATOMIC_RELAXED);
    if (forced >= 0 && forced < s->count) return &s->cfg[forced];
    const struct dtkd_sgemm_config *best = &s->cfg[0];
    double best_cost = -1.0;
    for (int i = 0; i < s->count; i++) {
        const struct dtkd_sgemm_config *c = &s->cfg[i];
        double cost = (double)(ceil_div(M, c->mr) * c->mr) * (double)(ceil_div(N, c->nr) * c->nr) /
                      c->efficiency;
        if (best_cost < 0.0 || cost < best_cost * 0.999) best = c, best_cost = cost;
    }
    return best;
}

int dtkd_sgemm_set_blocking(enum dtkd_isa isa, int index, long kc, long mc, long nc)
{
    if ((int)isa < 0 || isa > DTKD_ISA_AVX512) return DTKD_ERR_VALUE;
    struct isa_configs *s = get(isa);
    if (index < 0 || index >= s->count) return DTKD_ERR_VALUE;
    struct dtkd_sgemm_config *c = &s->cfg[index];
    pthread_mutex_lock(&configs_lock);
    if (kc <= 0 && mc <= 0 && nc <= 0) {
        kc = s->model_kc;
        dtkd_sgemm_blocking_for_kc(&s->machine, c->mr, c->nr, kc, &c->mc, &c->nc);
        c->tuned = 0;
    } else if (kc < 1 || kc > 8192 || mc < c->mr || mc > 8192 || nc < c->nr || nc > 65536) {
        pthread_mutex_unlock(&configs_lock);
        return DTKD_ERR_VALUE;
    } else {
        c->mc = mc / c->mr * c->mr;
        c->nc = nc / c->nr * c->nr;
        c->tuned = 1;
    }
    /* kc is the path's, not the kernel's (shared_model_kc) */
    for (int i = 0; i < s->count; i++) s->cfg[i].kc = kc;
    pthread_mutex_unlock(&configs_lock);
    return DTKD_OK;
}

int dtkd_sgemm_force_kernel(enum dtkd_isa isa, int index)
{
    if ((int)isa < 0 || isa > DTKD_ISA_AVX512) return DTKD_ERR_VALUE;
    struct isa_configs *s = get(isa);
    if (index < -1 || index >= s->count) return DTKD_ERR_VALUE;
    __atomic_store_n(&s->forced, index, __ATOMIC_RELAXED);
    return DTKD_OK;
}
