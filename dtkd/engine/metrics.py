"""Evaluation metrics on logits (vectorised NumPy; evaluation is not the hot path)."""
import numpy as np

__all__ = ["topk_correct", "cross_entropy_sum"]


def topk_correct(logits, labels, ks=(1, 5)):
    """Number of samples whose label is among the k highest logits, for each k in ``ks``.

    Ties are broken towards the lower class index (as a stable sort would). k larger than the
    number of classes counts every sample.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    # Rank of the true class = number of classes with a strictly larger logit, plus those equal
    # with a smaller index.
    true = np.take_along_axis(logits, labels[:, None], axis=1)
    cls = np.arange(logits.shape[1])[None, :]
    rank = ((logits > true) | ((logits == true) & (cls < labels[:, None]))).sum(axis=1)
    return [int((rank < k).sum()) for k in ks]


def cross_entropy_sum(logits, labels):
    """Sum over the batch of -log softmax(logits)[label], computed max-shifted in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float((log_norm - z[np.arange(len(labels)), labels]).sum())
