"""Drawing the synthetic world: scenes of objects made of parts, on material backgrounds,
plus texture-only images, every pixel labelled by construction.

Image ``index`` of split ``split`` is drawn from ``numpy.random.default_rng([seed, split,
index])``, so any image can be regenerated alone, in any order, on any machine; the probe,
train, validation and test splits are independent streams.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

from jaxdissect.config import check_paths
from jaxdissect.data.broden_writer import ProbeImage, write_broden
from jaxdissect.data.synthetic import render
from jaxdissect.data.synthetic.concepts import (
    BACKGROUNDS,
    MATERIALS,
    OBJECTS,
    SCENES,
    TEXTURES,
)
from jaxdissect.errors import DissectError

CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
PIXEL_CATEGORIES = ("color", "object", "part", "material")
SPLITS = {"probe": 0, "train": 1, "validation": 2, "test": 3}


# The largest side drawn: one image of 2048 px draws in 2.3 s (0.55 us a pixel, 2-core
# machine); at that rate one of 8192 px takes about 37 s, and five drew for minutes. CNNs
# are dissected on probes of 224 to 384 px (Broden's two sets).
MAX_IMAGE_SIZE = 2048

# The most pixels one probe set draws (images x image_size**2): drawing takes about 0.6 us
# a pixel, so this is about 45 minutes; a Broden-sized set (63,305 images of 224 x 224,
# 3.2e9 pixels) fits.
MAX_PROBE_PIXELS = 2**32


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """Image geometry and the probe set's mix.

    Attributes:
      image_size: images are image_size x image_size RGB.
      label_size: label planes are label_size x label_size (default image_size // 2, as
        Broden's 224/112); must divide image_size.
      texture_fraction: share of probe images that are texture-only (as DTD in Broden).
    """

    image_size: int = 64
    label_size: int | None = None
    texture_fraction: float = 0.125

    def __post_init__(self):
        if not 8 <= self.image_size <= MAX_IMAGE_SIZE:
            raise DissectError(
                f"`image_size` must lie in [8, {MAX_IMAGE_SIZE}], got {self.image_size!r}",
                arguments=("image_size",),
            )
        if self.image_size % self.labels != 0:
            raise DissectError(
                f"`label_size` {self.labels!r} must divide `image_size` {self.image_size!r}",
                arguments=("label_size", "image_size"),
            )
        if not 0.0 <= self.texture_fraction <= 1.0:
            raise DissectError(
                f"`texture_fraction` must lie in [0, 1], got {self.texture_fraction!r}",
                arguments=("texture_fraction",),
            )

    @property
    def labels(self) -> int:
        return self.label_size or self.image_size // 2


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Label numbers of every concept (Broden-style: one number space, 0 = unlabelled)."""

    label_names: tuple[str, ...]
    category_labels: dict[str, tuple[int, ...]]
    number: dict[tuple[str, str], int]  # (category, concept name) -> label number

    @property
    def scene_names(self) -> tuple[str, ...]:
        return tuple(scene.name for scene in SCENES)


@functools.cache
def vocabulary() -> Vocabulary:
    """The world's labels, numbered by category: colours, objects, parts, materials, scenes,
    textures."""
    concepts = {
        "color": list(render.COLOR_NAMES),
        "object": [o.name for o in OBJECTS] + list(BACKGROUNDS),
        "part": sorted({p.name for o in OBJECTS for p in o.parts}),
        "material": list(MATERIALS),
        "scene": [s.name for s in SCENES],
        "texture": list(TEXTURES),
    }
    suffix = {"color": "-c", "scene": "-s"}
    names, number, category_labels = ["-"], {}, {}
    for category in CATEGORIES:
        labels = []
        for concept in concepts[category]:
            number[(category, concept)] = len(names)
            labels.append(len(names))
            names.append(concept + suffix.get(category, ""))
        category_labels[category] = tuple(labels)
    return Vocabulary(tuple(names), category_labels, number)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One drawn image with its labels.

    Attributes:
      pixels: (H, W, 3) uint8.
      planes: per pixel-level category, (sh, sw) int32 label numbers (0 = none).
      scene: the scene label number (0 for texture-only images).
      texture: the texture label number (0 for scene images).
      scene_class: index into SCENES (-1 for texture-only images): the training target.
    """

    pixels: np.ndarray
    planes: dict[str, np.ndarray]
    scene: int
    texture: int
    scene_class: int


def seed_of(key_or_seed: int | jax.Array) -> int:
    """An integer seed from an int (>= 0) or a ``jax.random`` key (typed or raw uint32)."""
    if isinstance(key_or_seed, (int, np.integer)):
        if key_or_seed < 0:
            raise DissectError(f"seed must be >= 0, got {key_or_seed}")
        return int(key_or_seed)
    key = key_or_seed
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = np.asarray(key, np.uint64).ravel()
    return int(sum(int(w) << (32 * i) for i, w in enumerate(words)))


def _draw_part_fill(rng, part, height, width, vocab, remembered):
    """Fill pixels and material label of a part; parts sharing a name in one object (two
    wheels, two windows) share their look."""
    if part.name not in remembered:
        if part.materials and rng.random() < 0.7:
            material = part.materials[rng.integers(len(part.materials))]
            remembered[part.name] = ("material", material, rng.integers(2**31))
        else:
            remembered[part.name] = (
                "color",
                render.choose_color(rng, part.colors),
                rng.integers(2**31),
            )
    kind, value, fill_seed = remembered[part.name]
    fill_rng = np.random.default_rng(fill_seed)
    if kind == "material":
        return render.material_fill(fill_rng, value, height, width), vocab.number[
            ("material", value)
        ]
    return render.flat_fill(fill_rng, value, height, width), 0


def _render_scene(rng, scene_class, size):
    vocab = vocabulary()
    scene = SCENES[scene_class]
    canvas = np.zeros((size, size, 3), np.float32)
    maps = {c: np.zeros((size, size), np.int32) for c in ("object", "part", "material")}

    borders = np.sort(rng.uniform(0.3, 0.7, len(scene.bands) - 1)) * size
    edges = [0, *np.round(borders).astype(int), size]
    for band, top, bottom in zip(scene.bands, edges[:-1], edges[1:], strict=True):
        if bottom <= top:
            continue
        colors, materials = BACKGROUNDS[band]
        materials = materials.split()
        if materials and rng.random() < 0.8:
            material = materials[rng.integers(len(materials))]
            fill = render.material_fill(rng, material, bottom - top, size)
            maps["material"][top:bottom] = vocab.number[("material", material)]
        else:
            fill = render.flat_fill(
                rng, render.choose_color(rng, tuple(colors.split())), bottom - top, size
            )
        canvas[top:bottom] = fill
        maps["object"][top:bottom] = vocab.number[("object", band)]

    names = [name for name, _ in scene.objects]
    weights = np.array([w for _, w in scene.objects])
    count = rng.integers(scene.count[0], scene.count[1] + 1)
    chosen = rng.choice(len(names), count, p=weights / weights.sum())
    placements = []
    for index in chosen:
        kind = next(o for o in OBJECTS if o.name == names[index])
        height = size * np.exp(rng.uniform(np.log(0.15), np.log(0.75)))
        width = height * kind.aspect
        if width > 1.1 * size:
            height, width = height * 1.1 * size / width, 1.1 * size
        left = rng.uniform(-0.15 * width, size - 0.85 * width)
        top = rng.uniform(-0.1 * height, size - 0.9 * height)
        placements.append((top + height, kind, left, top, width, height, rng.random() < 0.5))
    placements.sort(key=lambda p: p[0])  # lower in the picture = nearer: drawn later

    for _, kind, left, top, width, height, flip in placements:
        object_label = vocab.number[("object", kind.name)]
        remembered = {}
        for part in kind.parts:
            x0, y0, x1, y1 = np.clip(np.array(part.box) + rng.normal(0, 0.02, 4), -0.05, 1.05)
            if flip:
                x0, x1 = 1 - x1, 1 - x0
            bx0, bx1 = left + x0 * width, left + x1 * width
            by0, by1 = top + y0 * height, top + y1 * height
            c0, c1 = max(int(np.floor(bx0)), 0), min(int(np.ceil(bx1)), size)
            r0, r1 = max(int(np.floor(by0)), 0), min(int(np.ceil(by1)), size)
            if c1 <= c0 or r1 <= r0 or bx1 - bx0 < 0.5 or by1 - by0 < 0.5:
                continue
            v = (np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5 - by0) / (by1 - by0)
            u = (np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5 - bx0) / (bx1 - bx0)
            mask = render.shape_mask(part.shape, u, v)
            if not mask.any():
                continue
            fill, material = _draw_part_fill(rng, part, r1 - r0, c1 - c0, vocab, remembered)
            window = (slice(r0, r1), slice(c0, c1))
            canvas[window][mask] = fill[mask]
            maps["object"][window][mask] = object_label
            maps["part"][window][mask] = vocab.number[("part", part.name)]
            maps["material"][window][mask] = material
    return canvas, maps


def _finish(rng, canvas, maps, config, scene, texture, scene_class) -> Sample:
    canvas = canvas * rng.uniform(0.85, 1.1) + rng.normal(0, 0.015, canvas.shape)
    canvas = np.clip(canvas, 0, 1)
    stride = config.image_size // config.labels
    centres = slice(stride // 2, None, stride)
    vocab = vocabulary()
    color_numbers = np.array(vocab.category_labels["color"], np.int32)
    planes = {"color": color_numbers[render.nearest_color(canvas[centres, centres])]}
    for category, full in maps.items():
        planes[category] = full[centres, centres]
    return Sample(
        pixels=np.round(canvas * 255).astype(np.uint8),
        planes=planes,
        scene=scene,
        texture=texture,
        scene_class=scene_class,
    )


def draw(
    seed: int | jax.Array, split: str, index: int, config: WorldConfig = WorldConfig()
) -> Sample:
    """Image ``index`` of ``split`` ("probe", "train", "validation" or "test").

    Training splits hold scene images only; the probe also holds texture-only images
    (a ``config.texture_fraction`` share).
    """
    if split not in SPLITS:
        raise DissectError(
            f"`split` must be one of {tuple(SPLITS)}, got {split!r}", arguments=("split",)
        )
    rng = np.random.default_rng([seed_of(seed), SPLITS[split], index])
    vocab = vocabulary()
    size = config.image_size
    if split == "probe" and rng.random() < config.texture_fraction:
        texture = int(rng.integers(len(TEXTURES)))
        canvas = render.texture_fill(rng, TEXTURES[texture], size, size)
        maps = {c: np.zeros((size, size), np.int32) for c in ("object", "part", "material")}
        return _finish(
            rng, canvas, maps, config, 0, vocab.number[("texture", TEXTURES[texture])], -1
        )
    scene_class = int(rng.integers(len(SCENES)))
    canvas, maps = _render_scene(rng, scene_class, size)
    return _finish(
        rng, canvas, maps, config, vocab.number[("scene", SCENES[scene_class].name)], 0, scene_class
    )


def draw_many(
    seed: int | jax.Array, split: str, start: int, stop: int, config: WorldConfig = WorldConfig()
) -> Iterator[Sample]:
    for index in range(start, stop):
        yield draw(seed, split, index, config)


def scene_arrays(
    seed: int | jax.Array,
    split: str,
    num_images: int,
    config: WorldConfig = WorldConfig(),
    start: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Scene-classification data: (N, H, W, 3) uint8 images and (N,) int32 scene classes."""
    if split == "probe":
        raise DissectError(
            "`split` 'probe' is for dissection; train on 'train', 'validation' or 'test'",
            arguments=("split",),
        )
    images = np.zeros((num_images, config.image_size, config.image_size, 3), np.uint8)
    labels = np.zeros((num_images,), np.int32)
    for i, sample in enumerate(draw_many(seed, split, start, start + num_images, config)):
        images[i], labels[i] = sample.pixels, sample.scene_class
    return images, labels


def probe_images(
    seed: int | jax.Array, num_images: int, config: WorldConfig = WorldConfig()
) -> Iterator[ProbeImage]:
    """The probe split as Broden-format images (pixel planes only where labels exist)."""
    for index, sample in enumerate(draw_many(seed, "probe", 0, num_images, config)):
        planes = {c: [sample.planes[c]] for c in PIXEL_CATEGORIES if sample.planes[c].any()}
        image_labels = {"scene": [sample.scene] if sample.scene else []}
        image_labels["texture"] = [sample.texture] if sample.texture else []
        yield ProbeImage(f"synthetic/{index:06d}", sample.pixels, planes, image_labels)


# Bytes written per image pixel (JPEG at quality 95 plus up to four PNG planes), measured:
# 1.15 at 64 x 64, 0.53 at 224 x 224; the estimate rounds up.
BYTES_PER_PIXEL = 1.5


def _check_free_space(directory: Path, num_images: int, config: WorldConfig) -> None:
    """Refuses a probe set that would not fit on the disk, before writing any of it."""
    existing = next(p for p in (directory.absolute(), *directory.absolute().parents) if p.exists())
    needed = num_images * (BYTES_PER_PIXEL * config.image_size**2 + 512)  # + its CSV rows
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise DissectError(
            f"{directory}: {num_images} images of {config.image_size}x{config.image_size} "
            f"need about {needed / 2**30:,.1f} GiB; {existing} has {free / 2**30:,.1f} GiB free"
        )


def write_probe(
    directory: str | Path,
    num_images: int,
    seed: int | jax.Array = 0,
    config: WorldConfig = WorldConfig(),
    progress: bool = True,
) -> Path:
    """Writes the probe split as a Broden-format folder that any Broden reader reads."""
    check_paths(directory=directory)
    if num_images < 1:
        raise DissectError(
            f"`num_images` must be >= 1, got {num_images!r}", arguments=("num_images",)
        )
    if num_images * config.image_size**2 > MAX_PROBE_PIXELS:
        raise DissectError(
            f"`num_images` {num_images} x `image_size` {config.image_size}**2 is "
            f"{num_images * config.image_size**2:,} pixels to draw; at most "
            f"{MAX_PROBE_PIXELS:,} are drawn in one probe set (fewer or smaller images)",
            arguments=("num_images", "image_size"),
        )
    seed_of(seed)  # refuses a negative seed before anything is written
    _check_free_space(Path(directory), num_images, config)
    vocab = vocabulary()
    return write_broden(
        directory,
        CATEGORIES,
        vocab.label_names,
        vocab.category_labels,
        probe_images(seed, num_images, config),
        progress=progress,
    )
