"""The paper's convolutional networks in Flax NNX, with torchvision's (and akamaster's CIFAR)
layer names: AlexNet, VGG-16, ResNet-18/50 and ResNet-20 for CIFAR-10.

Images are NHWC; before a fully connected layer, maps are flattened in PyTorch's (C, H, W)
order so that its weights need no permutation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdissect.models.layers import batch_norm_layer, conv_layer


def _max_pool(x, kernel, stride, padding=0):
    pad = ((padding, padding), (padding, padding))
    return nnx.max_pool(x, (kernel, kernel), (stride, stride), padding=pad)


def _adaptive_avg_pool(x, size):
    """PyTorch's AdaptiveAvgPool2d: bins [floor(i H / n), ceil((i + 1) H / n))."""
    height, width = x.shape[1:3]
    if (height, width) == (size, size):
        return x
    rows = []
    for i in range(size):
        r0, r1 = (i * height) // size, -((-(i + 1) * height) // size)
        cols = []
        for j in range(size):
            c0, c1 = (j * width) // size, -((-(j + 1) * width) // size)
            cols.append(x[:, r0:r1, c0:c1].mean(axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


def _flatten_chw(x):
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class ConvReLU(nnx.Module):
    def __init__(self, cin, cout, kernel, stride=1, padding=0, *, rngs):
        self.conv = conv_layer(cin, cout, kernel, stride, padding, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.conv(x))


class LinearReLU(nnx.Module):
    def __init__(self, din, dout, *, rngs):
        self.linear = nnx.Linear(din, dout, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.linear(x))


class AlexNet(nnx.Module):
    """torchvision's AlexNet."""

    def __init__(self, num_classes=1000, *, rngs):
        self.conv1 = ConvReLU(3, 64, 11, 4, 2, rngs=rngs)
        self.conv2 = ConvReLU(64, 192, 5, 1, 2, rngs=rngs)
        self.conv3 = ConvReLU(192, 384, 3, 1, 1, rngs=rngs)
        self.conv4 = ConvReLU(384, 256, 3, 1, 1, rngs=rngs)
        self.conv5 = ConvReLU(256, 256, 3, 1, 1, rngs=rngs)
        self.fc6 = LinearReLU(256 * 36, 4096, rngs=rngs)
        self.fc7 = LinearReLU(4096, 4096, rngs=rngs)
        self.fc8 = nnx.Linear(4096, num_classes, rngs=rngs)

    def __call__(self, x):
        x = _max_pool(self.conv1(x), 3, 2)
        x = _max_pool(self.conv2(x), 3, 2)
        x = _max_pool(self.conv5(self.conv4(self.conv3(x))), 3, 2)
        x = _flatten_chw(_adaptive_avg_pool(x, 6))
        return self.fc8(self.fc7(self.fc6(x)))  # dropout is the identity at evaluation


VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16(nnx.Module):
    """torchvision's VGG-16 (no batch norm); layers conv1_1 .. conv5_3."""

    def __init__(self, num_classes=1000, *, rngs):
        cin = 3
        for stage, widths in enumerate(VGG16_STAGES, start=1):
            for index, cout in enumerate(widths, start=1):
                setattr(self, f"conv{stage}_{index}", ConvReLU(cin, cout, 3, 1, 1, rngs=rngs))
                cin = cout
        self.fc6 = LinearReLU(512 * 49, 4096, rngs=rngs)
        self.fc7 = LinearReLU(4096, 4096, rngs=rngs)
        self.fc8 = nnx.Linear(4096, num_classes, rngs=rngs)

    def __call__(self, x):
        for stage, widths in enumerate(VGG16_STAGES, start=1):
            for index in range(1, len(widths) + 1):
                x = getattr(self, f"conv{stage}_{index}")(x)
            x = _max_pool(x, 2, 2)
        x = _flatten_chw(_adaptive_avg_pool(x, 7))
        return self.fc8(self.fc7(self.fc6(x)))


class Stem(nnx.Module):
    """conv, batch norm, ReLU: a ResNet's first layer."""

    def __init__(
        self, cin, cout, kernel, stride, padding, *, rngs, batch_norm=True, kernel_init=None
    ):
        self.conv = conv_layer(
            cin,
            cout,
            kernel,
            stride,
            padding,
            bias=not batch_norm,
            rngs=rngs,
            kernel_init=kernel_init,
        )
        self.bn = batch_norm_layer(cout, rngs=rngs, enabled=batch_norm)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


class BasicBlock(nnx.Module):
    def __init__(
        self, cin, cout, stride, shortcut: str, *, rngs, batch_norm=True, kernel_init=None
    ):
        conv = functools.partial(
            conv_layer, bias=not batch_norm, rngs=rngs, kernel_init=kernel_init
        )
        self.conv1 = conv(cin, cout, 3, stride, 1)
        self.bn1 = batch_norm_layer(cout, rngs=rngs, enabled=batch_norm)
        self.conv2 = conv(cout, cout, 3, 1, 1)
        self.bn2 = batch_norm_layer(cout, rngs=rngs, enabled=batch_norm)
        self.shortcut = shortcut if (stride != 1 or cin != cout) else "identity"
        self.pad = (cout - cin) // 2
        if self.shortcut == "conv":
            self.downsample_conv = conv(cin, cout, 1, stride, 0)
            self.downsample_bn = batch_norm_layer(cout, rngs=rngs, enabled=batch_norm)

    def __call__(self, x):
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut == "conv":
            x = self.downsample_bn(self.downsample_conv(x))
        elif self.shortcut == "pad":  # "option A": subsample, zero-pad the channels
            x = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (self.pad, self.pad)))
        return jax.nn.relu(out + x)


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, cin, width, stride, shortcut: str, *, rngs):
        cout = width * 4
        self.conv1 = conv_layer(cin, width, 1, 1, 0, bias=False, rngs=rngs)
        self.bn1 = batch_norm_layer(width, rngs=rngs)
        self.conv2 = conv_layer(width, width, 3, stride, 1, bias=False, rngs=rngs)
        self.bn2 = batch_norm_layer(width, rngs=rngs)
        self.conv3 = conv_layer(width, cout, 1, 1, 0, bias=False, rngs=rngs)
        self.bn3 = batch_norm_layer(cout, rngs=rngs)
        self.has_downsample = stride != 1 or cin != cout
        if self.has_downsample:
            self.downsample_conv = conv_layer(cin, cout, 1, stride, 0, bias=False, rngs=rngs)
            self.downsample_bn = batch_norm_layer(cout, rngs=rngs)

    def __call__(self, x):
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.has_downsample:
            x = self.downsample_bn(self.downsample_conv(x))
        return jax.nn.relu(out + x)


class Stage(nnx.Module):
    """A ResNet stage (torchvision's ``layerN``): its output is its last block's."""

    def __init__(self, blocks):
        self.blocks = nnx.List(blocks)

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class ResNet(nnx.Module):
    """torchvision's ResNet-18/34 (basic blocks) and ResNet-50 (bottlenecks)."""

    def __init__(self, block: str, depths, num_classes=1000, *, rngs):
        self.conv1 = Stem(3, 64, 7, 2, 3, rngs=rngs)
        cin = 64
        for index, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512), strict=True)):
            blocks = []
            for b in range(depth):
                stride = 2 if (b == 0 and index > 0) else 1
                if block == "basic":
                    blocks.append(BasicBlock(cin, width, stride, "conv", rngs=rngs))
                    cin = width
                else:
                    blocks.append(Bottleneck(cin, width, stride, "conv", rngs=rngs))
                    cin = width * 4
            setattr(self, f"layer{index + 1}", Stage(blocks))
        self.fc = nnx.Linear(cin, num_classes, rngs=rngs)

    def __call__(self, x):
        x = _max_pool(self.conv1(x), 3, 2, padding=1)
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(x.mean(axis=(1, 2)))


class ResNetCifar(nnx.Module):
    """He et al.'s CIFAR ResNet (akamaster/pytorch_resnet_cifar10): 3 stages of n basic
    blocks with 16, 32, 64 channels and "option A" shortcuts; ResNet-20 has n = 3."""

    def __init__(self, blocks_per_stage=3, num_classes=10, *, rngs):
        self.conv1 = Stem(3, 16, 3, 1, 1, rngs=rngs)
        cin = 16
        for index, width in enumerate((16, 32, 64)):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if (b == 0 and index > 0) else 1
                blocks.append(BasicBlock(cin, width, stride, "pad", rngs=rngs))
                cin = width
            setattr(self, f"layer{index + 1}", Stage(blocks))
        self.linear = nnx.Linear(64, num_classes, rngs=rngs)

    def __call__(self, x):
        for index in range(1, 4):
            x = getattr(self, f"layer{index}")(self.conv1(x) if index == 1 else x)
        return self.linear(x.mean(axis=(1, 2)))
