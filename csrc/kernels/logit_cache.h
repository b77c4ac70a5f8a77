/* logit_cache.h -- the slot table of the teacher-logit cache (dtkd/engine/logit_cache.py).
 *
 * No backward: the table stores teacher logits, which never need a gradient, so this family is
 * exempt from the forward/backward pairing the other kernel families follow.
 *
 * The table is caller-owned memory: an anonymous mapping (one process) or a shared memory-mapped
 * file (every run and process of a sweep). It is `nsets * ways` slots of `slot_bytes` bytes
 * (a multiple of 8; the table 8-byte aligned). A slot is an 8-byte tag followed by C logits
 * (float32, or float16 when `half` != 0):
 *
 *     tag == 0                   empty (a fresh zero-filled table is all empty)
 *     tag == key << 2 | 1        claimed by a writer that is copying its logits in
 *     tag == key << 2 | 2        ready: the logits are complete and never change again
 *
 * where key >= 1 is the caller's sample key plus one (keys are < 2^61). Key k lives in set
 * (k - 1) when `direct` (nsets covers every key: no collisions, ways == 1), otherwise in set
 * mix(k) % nsets, in the first of its ways that holds it.
 *
 * Concurrency (threads or processes sharing the memory): a writer claims an empty slot with an
 * atomic compare-and-swap 0 -> key|1, copies the logits, then publishes with a release store of
 * key|2; a reader acquires the tag and copies the logits only if it reads key|2, so it never sees
 * a partly written entry. Writers scan a set's ways in the same order and claim only the first
 * empty one; one that loses the race for a slot re-reads it, so a key is never stored twice.
 * Entries are never evicted or overwritten: once a set's ways are all taken, further keys of
 * that set are not stored. A writer that dies between claim and publish leaves its slot claimed
 * for good: a miss, never a wrong answer. */
#ifndef DTKD_LOGIT_CACHE_H
#define DTKD_LOGIT_CACHE_H

#include <stdint.h>

/* Where the table's geometry and element type are described to the kernels. */
struct dtkd_logit_table {
    unsigned char *slots;   /* nsets * ways * slot_bytes bytes, 8-byte aligned */
    long nsets, ways, slot_bytes, classes;
    int direct;             /* 1: key k in set k - 1 (and ways == 1) */
    int half;               /* 1: logits stored as IEEE float16, else float32 */
};

/* Bytes of one slot for `classes` logits: 8 + classes * (2 or 4), rounded up to 8. */
long dtkd_logit_cache_slot_bytes(long classes, int half);

/* Lookup. out is (B, C) float32, hit (B,) uint8, keys (B,) int64 in [0, 2^61 - 1).
 * For each sample whose key is ready in the table: hit[b] = 1 and out[b] = its logits (float16
 * converted exactly to float32); otherwise hit[b] = 0 and out[b] is left untouched.
 * Returns DTKD_OK, DTKD_ERR_SHAPE (bad sizes, or a direct table whose nsets a key exceeds) or
 * DTKD_ERR_VALUE (a key outside the range). */
int dtkd_logit_cache_lookup(float *out, uint8_t *hit, const struct dtkd_logit_table *table,
                            const int64_t *keys, long B);

/* Insert. logits (B, C) float32; keys (B,) as for lookup; mask (B,) uint8 or NULL: only samples
 * with mask[b] != 0 are offered. status (B,) uint8 receives per sample 0 not offered, 1 stored
 * by this call, 2 already present (ready or being written by another writer), 3 not stored:
 * every way of its set holds other keys, 4 not stored: a logit is not finite, or (half) its
 * magnitude exceeds float16's largest finite value. float16 rounds to nearest, ties to even.
 * Returns as lookup. */
int dtkd_logit_cache_insert(uint8_t *status, const struct dtkd_logit_table *table,
                            const float *logits, const int64_t *keys, const uint8_t *mask, long B);

#endif
