/* Channel concatenation + shuffle (see channels.h). The shuffle with G groups sends channel
 * c = i * (C/G) + j of the concatenation (group i, member j) to output channel j * G + i; its
 * inverse is the shuffle with C/G groups. The backward is the same gather run the other way. */
#include "dtkd.h"
#include "kernels/channels.h"

#include <string.h>

int dtkd_concat_shuffle_dims(long *C, const struct dtkd_channel_part *parts, int nparts, long N,
                             long HW, long G)
{
    if (nparts < 1 || N < 1 || HW < 1 || G < 1) return DTKD_ERR_SHAPE;
    long c = 0;
    for (int k = 0; k < nparts; k++) {
        const struct dtkd_channel_part *p = &parts[k];
        if (!p->data || p->offset < 0 || p->count < 1 || p->offset + p->count > p->total)
            return DTKD_ERR_SHAPE;
        c += p->count;
    }
    if (c % G) return DTKD_ERR_SHAPE;
    *C = c;
    return DTKD_OK;
}

/* The part holding concatenated channel c, and c's channel index inside that part's array. */
static const struct dtkd_channel_part *locate(const struct dtkd_channel_part *parts, int nparts,
                                              long c, long *channel)
{
    int k = 0;
    while (k < nparts - 1 && c >= parts[k].count) c -= parts[k++].count;
    *channel = parts[k].offset + c;
    return &parts[k];
}

int dtkd_concat_shuffle_forward(float *y, const struct dtkd_channel_part *parts, int nparts,
                                long N, long HW, long G)
{
    long C;
    if (dtkd_concat_shuffle_dims(&C, parts, nparts, N, HW, G)) return DTKD_ERR_SHAPE;
    long per_group = C / G;
    /* one output plane (n, o) per iteration: o = j * G + i reads concatenated channel i*(C/G)+j */
#pragma omp parallel for schedule(static) if (N * C * HW > 32768) num_threads(dtkd_get_num_threads())
    for (long plane = 0; plane < N * C; plane++) {
        long n = plane / C, o = plane % C, channel;
        const struct dtkd_channel_part *p = locate(parts, nparts, (o % G) * per_group + o / G,
                                                   &channel);
        memcpy(y + plane * HW, p->data + (n * p->total + channel) * HW, (size_t)HW * sizeof(float));
    }
    return DTKD_OK;
}

int dtkd_concat_shuffle_backward(const struct dtkd_channel_part *dparts, int nparts,
                                 const float *dy, long N, long HW, long G)
{
    long C;
    if (dtkd_concat_shuffle_dims(&C, dparts, nparts, N, HW, G)) return DTKD_ERR_SHAPE;
    long per_group = C / G;
    /* one concatenated plane (n, c) per iteration: c = i*(C/G) + j came from output j*G + i */
#pragma omp parallel for schedule(static) if (N * C * HW > 32768) num_threads(dtkd_get_num_threads())
    for (long plane = 0; plane < N * C; plane++) {
        long n = plane / C, c = plane % C, channel;
        const struct dtkd_channel_part *p = locate(dparts, nparts, c, &channel);
        long o = (c % per_group) * G + c / per_group;
        memcpy(p->data + (n * p->total + channel) * HW, dy + (n * C + o) * HW,
               (size_t)HW * sizeof(float));
    }
    return DTKD_OK;
}
