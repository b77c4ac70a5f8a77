"""Neural-network layers with explicit forward and backward, backed by C kernels (dtkd._C).

    import numpy as np, dtkd.nn as nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    logits = net(x)                 # x: float32 (N, 3, H, W), C-contiguous
    dx = net.backward(dlogits)      # parameter gradients accumulate in p.grad
    net.zero_grad()
    with nn.no_grad():              # evaluation / a KD teacher: nothing kept for backward
        logits = net.eval()(x)

3x3 stride-1 convolutions run by Winograd F(4x4, 3x3) (forward, input gradient, and the weight
gradient of layers with at least 32 channels); ``nn.set_conv_algorithm('exact_weight_grad')``
keeps every weight gradient an exact sum, ``'direct'`` makes every convolution the exact
im2col + SGEMM one (``'auto'`` is the default).

Parameters are float32 NumPy arrays in PyTorch's layout and ``state_dict()`` uses PyTorch's
names, so weights move between the two one to one.
"""
from . import init
from .activation import ReLU
from .batchnorm import BatchNorm2d
from .channels import ChannelShuffle, channel_slice, concat_shuffle, concat_shuffle_backward
from .conv import Conv2d, get_conv_algorithm, set_conv_algorithm
from .grad_mode import is_grad_enabled, no_grad
from .linear import Flatten, Identity, Linear
from .module import IncompatibleKeys, Module, Parameter, Sequential
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = ["Parameter", "Module", "Sequential", "IncompatibleKeys", "Conv2d", "BatchNorm2d",
           "ReLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Linear", "Flatten", "Identity",
           "ChannelShuffle", "concat_shuffle", "concat_shuffle_backward", "channel_slice",
           "init", "no_grad", "is_grad_enabled", "set_conv_algorithm", "get_conv_algorithm"]
