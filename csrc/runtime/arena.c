/* The workspace arena: scratch memory for the kernels' workspaces (im2col columns, Winograd
 * tiles, padded rows), kept across binding calls instead of a malloc + free per call (a fresh
 * multi-MB block costs its page faults on every call: ~5-10% of a thin conv).
 *
 * A few cached blocks under a mutex: dtkd_workspace_acquire hands out the smallest free block
 * that is large enough, else grows a free one (or makes a new one); dtkd_workspace_release
 * returns it. One training thread therefore reuses one block for every call of a step; Python
 * threads calling kernels at once (the GIL is released around them) each get their own. Blocks
 * come from dtkd_malloc (alloc.c): a failure is NULL -> DTKD_ERR_NOMEM -> MemoryError.
 * dtkd_workspace_trim frees the cached blocks (dtkd._C.workspace_trim()). */
#include "dtkd.h"

#include <pthread.h>
#include <stddef.h>

#define ARENA_BLOCKS 8

struct block {
    float *ptr;
    size_t floats;
    int in_use;
};

static struct block blocks[ARENA_BLOCKS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

float *dtkd_workspace_acquire(size_t floats)
{
    if (floats == 0) floats = 1;
    pthread_mutex_lock(&lock);
    int best = -1, empty = -1, largest = -1;
    for (int i = 0; i < ARENA_BLOCKS; i++) {
        if (blocks[i].in_use) continue;
        if (!blocks[i].ptr) {
            if (empty < 0) empty = i;
            continue;
        }
        if (blocks[i].floats >= floats && (best < 0 || blocks[i].floats < blocks[best].floats))
            best = i;
        if (largest < 0 || blocks[i].floats > blocks[largest].floats) largest = i;
    }
    /* none fits: fill an empty slot, else replace the largest free block by a bigger one */
    const int spare = empty >= 0 ? empty : largest;
    float *p = NULL;
    if (best >= 0) {
        blocks[best].in_use = 1;
        p = blocks[best].ptr;
    } else if (spare >= 0) {
        dtkd_free(blocks[spare].ptr);
        blocks[spare].ptr = NULL;
        blocks[spare].floats = 0;
        p = floats > SIZE_MAX / sizeof(float) ? NULL : dtkd_malloc(floats * sizeof(float));
        if (p) {
            blocks[spare].ptr = p;
            blocks[spare].floats = floats;
            blocks[spare].in_use = 1;
        }
    } else { /* more concurrent callers than slots: an uncached block */
        p = floats > SIZE_MAX / sizeof(float) ? NULL : dtkd_malloc(floats * sizeof(float));
    }
    pthread_mutex_unlock(&lock);
    return p;
}

void dtkd_workspace_release(float *p)
{
    if (!p) return;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < ARENA_BLOCKS; i++)
        if (blocks[i].ptr == p) {
            blocks[i].in_use = 0;
            pthread_mutex_unlock(&lock);
            return;
        }
    pthread_mutex_unlock(&lock);
    dtkd_free(p); /* an uncached block */
}

size_t dtkd_workspace_trim(void)
{
    size_t freed = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < ARENA_BLOCKS; i++)
        if (blocks[i].ptr && !blocks[i].in_use) {
            freed += blocks[i].floats * sizeof(float);
            dtkd_free(blocks[i].ptr);
            blocks[i].ptr = NULL;
            blocks[i].floats = 0;
        }
    pthread_mutex_unlock(&lock);
    return freed;
}

size_t dtkd_workspace_cached_bytes(void)
{
    size_t bytes = 0;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < ARENA_BLOCKS; i++) bytes += blocks[i].floats * sizeof(float);
    pthread_mutex_unlock(&lock);
    return bytes;
}
