"""Layers the zoo's networks and the trained models share: convolutions with PyTorch's
padding, batch norm with PyTorch's defaults, and the Identity that stands for a disabled
layer."""

from __future__ import annotations

from flax import nnx


def conv_layer(
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    bias: bool = True,
    *,
    rngs: nnx.Rngs,
    kernel_init=None,
) -> nnx.Conv:
    """A square convolution with PyTorch's explicit symmetric padding.

    Args:
      cin, cout: input and output channels.
      kernel, stride, padding: the kernel's side, its stride and the zeros added on every
        side (PyTorch's ``Conv2d`` arguments, so imported weights give PyTorch's numbers).
      bias: whether the layer adds a bias.
      rngs: the initialisation's keys.
      kernel_init: the kernel's initialiser (default: Flax's).
    """
    init = {} if kernel_init is None else {"kernel_init": kernel_init}
    return nnx.Conv(
        cin,
        cout,
        (kernel, kernel),
        strides=stride,
        padding=((padding, padding), (padding, padding)),
        use_bias=bias,
        rngs=rngs,
        **init,
    )


class Identity(nnx.Module):
    def __call__(self, x):
        return x


def dropout(layer: nnx.Module, x, rngs: nnx.Rngs | None):
    """Dropout (its key from ``rngs``, so that training decides the keys), or the Identity
    that stands for it."""
    return layer(x, rngs=rngs) if isinstance(layer, nnx.Dropout) else layer(x)


def batch_norm_layer(features: int, *, rngs: nnx.Rngs, enabled: bool = True) -> nnx.Module:
    """Batch norm over ``features`` channels with PyTorch's ``BatchNorm2d`` defaults (its
    momentum 0.1 is Flax's 0.9; epsilon 1e-5), or the Identity that stands for it when
    ``enabled`` is false."""
    if not enabled:
        return Identity()
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)
