/* dtkd_malloc / dtkd_free: the allocation functions of dtkd's C code (64-byte aligned blocks;
 * NULL on failure, which callers turn into DTKD_ERR_NOMEM -> MemoryError). The workspace arena
 * (arena.c) takes its blocks from here. */
#include "dtkd.h"

#include <stdint.h>
#include <stdlib.h>

#define DTKD_ALIGN 64

void *dtkd_malloc(size_t bytes)
{
    if (bytes == 0) bytes = 1;
    if (bytes > SIZE_MAX - DTKD_ALIGN) return NULL;
    return aligned_alloc(DTKD_ALIGN, (bytes + DTKD_ALIGN - 1) / DTKD_ALIGN * DTKD_ALIGN);
}

void dtkd_free(void *p) { free(p); }
