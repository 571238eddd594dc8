"""Where activations come from: a features file or array, or a model run over the probe's
images; and the memory that may keep a model's outputs between the two passes."""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxdissect import runtime
from jaxdissect.errors import DissectError, FeaturesError, check_regular_file
from jaxdissect.kernels.base import ActivationSource, Shapes

# Between the passes, labels and a model's pass-1 activations may occupy this share of one
# accelerator's memory (on CPU: CPU_KEEP_BYTES of activations), saving a forward pass and the
# labels' host-to-device copies in pass 2.
DEVICE_SHARE = 0.25
CPU_KEEP_BYTES = 2**30

# The most units one layer may have: its tally counts are (units, labels) integers, and
# 65,536 units of Broden's 1,197 labels are 300 MiB (the widest zoo layer has 4,096).
MAX_UNITS = 2**16
# A features file's identity reads this many evenly spaced blocks of this size (see
# ``file_identity``), besides its header.
SAMPLED_BLOCKS, BLOCK_BYTES = 64, 64 * 2**10
WHOLE_FILE_HASH_LIMIT = 256 * 2**20


class Activations(NamedTuple):
    """Activations of one or more layers, batch by batch.

    Attributes:
      read: ``read(start, stop)`` gives {layer: (B, h, w, U)} for images [start, stop), in
        index.csv order.
      shapes: {layer: (h, w, U)}.
      num_images: N.
      identity: what identifies these activations for resuming and reusing results (file
        contents, model and weights, layout); JSON-serialisable.
      provenance: what results.json records of them (the features file, the model).
      heads: an ActivationSource whose row b is image b * batch size (the batch size the
        source was made for), read a batch of them at a time, for ``heads_digest``; None:
        they are read from ``read``, one call per batch.
    """

    read: ActivationSource
    shapes: Shapes
    num_images: int
    identity: dict
    provenance: dict
    heads: ActivationSource | None = None


def file_identity(path: str | Path) -> dict:
    """A file's identity by content: its size and a SHA-256 hash of the whole file up to
    WHOLE_FILE_HASH_LIMIT bytes; beyond, of its first and last blocks and SAMPLED_BLOCKS
    evenly spaced ones (a change elsewhere goes unseen, so the size, modification and
    change times and inode are recorded too: rewriting a file changes its change time)."""
    path = Path(path)
    stat = path.stat()
    # SHA-256: with the CPUs' SHA instructions, OpenSSL hashes it 2.5x as fast as BLAKE2.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if stat.st_size <= WHOLE_FILE_HASH_LIMIT:
            while block := f.read(2**22):
                digest.update(block)
            return {
                "path": str(path.absolute()),
                "size": stat.st_size,
                "sha256": digest.hexdigest(),
            }
        step = stat.st_size // SAMPLED_BLOCKS
        for offset in [*range(0, stat.st_size, step), stat.st_size - BLOCK_BYTES]:
            f.seek(offset)
            digest.update(f.read(BLOCK_BYTES))
    return {
        "path": str(path.absolute()),
        "size": stat.st_size,
        "sampled_sha256": digest.hexdigest(),
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
    }


def array_identity(array: np.ndarray) -> dict:
    """An in-memory array's identity: shape, dtype and a hash of its bytes."""
    digest = hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).ravel())
    return {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": digest.hexdigest()}


def activations_digest(outputs: Mapping[str, Any]) -> str:
    """A SHA-256 of {layer: activations}: each layer's name, shape, dtype and bytes (what a
    model computes, as opposed to its name)."""
    digest = hashlib.sha256()
    for layer in sorted(outputs):
        value = np.ascontiguousarray(np.asarray(outputs[layer]))
        digest.update(f"{layer}\0{value.shape}\0{value.dtype}\0".encode())
        digest.update(value.view(np.uint8).ravel())
    return digest.hexdigest()


def heads_digest(read, num_images: int, batch_size: int, heads=None) -> str:
    """A SHA-256 of the activations of the first image of every batch: what a resumed run
    checks before trusting states saved over all batches (a change within a batch past its
    first image goes unseen), at the cost of one image per batch.

    Args:
      read: the activations' source, ``read(start, stop)``.
      num_images: N.
      batch_size: the passes' batch size.
      heads: a source whose row b is image b * batch_size (a model runs them a batch at a
        time); None reads each from ``read``.
    """
    starts = range(0, num_images, batch_size)
    if heads is None:
        parts = [read(start, start + 1) for start in starts]
    else:
        count = len(starts)
        parts = [heads(i, min(i + batch_size, count)) for i in range(0, count, batch_size)]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(activations_digest(part).encode())
    return digest.hexdigest()


def open_features(path: str | Path):
    """A numeric .npy file, read batch by batch (``NpyRows``)."""
    from jaxdissect.data.npy_rows import NpyRows

    path = Path(path)
    check_regular_file(path, "features file", FeaturesError)
    try:
        features = NpyRows(path)
    except (ValueError, OSError, SyntaxError) as error:
        raise FeaturesError(f"{path}: not a NumPy .npy array ({error})") from None
    if features.dtype.kind not in "fiu":
        raise FeaturesError(f"{path}: features must be a numeric .npy array, not {features.dtype}")
    return features


def features_source(
    features, layout: str = "nhwc", layer: str = "features"
) -> tuple[ActivationSource, dict[str, tuple[int, int, int]]]:
    """An ActivationSource over one layer's (N, h, w, U) or (N, U, h, w) array (in memory,
    memory-mapped or ``NpyRows``), and its {layer: (h, w, U)}."""
    if not hasattr(features, "ndim"):
        raise FeaturesError(
            f"`features` must be an array, got {type(features).__name__} (features_activations "
            "reads a .npy path)",
            arguments=("features",),
        )
    if np.dtype(features.dtype).kind not in "fiu":  # as a file's: complex lost its part
        raise FeaturesError(
            f"`features` must be a numeric array (float or integer), not {features.dtype}",
            arguments=("features",),
        )
    if features.ndim != 4:
        raise FeaturesError(
            f"`features` must have 4 dimensions (N, h, w, U) or (N, U, h, w); got shape "
            f"{features.shape}",
            arguments=("features",),
        )
    if layout not in ("nhwc", "nchw"):
        raise FeaturesError(
            f"`layout` must be 'nhwc' or 'nchw', got {layout!r}", arguments=("layout",)
        )
    shape = (
        tuple(features.shape[1:]) if layout == "nhwc" else (*features.shape[2:], features.shape[1])
    )
    if min(shape) < 1 or features.shape[0] < 1:
        raise FeaturesError(f"features of shape {tuple(features.shape)} hold no activations")
    if layout == "nhwc":
        return (lambda start, stop: {layer: features[start:stop]}), {layer: shape}
    return (lambda start, stop: {layer: np.transpose(features[start:stop], (0, 2, 3, 1))}), {
        layer: shape
    }


def features_activations(features, layout: str = "nhwc", layer: str | None = None) -> Activations:
    """Activations of one layer from a .npy path (read batch by batch) or an array.

    Args:
      features: a path to an (N, h, w, U) .npy file (or (N, U, h, w) with layout "nchw"),
        or such an array.
      layout: "nhwc" or "nchw".
      layer: the layer's name (default: the file's stem, or "features").
    """
    if layer is not None and not isinstance(layer, str):
        raise FeaturesError(
            f"`layer` must be a name (str), got {type(layer).__name__} {layer!r}",
            arguments=("layer",),
        )
    if isinstance(features, (str, os.PathLike)):
        path = Path(features)
        array = open_features(path)
        identity = {"features": file_identity(path)}
        provenance = {"features": str(path)}
        layer = layer or path.stem
        where = f"{path}: "
    else:
        array = features
        identity = None  # hashed once the array is known to be numeric (not object)
        provenance = {}
        layer = layer or "features"
        where = ""
    try:
        read, shapes = features_source(array, layout, layer)
    except FeaturesError as error:
        raise FeaturesError(f"{where}{error}", arguments=error.arguments) from None
    identity = identity or {"features": array_identity(np.asarray(features))}
    return Activations(read, shapes, len(array), {**identity, "layout": layout}, provenance)


def load_model(spec: str, weights: str | Path | None = None):
    """A FeatureModel from ``zoo:NAME`` or ``package.module:factory`` (``factory(weights)``
    returns a ``jaxdissect.models.features.FeatureModel``)."""
    from jaxdissect.models.features import FeatureModel

    if not isinstance(spec, str):  # .startswith's AttributeError otherwise
        raise DissectError(
            f"`model` must be 'zoo:NAME' or 'package.module:factory', got "
            f"{type(spec).__name__} {spec!r}",
            arguments=("model",),
        )
    if spec.startswith("zoo:"):
        from jaxdissect.models import zoo

        return zoo.feature_model(spec[len("zoo:") :], weights)
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise DissectError(
            f"`model` {spec!r}: expected zoo:NAME or package.module:factory",
            arguments=("model",),
        )
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as error:
        raise DissectError(
            f"`model` {spec!r}: cannot import it ({error})", arguments=("model",)
        ) from None
    if not callable(factory):
        raise DissectError(
            f"`model` {spec!r}: {factory_name} is a {type(factory).__name__}, not a factory "
            "function",
            arguments=("model",),
        )
    try:
        model = factory(weights)
    except MemoryError:
        raise
    except Exception as error:  # the user's code: whatever it raises, name where it came from
        raise DissectError(
            f"`model` {spec!r}: the factory raised {type(error).__name__}: {error}",
            arguments=("model",),
        ) from error
    if not isinstance(model, FeatureModel):
        raise DissectError(
            f"`model` {spec!r}: the factory returned {type(model).__name__}, not a "
            "jaxdissect.models.features.FeatureModel (wrap your model with from_nnx, from_linen or "
            "from_function)",
            arguments=("model",),
        )
    return model


def map_shapes(outputs: Mapping[str, Any], model_name: str) -> dict[str, tuple[int, int, int]]:
    """{layer: (h, w, U)} of a model's outputs for a batch, or a DissectError naming the first
    layer whose output is not (B, h, w, U) maps."""
    shapes = {}
    for layer, value in outputs.items():
        if value.ndim != 4:
            raise DissectError(
                f"layer {layer!r} of {model_name!r} has shape {tuple(value.shape)}; dissection "
                "needs (B, h, w, U) maps"
            )
        shapes[layer] = tuple(value.shape[1:])
    return shapes


def model_run(
    model, images, layers: Sequence[str], batch_size: int, weights: str | Path | None = None
) -> Activations:
    """Activations of ``layers`` of a FeatureModel run over uint8 (N, H, W, 3) ``images``;
    ``weights``: the file its weights came from (identified by content for resuming)."""
    import jax.numpy as jnp

    from jaxdissect.models.features import model_activations

    layers = model.check_layers(layers)
    batch_size = min(batch_size, max(1, len(images)))  # batches are padded to this size
    shapes = map_shapes(model.apply(jnp.asarray(np.asarray(images[:1])), layers), model.name)
    read = model_activations(model, images, layers, batch_size)
    # The first image of every batch, run together (one forward per batch of them).
    heads = model_activations(model, images[::batch_size], layers, batch_size)
    identity, provenance = model_identity(model, weights)
    return Activations(read, shapes, len(images), identity, provenance, heads)


def model_identity(model, weights: str | Path | None) -> tuple[dict, dict]:
    """A model run's (identity, provenance): its name and its weights file's content."""
    weights = None if weights is None else Path(weights)
    identity = {"model": model.name, "weights": None if weights is None else file_identity(weights)}
    provenance = {"model": model.name, "weights": None if weights is None else str(weights)}
    return identity, provenance


def nbytes(tree) -> int:
    return sum(x.nbytes for x in runtime.jax.tree.leaves(tree))


def keep_budget() -> int:
    """Bytes that may stay on the devices between the passes (see DEVICE_SHARE)."""
    if runtime.process_count() > 1:
        return 0
    if runtime.default_backend() == "cpu":
        return CPU_KEEP_BYTES
    stats = runtime.jax.devices()[0].memory_stats() or {}
    return int(stats.get("bytes_limit", 0) * DEVICE_SHARE)


def check_shapes(shapes) -> None:
    """Refuses ``shapes`` that are not {layer: (h, w, U)} of positive ints, none empty and
    none beyond the bounds (sides ``MAX_SIDE``, units ``MAX_UNITS``): a FeaturesError
    naming ``shapes``, before any pass allocates for them."""
    from jaxdissect.data.broden import MAX_SIDE

    if not isinstance(shapes, Mapping) or not shapes:
        raise FeaturesError(
            f"`shapes` must be a non-empty {{layer: (h, w, units)}} mapping, got {shapes!r}",
            arguments=("shapes",),
        )
    for layer, shape in shapes.items():
        ok = isinstance(shape, (tuple, list)) and len(shape) == 3
        if not ok or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in shape):
            raise FeaturesError(
                f"`shapes` {layer!r}: expected (h, w, units) of positive ints, got {shape!r}",
                arguments=("shapes",),
            )
        height, width, units = shape
        if max(height, width) > MAX_SIDE or units > MAX_UNITS:
            raise FeaturesError(
                f"`shapes` {layer!r}: {tuple(shape)} exceeds the bounds: maps of at most "
                f"{MAX_SIDE} px a side and at most {MAX_UNITS:,} units",
                arguments=("shapes",),
            )


class ReusedActivations:
    """An ActivationSource that keeps pass 1's device outputs (jax.Arrays, e.g. a model's),
    up to ``budget`` bytes, and hands each back once in pass 2: the model then runs once.
    Set ``recording`` to False after pass 1. NumPy outputs (features files) are not kept."""

    def __init__(self, source: ActivationSource, budget: int):
        self.source = source
        self.budget = budget
        self.recording = True
        self._kept: dict[tuple[int, int], Mapping[str, Any]] = {}

    def __call__(self, start: int, stop: int) -> Mapping[str, Any]:
        if (start, stop) in self._kept:
            return self._kept.pop((start, stop))
        out = self.source(start, stop)
        if not isinstance(out, Mapping):
            raise FeaturesError(
                f"`activations`({start}, {stop}) returned {type(out).__name__}; it must return "
                "{layer: (B, h, w, units) array}",
                arguments=("activations",),
            )
        if self.recording and all(runtime.is_array(v) for v in out.values()):
            size = nbytes(dict(out))
            if size <= self.budget:
                self.budget -= size
                self._kept[(start, stop)] = out
        return out
