"""The trained model families (Flax NNX), with layers named for dissection.

AlexNet-style (``conv1`` .. ``conv{depth}`` after ReLU, then ``fc6``, ``fc7``,
``classifier``), scaled to small images: conv1 5x5 stride 2 and conv2 5x5, each followed by
2x2 max pooling, then depth - 2 3x3 convolutions at 1/8 of the input size. ResNet-style:
the CIFAR ResNet's stem and three stages (``conv1``, ``layer1`` .. ``layer3``), built from
the zoo's blocks, with a stride-2 stem for speed on CPU. ViT-style: the zoo's
VisionTransformer at the training image size (``block0`` .. ``block{depth - 1}``, each with
``.attn`` and ``.mlp``; patch tokens as maps, the class token left out).
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxdissect.models.cnn import BasicBlock, Stage, Stem
from jaxdissect.models.features import FeatureModel, Preprocess
from jaxdissect.models.layers import Identity, batch_norm_layer, conv_layer, dropout
from jaxdissect.models.vit import VisionTransformer
from jaxdissect.models.zoo import as_feature_model
from train.config import TrainConfig

PREPROCESS = Preprocess()  # ImageNet mean and std on [0, 1] RGB, as the zoo's models
VIT_DROPOUT = 0.1  # the original ViT's rate when trained from scratch


def kernel_init(name: str):
    return {
        "he_normal": jax.nn.initializers.he_normal(),
        "lecun_normal": jax.nn.initializers.lecun_normal(),
        "glorot_uniform": jax.nn.initializers.glorot_uniform(),
        "orthogonal": jax.nn.initializers.orthogonal(),
    }[name]


class ConvBlock(nnx.Module):
    """Convolution, optional batch norm, ReLU: one dissectable layer."""

    def __init__(self, cin, cout, kernel, stride, *, batch_norm, init, rngs):
        self.conv = conv_layer(
            cin, cout, kernel, stride, kernel // 2, bias=not batch_norm, rngs=rngs, kernel_init=init
        )
        self.bn = batch_norm_layer(cout, rngs=rngs, enabled=batch_norm)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


class AlexNetStyle(nnx.Module):
    def __init__(self, config: TrainConfig, num_classes: int, *, rngs):
        init = kernel_init(config.init)
        widths = list(config.channels().values())
        self.depth = config.depth
        cin = 3
        for index, width in enumerate(widths, start=1):
            kernel, stride = (5, 2) if index == 1 else (5, 1) if index == 2 else (3, 1)
            block = ConvBlock(
                cin, width, kernel, stride, batch_norm=config.batch_norm, init=init, rngs=rngs
            )
            setattr(self, f"conv{index}", block)
            cin = width
        hidden = max(16, round(4096 * config.width / 8))
        spatial = (config.image_size // 16) ** 2  # after the last 2x2 pooling
        self.fc6 = nnx.Linear(cin * spatial, hidden, kernel_init=init, rngs=rngs)
        self.fc7 = nnx.Linear(hidden, hidden, kernel_init=init, rngs=rngs)
        self.dropout = nnx.Dropout(0.5) if config.dropout else Identity()
        self.classifier = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x, rngs=None):
        x = nnx.max_pool(self.conv1(x), (2, 2), (2, 2))
        x = nnx.max_pool(self.conv2(x), (2, 2), (2, 2))
        for index in range(3, self.depth + 1):
            x = getattr(self, f"conv{index}")(x)
        x = nnx.max_pool(x, (2, 2), (2, 2)).reshape(x.shape[0], -1)
        x = dropout(self.dropout, jax.nn.relu(self.fc6(x)), rngs)
        x = dropout(self.dropout, jax.nn.relu(self.fc7(x)), rngs)
        return self.classifier(x)


class ResNetStyle(nnx.Module):
    def __init__(self, config: TrainConfig, num_classes: int, *, rngs):
        init = kernel_init(config.init)
        widths = list(config.channels().values())
        self.conv1 = Stem(
            3, widths[0], 3, 2, 1, rngs=rngs, batch_norm=config.batch_norm, kernel_init=init
        )
        cin = widths[0]
        for index, width in enumerate(widths):
            blocks = []
            for b in range(config.depth):
                stride = 2 if (b == 0 and index > 0) else 1
                blocks.append(
                    BasicBlock(
                        cin,
                        width,
                        stride,
                        "conv",
                        rngs=rngs,
                        batch_norm=config.batch_norm,
                        kernel_init=init,
                    )
                )
                cin = width
            setattr(self, f"layer{index + 1}", Stage(blocks))
        self.dropout = nnx.Dropout(0.5) if config.dropout else Identity()
        self.classifier = nnx.Linear(cin, num_classes, rngs=rngs)

    def __call__(self, x, rngs=None):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.classifier(dropout(self.dropout, x.mean(axis=(1, 2)), rngs))


def vit_style(config: TrainConfig, num_classes: int, *, rngs) -> VisionTransformer:
    channels = config.channels()
    return VisionTransformer(
        config.image_size,
        config.patch,
        config.depth,
        channels["tokens"],
        config.heads,
        channels["mlp"],
        num_classes,
        VIT_DROPOUT if config.dropout else 0.0,
        rngs=rngs,
        kernel_init=kernel_init(config.init),
    )


def build_model(config: TrainConfig, num_classes: int) -> nnx.Module:
    """A freshly initialised model (``config.init`` drawn from ``config.init_seed``)."""
    family = {"alexnet": AlexNetStyle, "resnet": ResNetStyle, "vit": vit_style}[config.family]
    return family(config, num_classes, rngs=nnx.Rngs(config.init_seed))


def to_feature_model(model: nnx.Module, name: str) -> FeatureModel:
    """A trained model ready for dissection (a ViT's layers as maps, see the zoo)."""
    return as_feature_model(model, PREPROCESS, name)


def dissectable_layers(config: TrainConfig) -> tuple[str, ...]:
    """The layers a dissection usually looks at, shallow to deep."""
    if config.family == "alexnet":
        return tuple(f"conv{i}" for i in range(1, config.depth + 1))
    if config.family == "vit":
        return tuple(f"block{i}" for i in range(config.depth))
    return ("conv1", "layer1", "layer2", "layer3")
