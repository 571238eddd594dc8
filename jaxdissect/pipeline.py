"""The dissection pipeline: the one function the CLI, the studies and Python users call.

``dissect`` opens and checks the inputs, runs both passes (``passes``) on the chosen
backend (``kernels``), scores each layer (``dissection``), and, given an output folder,
writes the set of outputs (``results``, ``report``) under a lock, resumable from its
passes' checkpoints (``checkpoint``), keyed by ``run_fingerprint``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxdissect import runtime
from jaxdissect.checkpoint import PassCheckpoints
from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import BrodenDataset, open_broden
from jaxdissect.data.cache import LabelArrays, cache_key, load_image_array, load_label_arrays
from jaxdissect.dissection import Dissection, score_layer
from jaxdissect.errors import DissectError, FeaturesError
from jaxdissect.kernels import kernel_name, select_backend
from jaxdissect.kernels.base import ActivationSource, Shapes
from jaxdissect.outdir import discard, locked, new_set, publish
from jaxdissect.passes import compute_tally, compute_thresholds
from jaxdissect.sources import (
    Activations,
    ReusedActivations,
    activations_digest,
    features_activations,
    keep_budget,
    model_run,
    nbytes,
)
from jaxdissect.timings import mark

DEFAULT_CONFIG = DissectConfig()
# Beside each results.json: the run's fingerprint, so that a study reuses only results of
# the same inputs and settings (``completed``).
FINGERPRINT = "fingerprint.json"
# The layout of the passes' saved states: bump it when a state changes shape, so that a
# checkpoint of an earlier version is not restored into the new states.
STATE_FORMAT = 3  # 3: NumPy .npz pass checkpoints (2 was Orbax's layout)


def _labels_fit_device(labels: LabelArrays, config: DissectConfig, budget: int) -> bool:
    """Whether pass 2 should read its labels from one accelerator's memory."""
    jax = runtime.jax
    return (
        runtime.default_backend() != "cpu"
        and jax.device_count() == 1
        and kernel_name(config) == "xla"
        and not isinstance(labels.slot_planes, jax.Array)
        and nbytes(labels) <= budget
    )


def dissect_activations(
    activations: ActivationSource,
    num_images: int,
    shapes: Shapes,
    dataset: BrodenDataset,
    labels: LabelArrays,
    config: DissectConfig = DEFAULT_CONFIG,
    progress: bool = True,
    checkpoints: PassCheckpoints | None = None,
) -> dict[str, Dissection]:
    """Dissects every layer of ``shapes`` in memory: thresholds, tally, IoU, labels, summary.

    Args:
      activations: ``activations(start, stop)`` gives {layer: (B, h, w, U)} for images
        [start, stop), in index.csv order (called once per batch in each of the two passes,
        or once in all where it returns jax.Arrays that fit ``keep_budget``).
      num_images: N, which must equal the dataset's.
      shapes: {layer: (h, w, U)}.
      dataset: from ``open_broden``.
      labels: from ``load_label_arrays``.
      config: thresholds, union rule, batch size, kernel.
      progress: show progress bars.
      checkpoints: resume from, and save, the passes' states (see ``jaxdissect.checkpoint``).

    Returns:
      {layer: Dissection}.
    """
    if num_images != dataset.num_images:
        raise FeaturesError(
            f"activations cover {num_images} images but "
            f"{dataset.directory / 'index.csv'} lists {dataset.num_images}"
        )
    backend = select_backend(config)
    budget = keep_budget()
    upload = None
    if _labels_fit_device(labels, config, budget):
        budget -= nbytes(labels)
        copier = concurrent.futures.ThreadPoolExecutor(1)
        upload = copier.submit(runtime.jax.device_put, labels)
        copier.shutdown(wait=False)  # the copy goes on; the thread ends with it
    reused = ReusedActivations(activations, budget)
    thresholds = compute_thresholds(
        reused, num_images, shapes, config, progress, checkpoints, backend
    )
    mark("pass 1")
    reused.recording = False
    if upload is not None:  # copied while pass 1 ran
        labels = LabelArrays(*upload.result())
    counts = compute_tally(
        reused, labels, dataset, thresholds, shapes, config, progress, checkpoints, backend
    )
    mark("pass 2")
    return {
        layer: score_layer(layer, thresholds[layer], counts[layer], dataset, config)
        for layer in shapes
    }


def run_fingerprint(dataset: BrodenDataset, activations: Activations, config: DissectConfig):
    """Everything a dissection's results depend on; a resumed or reused run must match it.

    The config (quantile, union, kernel, top images, batch size), the dataset's content key
    and chosen categories, the activations' identity (a features file's content and layout,
    or a model and its weights' content), the layers' shapes and, for the XLA kernel, the
    device count (its states are laid out per device; the CPU kernel's are not).
    """
    kernel = kernel_name(config)
    return {
        "state_format": STATE_FORMAT,
        "config": dataclasses.asdict(config),
        "kernel": kernel,
        "dataset": cache_key(dataset),
        "categories": list(dataset.categories),
        "activations": activations.identity,
        "shapes": {layer: list(shape) for layer, shape in activations.shapes.items()},
        "devices": runtime.jax.device_count() if kernel == "xla" else 1,
    }


def layer_folder(out: Path, layer: str, layers: Sequence[str], layer_folders: bool | None):
    """Where a layer's outputs go: OUT/ for one layer, OUT/<layer>/ for several (or always,
    with ``layer_folders``)."""
    separate = len(layers) > 1 if layer_folders is None else layer_folders
    return out / layer if separate else out


def completed(
    out: str | Path, layers: Sequence[str], fingerprint: dict, layer_folders: bool | None = None
) -> bool:
    """Whether ``out`` holds finished results of these layers from a run with this
    fingerprint (so they can be reused)."""
    for layer in layers:
        folder = layer_folder(Path(out), layer, layers, layer_folders)
        try:
            same = json.loads((folder / FINGERPRINT).read_text()) == _canonical(fingerprint)
        except (OSError, ValueError):
            return False
        if not same or not (folder / "results.json").is_file():
            return False
    return True


def _canonical(fingerprint: dict) -> dict:
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


def open_inputs(
    dataset: BrodenDataset | str | Path,
    source,
    layers: Sequence[str] | None,
    batch_size: int,
    weights: str | Path | None = None,
    images=None,
    cache: str | Path | None = None,
    progress: bool = True,
) -> tuple[BrodenDataset, Activations, object]:
    """The dataset opened and the source as ``Activations`` of as many images (see
    ``dissect`` for the arguments); also the probe images when a model needed them."""
    # A FeatureModel exists only once its module (and JAX) is imported: a features file
    # needs neither.
    features = sys.modules.get("jaxdissect.features")
    if not isinstance(dataset, BrodenDataset):
        dataset = open_broden(dataset)
    if features is not None and isinstance(source, features.FeatureModel):
        if not layers:
            raise DissectError(f"name at least one layer of model {source.name!r}")
        if images is None:
            images = load_image_array(dataset, cache, progress)
        source = model_run(source, images, layers, batch_size, weights)
    elif not isinstance(source, Activations):
        if layers is not None and len(layers) > 1:
            raise DissectError("a features file holds one layer: give at most one layer name")
        source = features_activations(source, layer=layers[0] if layers else None)
    if source.num_images != dataset.num_images:
        where = source.provenance.get("features", "the activations")
        raise FeaturesError(
            f"{where}: {source.num_images} rows of activations but "
            f"{dataset.directory / 'index.csv'} lists {dataset.num_images} images"
        )
    return dataset, source, images


def dissect(
    dataset: BrodenDataset | str | Path,
    source,
    config: DissectConfig = DEFAULT_CONFIG,
    out: str | Path | None = None,
    *,
    layers: Sequence[str] | None = None,
    weights: str | Path | None = None,
    names: Sequence[str] | None = None,
    labels: LabelArrays | None = None,
    images=None,
    cache: str | Path | None = None,
    report: bool = True,
    checkpoint_every: int | None = 100,
    layer_folders: bool | None = None,
    progress: bool = True,
) -> dict[str, Dissection]:
    """Dissects layers end to end: the one pipeline of the CLI, the studies and Python users.

    Args:
      dataset: a Broden-format folder, or ``open_broden``'s dataset.
      source: the activations: an ``Activations`` (see ``jaxdissect.sources``), a path to
        an (N, h, w, U) .npy file or such an array (one layer), or a ``FeatureModel`` run
        over the probe's images (then ``layers`` names its layers, and ``weights`` the file
        its weights came from, for resuming). A list of FeatureModels of one architecture
        (checkpoints; ``weights`` a list too) runs as one pass (``jaxdissect.many``): each
        writes OUT/<checkpoint name>/ and the result is {name: {layer: Dissection}}.
      names: with a list of models, each one's folder under ``out`` (default: its weights
        file's name without suffix).
      config: how to dissect.
      out: where to write; None keeps everything in memory. One layer writes OUT/, several
        OUT/<layer>/ (or always, with ``layer_folders``) and OUT/index.html: tally.csv,
        counts.npz, results.json (last) and, with ``report``, report.html. OUT is locked while the run lasts and its files are
        replaced as a set (``outdir``).
      layers: the model's layers; for a features file or array, its layer's name.
      labels, images: the decoded labels and probe images, when the caller has them.
      cache: the decoded-data cache (default ``$JAXDISSECT_CACHE`` or ~/.cache/jaxdissect).
      report: write the HTML report(s).
      checkpoint_every: with ``out`` and one process, save the passes' states every this
        many batches in OUT/.checkpoint, and resume from them when the same run is started
        again (same ``run_fingerprint``); None never saves.
      progress: progress bars.

    Returns:
      {layer: Dissection}; under ``jax.distributed`` only process 0 writes.
    """
    mark("startup")
    if isinstance(source, (list, tuple)) and not isinstance(source, Activations):
        # Checkpoints of one architecture: one pass.
        from jaxdissect.features import FeatureModel
        from jaxdissect.many import dissect_many

        if not source:
            raise DissectError(
                "`source` is an empty list: give one FeatureModel per checkpoint",
                arguments=("source",),
            )
        others = [type(m).__name__ for m in source if not isinstance(m, FeatureModel)]
        if others:
            raise DissectError(
                f"`source` lists a {others[0]}: a list holds FeatureModels (checkpoints of "
                "one architecture)",
                arguments=("source",),
            )
        if not layers:
            raise DissectError(
                f"name at least one layer (`layers`) of model {source[0].name!r}",
                arguments=("layers",),
            )
        if out is None:
            raise DissectError(
                "dissecting several models needs an output folder (`out`)", arguments=("out",)
            )
        weights = weights if weights is not None else [None] * len(source)
        if isinstance(weights, (str, Path)):
            raise DissectError(
                "give one `weights` file per model (a list), or none", arguments=("weights",)
            )
        return dissect_many(
            dataset, source, config, out, layers=layers, weights=weights, names=names,
            labels=labels, images=images, cache=cache, report=report,
            checkpoint_every=checkpoint_every, layer_folders=layer_folders, progress=progress,
        )  # fmt: skip
    if names is not None:
        raise DissectError("`names` goes with a list of models", arguments=("names",))
    dataset, source, images = open_inputs(
        dataset, source, layers, config.batch_size, weights, images, cache, progress
    )
    if config.top_images > dataset.num_images:  # a unit has no more top images than that
        config = dataclasses.replace(config, top_images=dataset.num_images)
    if labels is None:
        labels = load_label_arrays(dataset, cache, progress)
    mark("label cache")
    if out is None:
        return dissect_activations(
            source.read, source.num_images, source.shapes, dataset, labels, config, progress
        )

    out = Path(out)
    writer = runtime.process_index() == 0
    fingerprint = run_fingerprint(dataset, source, config)
    with locked(out) if writer else contextlib.nullcontext():
        checkpoints = None
        if checkpoint_every is not None and runtime.process_count() == 1:
            checkpoints = PassCheckpoints(out / ".checkpoint", fingerprint, checkpoint_every)
            if "model" in source.identity:
                # A model's name and weights file do not pin what it computes: its first
                # image's activations do (one padded batch, the shape pass 1 compiles).
                checkpoints.check_activations(activations_digest(source.read(0, 1)))
        dissections = dissect_activations(
            source.read, source.num_images, source.shapes, dataset, labels, config, progress,
            checkpoints,
        )  # fmt: skip
        if not writer:  # the other processes only computed their share
            return dissections
        mark("scores")
        if report and images is None:
            images = load_image_array(dataset, cache, progress)
            mark("image cache")
        write_outputs(
            out, dissections, dataset, config, source, fingerprint, images, report, layer_folders
        )
        if checkpoints is not None:
            checkpoints.remove()
    return dissections


def write_outputs(
    out, dissections, dataset, config, source, fingerprint, images, report, layer_folders=None
):
    """Writes every layer's files (and reports) into a new set folder, then publishes the
    set into OUT (see ``outdir``): the previous set stays whole until this one is."""
    from jaxdissect.report import write_index, write_layer_report
    from jaxdissect.results import write_dissection

    staging = new_set(out, "dissect")
    try:
        for layer, dissection in dissections.items():
            folder = layer_folder(staging, layer, list(dissections), layer_folders)
            folder.mkdir(parents=True, exist_ok=True)
            fingerprint_text = json.dumps(_canonical(fingerprint), indent=1) + "\n"
            (folder / FINGERPRINT).write_text(fingerprint_text)
            write_dissection(folder, dissection, dataset, config, source.provenance)
            mark("writing")
            if report:
                write_layer_report(folder, images)
                mark("report")
        if report and layer_folder(staging, "", list(dissections), layer_folders) != staging:
            write_index(staging, list(dissections))
    except BaseException:
        discard(staging)
        raise
    publish(staging, out)
    mark("published")
