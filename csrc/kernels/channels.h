/* channels.h -- channel concatenation, split and shuffle over NCHW activations, as one plane
 * gather: y = shuffle_G(cat(part_0, part_1, ...)) (torch.cat(dim=1), then ShuffleNet's channel
 * shuffle x.reshape(N, G, C/G, H, W).permute(0, 2, 1, 3, 4).reshape(N, C, H, W)).
 * G = 1 is a plain concatenation; one part with G = 1 is a channel slice (a split's copy).
 * Each part is a channel range of a larger array, so a slice of an activation is read (and
 * its gradient written) in place, without a copy first. Every (n, c) plane is one memcpy of HW
 * floats; planes run in parallel. */
#ifndef DTKD_CHANNELS_H
#define DTKD_CHANNELS_H

/* Channels [offset, offset + count) of an (N, total, HW) array. */
struct dtkd_channel_part {
    float *data;
    long total, offset, count;
};

/* Checks: nparts >= 1, N, HW >= 1, every part's 0 <= offset, count >= 1, offset + count <= total,
 * G >= 1 dividing C = sum of counts. DTKD_OK or DTKD_ERR_SHAPE. Fills *C. */
int dtkd_concat_shuffle_dims(long *C, const struct dtkd_channel_part *parts, int nparts, long N,
                             long HW, long G);

// y (N, C, HW) = shuffle_G(cat over parts of part.data[:, offset:offset+count]) ; parts read-only
int dtkd_concat_shuffle_forward(float *y, const struct dtkd_channel_part *parts, int nparts,
                                long N, long HW, long G);

// dparts[k].data[:, offset:offset+count] = the part's channels of unshuffle_G(dy (N, C, HW))
// (written, not accumulated; the other channels of each array are left untouched)
int dtkd_concat_shuffle_backward(const struct dtkd_channel_part *dparts, int nparts,
                                 const float *dy, long N, long HW, long G);

#endif
