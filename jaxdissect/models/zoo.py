"""Flax NNX definitions of the networks the paper dissected, with the layer names people
know, and PyTorch (torchvision / akamaster) weight import.

    zoo:alexnet             conv1 .. conv5 (after ReLU), fc6, fc7, logits
    zoo:vgg16               conv1_1 .. conv5_3 (after ReLU), fc6, fc7, logits
    zoo:resnet18, resnet50  conv1 (stem after ReLU), layer1 .. layer4, logits
    zoo:resnet20-cifar10    conv1, layer1 .. layer3 (each after its last ReLU), logits
    zoo:vit_b_16, vit_s_16  block{i} (the residual stream after block i, from 0),
                            block{i}.attn (attention output, before the residual add),
                            block{i}.mlp (the MLP's hidden units after GELU), logits

Images are NHWC; convolutions use PyTorch's explicit padding so imported weights give
PyTorch's numbers. Before a fully connected layer, maps are flattened in PyTorch's (C, H, W)
order so that its weights need no permutation. A vision transformer's layers give tokens;
their patch tokens are dissected as (h, w, U) maps and the class token, not a location, is
left out. Both ViTs read torchvision's and timm's parameter names.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdissect.errors import DissectError
from jaxdissect.models.features import FeatureModel, Preprocess, from_nnx, patch_token_maps


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


class ViTAttention(nnx.Module):
    """Multi-head self-attention, returning what is added to the residual stream. ``qkv`` is
    torchvision's ``in_proj`` and timm's ``qkv``: queries, keys, then values, each split
    into heads."""

    def __init__(self, width, heads, *, rngs, kernel_init=None):
        init = {} if kernel_init is None else {"kernel_init": kernel_init}
        self.heads = heads
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs, **init)
        self.proj = nnx.Linear(width, width, rngs=rngs, **init)

    def __call__(self, x):
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads)
        out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return self.proj(out.reshape(batch, tokens, width))


class ViTMlpHidden(nnx.Module):
    """The MLP's first linear layer and GELU (exact, as PyTorch's): its hidden units."""

    def __init__(self, width, hidden, *, rngs, kernel_init=None):
        init = {} if kernel_init is None else {"kernel_init": kernel_init}
        self.fc1 = nnx.Linear(width, hidden, rngs=rngs, **init)

    def __call__(self, x):
        return jax.nn.gelu(self.fc1(x), approximate=False)


class ViTBlock(nnx.Module):
    """A pre-norm encoder block: x + attn(ln_1(x)), then + fc2(mlp(ln_2(x)))."""

    def __init__(self, width, heads, hidden, dropout_rate=0.0, *, rngs, kernel_init=None):
        init = {} if kernel_init is None else {"kernel_init": kernel_init}
        self.ln_1 = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.attn = ViTAttention(width, heads, rngs=rngs, kernel_init=kernel_init)
        self.ln_2 = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.mlp = ViTMlpHidden(width, hidden, rngs=rngs, kernel_init=kernel_init)
        self.fc2 = nnx.Linear(hidden, width, rngs=rngs, **init)
        self.dropout = nnx.Dropout(dropout_rate) if dropout_rate else Identity()

    def __call__(self, x, rngs=None):
        x = x + dropout(self.dropout, self.attn(self.ln_1(x)), rngs)
        hidden = dropout(self.dropout, self.mlp(self.ln_2(x)), rngs)
        return x + dropout(self.dropout, self.fc2(hidden), rngs)


class VisionTransformer(nnx.Module):
    """torchvision's and timm's ViT (class token, learned position embeddings, pre-norm
    blocks, the class token's final state to the head), for square images of
    ``image_size`` (the position embeddings fix it) cut into ``patch`` x ``patch`` patches.
    Blocks are ``block0`` .. ``block{depth - 1}``."""

    def __init__(
        self,
        image_size=224,
        patch=16,
        depth=12,
        width=768,
        heads=12,
        hidden=3072,
        num_classes=1000,
        dropout_rate=0.0,
        *,
        rngs,
        kernel_init=None,
    ):
        if width % heads:
            raise DissectError(f"a ViT's width {width} must be a multiple of its heads {heads}")
        self.patch, self.depth = patch, depth
        self.patch_embed = conv_layer(3, width, patch, patch, rngs=rngs, kernel_init=kernel_init)
        self.class_token = nnx.Param(jnp.zeros((1, 1, width)))
        tokens = 1 + (image_size // patch) ** 2
        self.pos_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, tokens, width)))
        for index in range(depth):
            block = ViTBlock(width, heads, hidden, dropout_rate, rngs=rngs, kernel_init=kernel_init)
            setattr(self, f"block{index}", block)
        self.ln = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x, rngs=None):
        x = self.patch_embed(x)
        batch, height, width, channels = x.shape
        expected = self.pos_embedding.shape[1] - 1
        if height * width != expected:
            raise DissectError(
                f"a {x.shape[1] * self.patch}x{x.shape[2] * self.patch} input gives "
                f"{height * width} patches; this ViT's position embeddings are for {expected}"
            )
        x = x.reshape(batch, height * width, channels)
        cls = jnp.broadcast_to(self.class_token[...], (batch, 1, channels))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embedding[...]
        for index in range(self.depth):
            x = getattr(self, f"block{index}")(x, rngs=rngs)
        return self.head(self.ln(x)[:, 0])


def vit_layers(depth: int) -> tuple[str, ...]:
    """A ViT's dissectable layers, block by block."""
    return tuple(f"block{i}{part}" for i in range(depth) for part in ("", ".attn", ".mlp"))


def as_feature_model(model: nnx.Module, preprocess: Preprocess, name: str) -> FeatureModel:
    """``from_nnx``; for a VisionTransformer, only its ``vit_layers`` and ``logits``, with
    patch tokens as (B, h, w, U) maps (the class token left out)."""
    if isinstance(model, VisionTransformer):
        return from_nnx(
            model,
            preprocess,
            name=name,
            layer_names=vit_layers(model.depth),
            convert=patch_token_maps(model.patch),
        )
    return from_nnx(model, preprocess, name=name)


# PyTorch state-dict names -> paths in these modules.
_COMMON_RULES = (
    (r"^(layer\d+)\.(\d+)\.downsample\.0\.", r"\1.blocks.\2.downsample_conv."),
    (r"^(layer\d+)\.(\d+)\.downsample\.1\.", r"\1.blocks.\2.downsample_bn."),
    (r"^(layer\d+)\.(\d+)\.", r"\1.blocks.\2."),
    (r"^conv1\.weight$", "conv1.conv.weight"),
    (r"^bn1\.", "conv1.bn."),
)
_ALEXNET_RULES = (
    (r"^features\.0\.", "conv1.conv."),
    (r"^features\.3\.", "conv2.conv."),
    (r"^features\.6\.", "conv3.conv."),
    (r"^features\.8\.", "conv4.conv."),
    (r"^features\.10\.", "conv5.conv."),
    (r"^classifier\.1\.", "fc6.linear."),
    (r"^classifier\.4\.", "fc7.linear."),
    (r"^classifier\.6\.", "fc8."),
)
_VGG16_FEATURE_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_CONVS = [
    (s, i) for s, widths in enumerate(VGG16_STAGES, 1) for i in range(1, len(widths) + 1)
]
_VGG16_RULES = (
    *(
        (rf"^features\.{index}\.", f"conv{stage}_{sub}.conv.")
        for index, (stage, sub) in zip(_VGG16_FEATURE_INDEX, _VGG16_CONVS, strict=True)
    ),
    (r"^classifier\.0\.", "fc6.linear."),
    (r"^classifier\.3\.", "fc7.linear."),
    (r"^classifier\.6\.", "fc8."),
)
_VIT_BLOCK_TV = r"^encoder\.layers\.encoder_layer_(\d+)\."
_VIT_TORCHVISION_RULES = (
    (r"^conv_proj\.", "patch_embed."),
    (r"^encoder\.pos_embedding$", "pos_embedding"),
    (_VIT_BLOCK_TV + r"ln_(\d)\.", r"block\1.ln_\2."),
    (_VIT_BLOCK_TV + r"self_attention\.in_proj_(weight|bias)$", r"block\1.attn.qkv.\2"),
    (_VIT_BLOCK_TV + r"self_attention\.out_proj\.", r"block\1.attn.proj."),
    (_VIT_BLOCK_TV + r"mlp\.(0|linear_1)\.", r"block\1.mlp.fc1."),
    (_VIT_BLOCK_TV + r"mlp\.(3|linear_2)\.", r"block\1.fc2."),
    (r"^encoder\.ln\.", "ln."),
    (r"^heads\.head\.", "head."),
)
_VIT_TIMM_RULES = (
    (r"^patch_embed\.proj\.", "patch_embed."),
    (r"^cls_token$", "class_token"),
    (r"^pos_embed$", "pos_embedding"),
    (r"^blocks\.(\d+)\.norm(\d)\.", r"block\1.ln_\2."),
    (r"^blocks\.(\d+)\.attn\.", r"block\1.attn."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"block\1.mlp.fc1."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"block\1.fc2."),
    (r"^norm\.", "ln."),
)
# Two naming schemes: a file must use one (a tensor no rule renames belongs to neither).
_VIT_RULES = {"torchvision": _VIT_TORCHVISION_RULES, "timm": _VIT_TIMM_RULES}
_LEAF = {"weight": None, "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _rename(name: str, rules) -> tuple[str, str | None]:
    """``name`` renamed by the first rule that matches, and the naming scheme of that rule
    (None when none matched, or ``rules`` is one scheme's tuple of (pattern, replacement));
    ``rules``: such a tuple, or {scheme: tuple}."""
    schemes = rules.items() if isinstance(rules, dict) else [(None, rules)]
    for scheme, scheme_rules in schemes:
        for pattern, replacement in scheme_rules:
            renamed, count = re.subn(pattern, replacement, name)
            if count:
                return renamed, scheme
    return name, None


def _torch_shape(shape: tuple, kind: str | None) -> tuple:
    """The PyTorch shape of a tensor that becomes a parameter of ``shape``."""
    if kind != "kernel":
        return tuple(shape)
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape[::-1])


def load_torch_weights(
    model: nnx.Module, state_dict: dict[str, np.ndarray], rules, source: str
) -> None:
    """Copies a PyTorch state dict into ``model`` in place (kernels transposed to HWIO, linear
    weights to (in, out), BatchNorm and LayerNorm weight/bias/running stats to
    scale/bias/mean/var; a name that renames to a parameter's path, such as a ViT's
    ``class_token``, as it is).

    Raises:
      DissectError: naming missing, unexpected or mis-shaped tensors (weights of another
        model).
    """
    targets = {}
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Variable):
            targets[".".join(map(str, path))] = variable
    assigned, problems, schemes = set(), [], {}
    for name, tensor in state_dict.items():
        if name.endswith("num_batches_tracked"):  # an int64 count, not a weight
            continue
        if not np.issubdtype(tensor.dtype, np.floating):
            problems.append(f"{name}: dtype {tensor.dtype} cannot be a float weight")
            continue
        renamed, scheme = _rename(name, rules)
        if scheme is not None:
            schemes.setdefault(scheme, name)
        prefix, _, leaf = renamed.rpartition(".")
        key, kind = renamed, None
        if renamed not in targets and leaf in _LEAF:
            kind = _LEAF[leaf]
            if leaf == "weight":
                kind = "kernel" if f"{prefix}.kernel" in targets else "scale"
            key = f"{prefix}.{kind}"
        if key not in targets:
            problems.append(f"unexpected tensor {name}")
            continue
        if key in assigned:  # two naming schemes mixed in one file
            problems.append(f"{name}: a second tensor for {key}")
            continue
        value = np.asarray(tensor, np.float32)
        if kind == "kernel":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        if value.shape != targets[key].get_value().shape:
            wanted = _torch_shape(targets[key].get_value().shape, kind)
            problems.append(
                f"{name}: shape {tuple(tensor.shape)} does not fit {key}, which takes "
                f"{wanted} (in PyTorch's layout)"
            )
            continue
        if not np.isfinite(value).all():
            problems.append(f"{name}: holds NaN or inf")
            continue
        targets[key].set_value(jnp.asarray(value))
        assigned.add(key)
    missing = [
        k
        for k, v in targets.items()
        if k not in assigned and isinstance(v, (nnx.Param, nnx.BatchStat))
    ]
    problems += [f"missing tensor for {k}" for k in missing]
    if len(schemes) > 1:
        mixed = " and ".join(f"{scheme}'s ({first}, ...)" for scheme, first in schemes.items())
        problems.insert(0, f"two naming schemes mixed in one file: {mixed}")
    if problems:
        shown = "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else "")
        raise DissectError(f"{source}: these weights do not fit the model: {shown}")


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """``build(rngs, num_classes)``; ``classifier``: the PyTorch names of the output layer's
    weight, whose rows give the number of classes of a checkpoint (Places365's 365)."""

    build: Callable[[nnx.Rngs, int], nnx.Module]
    rules: tuple
    preprocess: Preprocess
    classifier: tuple[str, ...]
    num_classes: int = 1000


ZOO = {
    "alexnet": ZooEntry(
        lambda rngs, n: AlexNet(n, rngs=rngs),
        _ALEXNET_RULES,
        Preprocess(),
        ("classifier.6.weight",),
    ),
    "vgg16": ZooEntry(
        lambda rngs, n: VGG16(n, rngs=rngs), _VGG16_RULES, Preprocess(), ("classifier.6.weight",)
    ),
    "resnet18": ZooEntry(
        lambda rngs, n: ResNet("basic", (2, 2, 2, 2), n, rngs=rngs),
        _COMMON_RULES,
        Preprocess(),
        ("fc.weight",),
    ),
    "resnet50": ZooEntry(
        lambda rngs, n: ResNet("bottleneck", (3, 4, 6, 3), n, rngs=rngs),
        _COMMON_RULES,
        Preprocess(),
        ("fc.weight",),
    ),
    "resnet20-cifar10": ZooEntry(
        lambda rngs, n: ResNetCifar(3, n, rngs=rngs),
        _COMMON_RULES,
        Preprocess(),
        ("linear.weight",),
        num_classes=10,
    ),
    # ViTs see 224 px (their position embeddings fix it): other sizes are resized.
    "vit_b_16": ZooEntry(
        lambda rngs, n: VisionTransformer(num_classes=n, rngs=rngs),
        _VIT_RULES,
        Preprocess(size=(224, 224)),
        ("heads.head.weight", "head.weight"),
    ),
    "vit_s_16": ZooEntry(  # timm's vit_small_patch16_224: mean and std 0.5
        lambda rngs, n: VisionTransformer(
            width=384, heads=6, hidden=1536, num_classes=n, rngs=rngs
        ),
        _VIT_RULES,
        Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=(224, 224)),
        ("heads.head.weight", "head.weight"),
    ),
}


def _num_classes(entry: ZooEntry, state_dict: dict[str, np.ndarray]) -> int:
    """The rows of the checkpoint's output layer (365 for Places365), else the default."""
    for name in entry.classifier:
        tensor = state_dict.get(name)
        if tensor is not None and tensor.ndim == 2 and tensor.shape[0] > 0:
            return int(tensor.shape[0])
    return entry.num_classes


def build(name: str, weights: str | Path | None = None, seed: int = 0) -> nnx.Module:
    """A zoo network in evaluation mode, randomly initialised from ``seed`` or loaded from a
    PyTorch checkpoint, whose output layer sets the number of classes (1000 for ImageNet,
    365 for Places365)."""
    from jaxdissect.models.torch_weights import load_state_dict

    if name not in ZOO:
        raise DissectError(f"no zoo model {name!r}; the zoo has: {', '.join(ZOO)}")
    entry = ZOO[name]
    # Built under one jit: the initialisers compile once, not once per layer shape (the
    # same values as built eagerly, measured for resnet18: 2x faster on 2 busy cores).
    if weights is None:
        model = nnx.jit(lambda: entry.build(nnx.Rngs(seed), entry.num_classes))()
    else:
        shapes = nnx.eval_shape(lambda: entry.build(nnx.Rngs(seed), entry.num_classes))
        count = sum(x.size for x in jax.tree.leaves(nnx.state(shapes, nnx.Param, nnx.BatchStat)))
        state_dict = load_state_dict(weights, parameter_count=count)
        classes = _num_classes(entry, state_dict)
        model = nnx.jit(lambda: entry.build(nnx.Rngs(seed), classes))()
        load_torch_weights(model, state_dict, entry.rules, str(weights))
    model.eval()
    return model


def feature_model(name: str, weights: str | Path | None = None, seed: int = 0) -> FeatureModel:
    """A zoo network ready for dissection (layer names as in the module docstring)."""
    model = build(name, weights, seed)
    return as_feature_model(model, ZOO[name].preprocess, f"zoo:{name}")
