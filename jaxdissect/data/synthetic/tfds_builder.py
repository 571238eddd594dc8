"""The synthetic world's scene-classification set as a TFDS dataset (``synthetic_scenes``).

It prepares offline, without TensorFlow, into ArrayRecord files, and is read back with
``tfds.data_source`` (random access, NumPy out). Importing this module imports
tensorflow_datasets; nothing else in jaxdissect does.

    builder = SyntheticScenes(data_dir=DIR, config="64px")
    builder.download_and_prepare()
    train = builder.as_data_source("train")      # train[i] -> {"image", "label"}
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from jaxdissect.data.synthetic import world


@dataclasses.dataclass
class SyntheticScenesConfig(tfds.core.BuilderConfig):
    """Image size, split sizes and the world's seed."""

    image_size: int = 64
    seed: int = 0
    num_train: int = 12000
    num_validation: int = 1000
    num_test: int = 1000


class SyntheticScenes(tfds.core.GeneratorBasedBuilder):
    """Scenes of the synthetic concept world, labelled by scene class."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar = {"1.0.0": "First release."}
    BUILDER_CONFIGS: ClassVar = [
        SyntheticScenesConfig(name="64px", image_size=64),
        SyntheticScenesConfig(name="96px", image_size=96),
        SyntheticScenesConfig(
            name="tiny", image_size=32, num_train=64, num_validation=16, num_test=16
        ),
    ]

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description="Scene classification in jaxdissect's procedural concept world.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=list(world.vocabulary().scene_names)),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the world is drawn
        config = self.builder_config
        return {
            "train": self._generate_examples("train", config.num_train),
            "validation": self._generate_examples("validation", config.num_validation),
            "test": self._generate_examples("test", config.num_test),
        }

    def _generate_examples(self, split: str, count: int):
        config = self.builder_config
        geometry = world.WorldConfig(image_size=config.image_size)
        for index in range(count):
            sample = world.draw(config.seed, split, index, geometry)
            yield index, {"image": sample.pixels, "label": sample.scene_class}


def prepare(data_dir: str, config: str = "64px") -> SyntheticScenes:
    """Builds (once) and returns the prepared builder; no network is touched."""
    builder = SyntheticScenes(data_dir=data_dir, config=config)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder
