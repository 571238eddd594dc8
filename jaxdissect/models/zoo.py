"""The zoo: the networks the paper dissected (``cnn``, ``vit``), with the layer names people
know, built by name with PyTorch (torchvision / akamaster / timm) weights.

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
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxdissect.errors import DissectError
from jaxdissect.models.cnn import (
    VGG16,
    VGG16_STAGES,
    AlexNet,
    BasicBlock,
    Bottleneck,
    ConvReLU,
    LinearReLU,
    ResNet,
    ResNetCifar,
    Stage,
    Stem,
)
from jaxdissect.models.features import FeatureModel, Preprocess, from_nnx, patch_token_maps
from jaxdissect.models.layers import Identity, batch_norm_layer, conv_layer, dropout
from jaxdissect.models.torch_import import load_torch_weights
from jaxdissect.models.vit import (
    VisionTransformer,
    ViTAttention,
    ViTBlock,
    ViTMlpHidden,
    vit_layers,
)

# The networks and their blocks were defined here until they moved to ``cnn``, ``vit`` and
# ``layers``: ``jaxdissect.models.zoo.<name>`` stays importable for code written then.
__all__ = [
    "VGG16",
    "ZOO",
    "AlexNet",
    "BasicBlock",
    "Bottleneck",
    "ConvReLU",
    "Identity",
    "LinearReLU",
    "ResNet",
    "ResNetCifar",
    "Stage",
    "Stem",
    "ViTAttention",
    "ViTBlock",
    "ViTMlpHidden",
    "VisionTransformer",
    "ZooEntry",
    "as_feature_model",
    "batch_norm_layer",
    "build",
    "conv_layer",
    "dropout",
    "feature_model",
    "load_torch_weights",
    "vit_layers",
]


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
    if weights is None:
        # Built under one jit: the initialisers compile once, not once per layer shape (the
        # same values as built eagerly, measured for resnet18: 2x faster on 2 busy cores).
        model = nnx.jit(lambda: entry.build(nnx.Rngs(seed), entry.num_classes))()
    else:
        # Built abstractly (shapes only, nothing compiled) and filled from the file, which
        # must give every Param and BatchStat (the zoo's only variables).
        shapes = nnx.eval_shape(lambda: entry.build(nnx.Rngs(seed), entry.num_classes))
        count = sum(x.size for x in jax.tree.leaves(nnx.state(shapes, nnx.Param, nnx.BatchStat)))
        state_dict = load_state_dict(weights, parameter_count=count)
        classes = _num_classes(entry, state_dict)
        if classes != entry.num_classes:
            shapes = nnx.eval_shape(lambda: entry.build(nnx.Rngs(seed), classes))
        model = shapes
        load_torch_weights(model, state_dict, entry.rules, str(weights))
        _check_filled(model, name)
    model.eval()
    return model


def _check_filled(model: nnx.Module, name: str) -> None:
    """Every value of an abstractly built model was given by the checkpoint."""
    abstract = [
        ".".join(map(str, path))
        for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model))
        if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    if abstract:
        raise DissectError(f"zoo:{name}: the weights file gave no values for {abstract[:8]}")


def feature_model(name: str, weights: str | Path | None = None, seed: int = 0) -> FeatureModel:
    """A zoo network ready for dissection (layer names as in the module docstring)."""
    model = build(name, weights, seed)
    return as_feature_model(model, ZOO[name].preprocess, f"zoo:{name}")
