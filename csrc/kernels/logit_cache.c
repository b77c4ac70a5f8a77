/* logit_cache.c -- lookup and insert in the teacher-logit cache's slot table (see
 * logit_cache.h for the slot layout and why concurrent writers can neither tear nor duplicate
 * an entry). Tags are read with acquire loads and published with release stores (GCC/Clang
 * __atomic builtins), which is what makes this safe across processes sharing a mapped file on
 * any architecture, not only x86's ordered stores. */
#include "kernels/logit_cache.h"

#include <math.h>
#include <string.h>

#include "dtkd.h"

#define TAG_CLAIMED 1u
#define TAG_READY 2u
#define KEY_LIMIT ((int64_t)1 << 61)  /* keys + 1 must fit in 61 bits next to the 2 state bits */

long dtkd_logit_cache_slot_bytes(long classes, int half)
{
    const long bytes = 8 + classes * (half ? 2 : 4);
    return (bytes + 7) / 8 * 8;
}

/* float32 -> float16 bits, round to nearest, ties to even; NaN stays NaN, overflow -> Inf. */
static uint16_t dtkd_float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)  /* Inf, or NaN (quiet, payload's top bits kept) */
        return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u);
    if (ax >= 0x477ff000u)  /* >= 65520 = 65504 + half an ulp: rounds to Inf */
        return sign | 0x7c00u;
    if (ax >= 0x38800000u) {  /* >= 2^-14: a normal half. Rebias the exponent, round the mantissa;
                               * a carry out of the mantissa correctly bumps the exponent. */
        uint32_t h = ((ax >> 23) - 112u) << 10 | ((ax >> 13) & 0x3ffu);
        const uint32_t rest = ax & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
        return sign | (uint16_t)h;
    }
    if (ax < 0x33000000u)  /* <= 2^-25 (half the smallest subnormal; a tie goes to even 0) */
        return sign;
    /* A half subnormal counts units of 2^-24: the float is mant * 2^(e - 150), that is
     * mant >> (126 - e) units, rounded on the bits shifted out. */
    const uint32_t e = ax >> 23, mant = (ax & 0x7fffffu) | 0x800000u, shift = 126u - e;
    uint32_t h = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

static float dtkd_half_to_float(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    uint32_t x;
    if (exp == 0x1fu) {
        x = sign | 0x7f800000u | mant << 13;
    } else if (exp != 0) {
        x = sign | (exp + 112u) << 23 | mant << 13;
    } else {  /* zero or subnormal: mant units of 2^-24, exact in float */
        const float v = (float)mant * 5.9604644775390625e-08f;
        memcpy(&x, &v, sizeof x);
        x |= sign;
    }
    float f;
    memcpy(&f, &x, sizeof f);
    return f;
}

/* splitmix64's finalizer: spreads consecutive keys over the sets. */
static uint64_t mix(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int check_table(const struct dtkd_logit_table *t, long B)
{
    if (B < 0 || t->nsets <= 0 || t->ways <= 0 || t->classes <= 0 ||
        t->slot_bytes < dtkd_logit_cache_slot_bytes(t->classes, t->half) || t->slot_bytes % 8 ||
        (t->direct && t->ways != 1) || ((uintptr_t)t->slots % 8))
        return DTKD_ERR_SHAPE;
    return DTKD_OK;
}

/* The first slot of key k's set (k = sample key + 1), or NULL if a direct table lacks it. */
static unsigned char *set_of(const struct dtkd_logit_table *t, uint64_t k)
{
    const uint64_t set = t->direct ? k - 1 : mix(k) % (uint64_t)t->nsets;
    if (set >= (uint64_t)t->nsets) return NULL;
    return t->slots + (size_t)set * (size_t)t->ways * (size_t)t->slot_bytes;
}

int dtkd_logit_cache_lookup(float *out, uint8_t *hit, const struct dtkd_logit_table *t,
                            const int64_t *keys, long B)
{
    int status = check_table(t, B);
    if (status != DTKD_OK) return status;
    for (long b = 0; b < B; b++)
        if (keys[b] < 0 || keys[b] >= KEY_LIMIT - 1) return DTKD_ERR_VALUE;
    const long C = t->classes;
    for (long b = 0; b < B; b++) {
        const uint64_t k = (uint64_t)keys[b] + 1;
        unsigned char *slot = set_of(t, k);
        if (!slot) return DTKD_ERR_SHAPE;
        hit[b] = 0;
        for (long w = 0; w < t->ways; w++, slot += t->slot_bytes) {
            const uint64_t tag = __atomic_load_n((uint64_t *)slot, __ATOMIC_ACQUIRE);
            if (tag == (k << 2 | TAG_READY)) {
                float *dst = out + b * C;
                if (t->half) {
                    const uint16_t *src = (const uint16_t *)(slot + 8);
                    for (long c = 0; c < C; c++) dst[c] = dtkd_half_to_float(src[c]);
                } else {
                    memcpy(dst, slot + 8, (size_t)C * sizeof(float));
                }
                hit[b] = 1;
                break;
            }
            /* Ways are claimed in order and never freed: an empty way ends the set's keys;
             * the key claimed but not yet published is a miss for now. */
            if (tag == 0 || tag >> 2 == k) break;
        }
    }
    return DTKD_OK;
}

int dtkd_logit_cache_insert(uint8_t *status_out, const struct dtkd_logit_table *t,
                            const float *logits, const int64_t *keys, const uint8_t *mask, long B)
{
    int status = check_table(t, B);
    if (status != DTKD_OK) return status;
    for (long b = 0; b < B; b++)
        if (keys[b] < 0 || keys[b] >= KEY_LIMIT - 1) return DTKD_ERR_VALUE;
    const long C = t->classes;
    for (long b = 0; b < B; b++) {
        status_out[b] = 0;
        if (mask && !mask[b]) continue;
        const float *src = logits + b * C;
        int storable = 1;
        for (long c = 0; c < C; c++)
            if (!isfinite(src[c]) || (t->half && fabsf(src[c]) >= 65520.0f)) storable = 0;
        if (!storable) {
            status_out[b] = 4;
            continue;
        }
        const uint64_t k = (uint64_t)keys[b] + 1;
        unsigned char *slot = set_of(t, k);
        if (!slot) return DTKD_ERR_SHAPE;
        status_out[b] = 3;  /* unless a way is found below */
        for (long w = 0; w < t->ways; w++, slot += t->slot_bytes) {
            uint64_t *tag = (uint64_t *)slot;
            uint64_t seen = __atomic_load_n(tag, __ATOMIC_ACQUIRE);
            if (seen == 0) {
                uint64_t expected = 0;
                if (__atomic_compare_exchange_n(tag, &expected, k << 2 | TAG_CLAIMED, 0,
                                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                    if (t->half) {
                        uint16_t *dst = (uint16_t *)(slot + 8);
                        for (long c = 0; c < C; c++) dst[c] = dtkd_float_to_half(src[c]);
                    } else {
                        memcpy(slot + 8, src, (size_t)C * sizeof(float));
                    }
                    __atomic_store_n(tag, k << 2 | TAG_READY, __ATOMIC_RELEASE);
                    status_out[b] = 1;
                    break;
                }
                seen = expected;  /* another writer claimed this way first: whose key? */
            }
            if (seen >> 2 == k) {
                status_out[b] = 2;
                break;
            }
        }
    }
    return DTKD_OK;
}
