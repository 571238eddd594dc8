"""Training data: the synthetic world's scenes (default) or a TFDS dataset on disk.

Synthetic scenes are drawn once per (seed, size, split, count) and kept in the jaxdissect
cache, so the many runs of an experiment share them. A TFDS dataset is read with
``tfds.data_source`` (ArrayRecord, no TensorFlow), resized on the fly to ``image_size``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from jaxdissect.data.cache import cached_folder, default_cache_root
from jaxdissect.data.loader import ArraySource
from jaxdissect.data.synthetic import world
from train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class TrainingData:
    train: Sequence  # random access: train[i] -> {"image": uint8 (H, W, 3), "label": int}
    evaluation: Sequence
    num_classes: int
    class_names: tuple[str, ...]


def synthetic_scenes(split: str, count: int, config: TrainConfig, progress: bool) -> ArraySource:
    """``count`` scene images of ``split``, drawn once into the cache."""
    geometry = world.WorldConfig(image_size=config.image_size)
    key = f"scenes-v1-seed{config.world_seed}-{config.image_size}px-{split}-{count}"

    root = default_cache_root()
    # Refused before drawing: a typo (train_images=10**9) would otherwise draw for hours
    # into a terabyte-sized file.
    needed = count * (3 * config.image_size**2)
    existing = next(p for p in (root.absolute(), *root.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if not (root / key).is_dir() and needed > free:
        raise ValueError(
            f"{split} scenes: {count:,} images of {config.image_size}x{config.image_size} "
            f"need {needed / 2**30:,.1f} GiB in the cache; {existing} has "
            f"{free / 2**30:,.1f} GiB free (train_images, eval_images, image_size)"
        )

    def write(folder: Path) -> None:
        from jaxdissect.progress import progress_bar

        images = np.lib.format.open_memmap(
            folder / "images.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(count, config.image_size, config.image_size, 3),
        )
        labels = np.zeros(count, np.int32)
        samples = world.draw_many(config.world_seed, split, 0, count, geometry)
        for i, sample in enumerate(
            progress_bar(
                samples,
                total=count,
                desc=f"drawing {split} scenes",
                unit="img",
                disable=not progress,
            )
        ):
            images[i], labels[i] = sample.pixels, sample.scene_class
        images.flush()
        np.save(folder / "labels.npy", labels)
        (folder / "meta.json").write_text(json.dumps({"count": count}))

    folder = cached_folder(root, key, write)
    return ArraySource(
        image=np.load(folder / "images.npy", mmap_mode="r"), label=np.load(folder / "labels.npy")
    )


class ResizedSource(Sequence):
    """A TFDS data source whose images are resized to a square ``size``."""

    def __init__(self, source, size: int):
        self.source, self.size = source, size

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        example = self.source[index]
        image = np.asarray(example["image"])
        if image.shape[:2] != (self.size, self.size):
            image = np.asarray(
                Image.fromarray(image).convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            )
        return {"image": image, "label": int(example["label"])}


def load_data(config: TrainConfig, progress: bool = True) -> TrainingData:
    if config.data == "synthetic":
        names = world.vocabulary().scene_names
        return TrainingData(
            train=synthetic_scenes("train", config.train_images, config, progress),
            evaluation=synthetic_scenes("validation", config.eval_images, config, progress),
            num_classes=len(names),
            class_names=names,
        )
    import tensorflow_datasets as tfds

    name = config.data.removeprefix("tfds:")
    try:
        builder = tfds.builder(name, data_dir=config.data_dir or None)
        splits = builder.info.splits
        evaluation_split = "validation" if "validation" in splits else "test"
        label = builder.info.features["label"]
        return TrainingData(
            train=ResizedSource(builder.as_data_source("train"), config.image_size),
            evaluation=ResizedSource(builder.as_data_source(evaluation_split), config.image_size),
            num_classes=label.num_classes,
            class_names=tuple(label.names),
        )
    except Exception as error:  # TFDS raises many types for a missing or unprepared dataset
        first = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        where = f" in data_dir={config.data_dir}" if config.data_dir else ""
        raise ValueError(
            f"data={config.data}{where}: not a TFDS image-classification dataset prepared "
            f"as ArrayRecord ({type(error).__name__}: {first})"
        ) from None
