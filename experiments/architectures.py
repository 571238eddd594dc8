"""Unique detectors across model families.

    python -m experiments.architectures [--config smoke|default|full] [--workdir DIR] [key=value ...]

Trains an AlexNet-style network (5 conv layers), a deeper VGG-style one (8 conv layers of
3x3 after the first two), a ResNet-style one and a ViT-style one (4 blocks, 8 px patches)
on the same data, and dissects each one's top conv layer (the ViT: each block's output;
units and a random rotation); zoo networks with imported weights join with
``zoo=NAME:WEIGHTS[:LAYER],...`` (e.g. ``zoo=resnet20-cifar10:resnet20.th:layer3``). A
linear probe on held-out scene labels measures discrimination. Writes results.json,
comparison.png and summary.html to the workdir (default runs/architectures-<config>).
"""

from __future__ import annotations

import dataclasses
import sys

from experiments import compare
from experiments.cli import experiment_main
from experiments.compare import CommonConfig, Variant, run_comparison, unique_claim
from jaxdissect.models import zoo
from jaxdissect.sources import file_identity
from train.config import make_config


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config(CommonConfig):
    zoo: tuple[str, ...] = ()
    resnet_overrides: tuple[str, ...] = ()  # train/ settings for the ResNet-style network

    def __post_init__(self):
        super().__post_init__()
        for spec in self.zoo:
            if not 2 <= len(spec.split(":")) <= 3:
                raise ValueError(
                    f"zoo={spec}: expected NAME:WEIGHTS[:LAYER] (an empty WEIGHTS: random "
                    "initialisation)"
                )
        # Checked with the config, not when the ResNet-style network's turn to train comes.
        try:
            make_config(self.train_preset, [*RESNET_STYLE, *self.resnet_overrides])
        except ValueError as error:
            raise ValueError(f"resnet_overrides: {error}") from None


PRESETS = {
    **compare.PRESETS,
    # ResNet-18-style: two basic blocks per stage, widths 128, 256, 512 (train/'s ResNet has
    # three stages; width 4 scales its 32, 64, 128).
    "gpu": {**compare.PRESETS["gpu"], "resnet_overrides": ("width=4",)},
}


RESNET_STYLE = ("family=resnet", "depth=2", "dropout=false", "batch_norm=true")
VIT_STYLE = ("family=vit", "depth=4", "patch=8", "heads=4", "dropout=false")


def variants(config: Config) -> list[Variant]:
    found = [
        Variant("alexnet_style"),
        Variant("vgg_style", ("depth=8",)),
        Variant(
            "resnet_style",
            (*RESNET_STYLE, *config.resnet_overrides),
        ),
        Variant("vit_style", VIT_STYLE),
        *(
            Variant(f"vit_style_block{i}", VIT_STYLE, run="vit_style", layer=f"block{i}")
            for i in range(3)
        ),
    ]
    for spec in config.zoo:
        name, weights, *layer = spec.split(":")
        model = zoo.feature_model(name, weights or None)
        identity = {"zoo": name, "weights": file_identity(weights) if weights else None}
        layer = layer[0] if layer else "layer3"
        found.append(Variant(f"zoo_{name}", model=model, layer=layer, weights=identity))
    return found


def run(config, workdir, progress: bool = True) -> dict:
    return run_comparison(
        variants(config),
        config,
        workdir,
        "Unique detectors across architectures",
        progress,
        claims=claims,
        study="architectures",
    )


def claims(rows: dict, seeds: list[int]) -> list[dict]:
    return [
        unique_claim(
            rows,
            "ResNet-style networks have more unique detectors than AlexNet-style ones",
            "resnet_style",
            "alexnet_style",
            seeds,
        )
    ]


def main(argv=None) -> int:
    return experiment_main("architectures", __doc__, PRESETS, Config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
