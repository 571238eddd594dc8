"""The machinery every command's run goes through: the inputs opened, the run's
fingerprint, a finished run found and reused, OUT's lock, and the outputs published as a
set (``outdir``); also the two passes over a layer in memory (``dissect_activations``).

``pipeline.dissect`` runs dissections on it; ``run_analysis`` runs any other computation over
one layer's activations and the probe's labels (``Analysis``: the formulas and the concept
directions of ``compositional``) with the same fingerprint, resume, lock and publishing.
Under ``jax.distributed`` every process computes and only process 0 locks and writes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import numbers
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxdissect import runtime
from jaxdissect.checkpoint import PassCheckpoints
from jaxdissect.config import DissectConfig, check_config, check_out_apart, check_paths
from jaxdissect.data.broden import BrodenDataset, open_broden
from jaxdissect.data.cache import (
    LabelArrays,
    cache_key,
    check_is_dataset,
    check_labels,
    load_image_array,
    load_label_arrays,
)
from jaxdissect.dissection import Dissection, score_layer
from jaxdissect.errors import DissectError, FeaturesError
from jaxdissect.kernels import kernel_name, select_backend
from jaxdissect.kernels.base import ActivationSource, Shapes
from jaxdissect.outdir import current_set, discard, locked, new_set, publish
from jaxdissect.passes import compute_tally, compute_thresholds
from jaxdissect.sources import (
    Activations,
    ReusedActivations,
    check_shapes,
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
    check_config(config)
    check_is_dataset(dataset)
    if isinstance(num_images, bool) or not isinstance(num_images, numbers.Integral):
        raise FeaturesError(
            f"`num_images` must be an integer, got {type(num_images).__name__} {num_images!r}",
            arguments=("num_images",),
        )
    check_labels(labels, dataset)
    if num_images != dataset.num_images:
        raise FeaturesError(
            f"`num_images` {num_images}: activations of that many images, but "
            f"{dataset.directory / 'index.csv'} lists {dataset.num_images}",
            arguments=("num_images",),
        )
    if not callable(activations):
        raise FeaturesError(
            f"`activations` must be a callable (start, stop) -> {{layer: array}}, got "
            f"{type(activations).__name__}",
            arguments=("activations",),
        )
    check_shapes(shapes)
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
    if not separate_folders(layers, layer_folders):
        return out
    # A name from the caller's Activations: "../x" wrote outside the set (or OUT), and
    # ".jaxdissect" would be published over OUT's store.
    if not layer or layer.startswith(".") or "/" in layer or "\0" in layer or os.sep in layer:
        raise DissectError(
            f"layer {layer!r} cannot be a folder under OUT, where each of several layers "
            "is written: rename it (no '/', not starting with '.')",
            arguments=("layers",),
        )
    return out / layer


def separate_folders(layers: Sequence[str], layer_folders: bool | None) -> bool:
    """Whether the layers' outputs go to a folder each (and an index.html beside them)."""
    return len(layers) > 1 if layer_folders is None else bool(layer_folders)


def completed(
    out: str | Path, layers: Sequence[str], fingerprint: dict, layer_folders: bool | None = None
) -> bool:
    """Whether ``out`` holds finished results of these layers from a run with this
    fingerprint (so they can be reused)."""
    for layer in layers:
        folder = layer_folder(Path(out), layer, layers, layer_folders)
        try:
            same = json.loads((folder / FINGERPRINT).read_text()) == _canonical(fingerprint)
        except (OSError, ValueError, RecursionError):
            return False
        if not same or not (folder / "results.json").is_file():
            return False
    return True


def _canonical(fingerprint: dict) -> dict:
    return json.loads(json.dumps(fingerprint, sort_keys=True, default=str))


def check_images(images, dataset: BrodenDataset) -> None:
    """Refuses probe ``images`` (when given) that are not one per image of ``dataset``."""
    if images is not None and len(images) != dataset.num_images:
        raise DissectError(
            f"`images` holds {len(images)} images but {dataset.directory / 'index.csv'} "
            f"lists {dataset.num_images}",
            arguments=("images",),
        )
    expected = (dataset.num_images, *dataset.image_size, 3)
    if images is not None and (images.dtype != np.uint8 or tuple(images.shape) != expected):
        raise DissectError(  # the report drew them, or failed in NumPy's broadcasting
            f"`images` must be uint8 of shape {expected} (index.csv's ih x iw, RGB), got "
            f"{images.dtype} {tuple(images.shape)}",
            arguments=("images",),
        )


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
    features = sys.modules.get("jaxdissect.models.features")
    if not isinstance(dataset, BrodenDataset):
        dataset = open_broden(dataset)
    is_model = features is not None and isinstance(source, features.FeatureModel)
    if source is None:
        raise FeaturesError(
            "`source` is None: give an Activations, a path to an (N, h, w, U) .npy file, "
            "such an array, or a FeatureModel",
            arguments=("source",),
        )
    if weights is not None and not is_model:
        raise DissectError(
            f"`weights` {str(weights)!r} goes with a model to load; `source` is "
            f"{type(source).__name__}, whose activations are already computed",
            arguments=("weights",),
        )
    check_images(images, dataset)
    if is_model:
        if not layers:
            raise DissectError(f"name at least one layer of model {source.name!r}")
        if images is None:
            images = load_image_array(dataset, cache, progress)
        source = model_run(source, images, layers, batch_size, weights)
    elif not isinstance(source, Activations):
        if layers is not None and len(layers) > 1:
            raise DissectError(
                "a features file holds one layer: give at most one name in `layers`",
                arguments=("layers",),
            )
        source = features_activations(source, layer=layers[0] if layers else None)
    if source.num_images != dataset.num_images:
        where = source.provenance.get("features", "the activations")
        raise FeaturesError(
            f"{where}: {source.num_images} rows of activations but "
            f"{dataset.directory / 'index.csv'} lists {dataset.num_images} images"
        )
    return dataset, source, images


def write_outputs(
    out, dissections, dataset, config, source, fingerprint, images, report, layer_folders=None
):
    """Writes every layer's files (and reports) into a new set folder, then publishes the
    set into OUT (see ``outdir``): the previous set stays whole until this one is."""
    from jaxdissect.report.html import write_index, write_layer_report
    from jaxdissect.report.results import write_dissection

    def write(staging: Path) -> None:
        for layer, dissection in dissections.items():
            folder = layer_folder(staging, layer, list(dissections), layer_folders)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / FINGERPRINT).write_text(fingerprint_text(fingerprint))
            write_dissection(folder, dissection, dataset, config, source.provenance)
            mark("writing")
            if report:
                write_layer_report(folder, images)
                mark("report")
        if report and separate_folders(list(dissections), layer_folders):
            write_index(staging, list(dissections))

    publish_set(out, "dissect", write)
    mark("published")


def fingerprint_text(fingerprint: dict) -> str:
    """The fingerprint as its file holds it."""
    return json.dumps(_canonical(fingerprint), indent=1) + "\n"


def publish_set(out: Path, kind: str, write: Callable[[Path], None]) -> None:
    """Runs ``write(folder)`` into a new set folder of ``kind`` and publishes the set into
    OUT, whose lock the caller holds; a failed ``write`` leaves OUT's current set as it was.
    A DissectError from ``write`` names OUT's files, not the set folder's: the user knows
    only OUT."""
    staging = new_set(out, kind)
    try:
        write(staging)
    except DissectError as error:
        discard(staging)
        message = str(error).replace(str(staging), str(out))
        raise type(error)(message, arguments=error.arguments) from None
    except BaseException:
        discard(staging)
        raise
    publish(staging, out)


class LayerInputs(NamedTuple):
    """What an ``Analysis`` reads: the dataset and its decoded ``labels``, the activations
    (``source.read(start, stop)`` gives {layer: (B, h, w, U)}), the ``layer``, the
    ``config`` of the dissection's passes, ``images`` (the probe's pixels, given to a
    ``write`` that shows them in its report), whether to show ``progress`` and whether to
    write the ``report``."""

    dataset: BrodenDataset
    labels: LabelArrays
    source: Activations
    layer: str
    config: DissectConfig
    images: Any
    progress: bool
    report: bool


class Analysis(NamedTuple):
    """A computation over one layer's activations and the probe's labels, run by
    ``run_analysis``.

    Attributes:
      kind: its set of outputs in OUT (one of ``outdir.KINDS``).
      settings: its own settings (JSON-able): part of the run's fingerprint.
      run: ``run(inputs: LayerInputs) -> result``.
      write: ``write(folder, result, inputs)`` writes the result's files into ``folder``.
      load: ``load(folder, dataset) -> result`` reads a finished run's result back.
      check: ``check(dataset, shape)`` refuses, before OUT is touched, settings that the
        layer's (h, w, U) cannot take (None: any will do).
      shows_images: whether its report shows the probe's images (then ``write`` gets them).
    """

    kind: str
    settings: dict
    run: Callable[[LayerInputs], Any]
    write: Callable[[Path, Any, LayerInputs], None]
    load: Callable[[Path, BrodenDataset], Any]
    check: Callable[[BrodenDataset, tuple], None] | None = None
    shows_images: bool = False


def analysis_fingerprint(
    analysis: Analysis, dataset: BrodenDataset, source: Activations, layer: str, config, report
) -> dict:
    """Everything an analysis's outputs depend on: the dissection's fingerprint of its
    inputs (``run_fingerprint``) with the layer, the analysis's settings and whether the
    report is written."""
    one_layer = source._replace(shapes={layer: source.shapes[layer]})
    return {
        **run_fingerprint(dataset, one_layer, config),
        "analysis": analysis.kind,
        "layer": layer,
        "settings": analysis.settings,
        "report": report,
    }


def finished(out: Path, kind: str, fingerprint: dict) -> Path | None:
    """OUT's current set of ``kind`` when a run with this fingerprint wrote it, else None."""
    folder = current_set(out, kind)
    try:
        text = (folder / f"{kind}.{FINGERPRINT}").read_text() if folder else None
    except OSError:
        return None
    return folder if text == fingerprint_text(fingerprint) else None


def run_analysis(
    analysis: Analysis,
    dataset: BrodenDataset | str | Path,
    source,
    config: DissectConfig = DEFAULT_CONFIG,
    out: str | Path | None = None,
    *,
    layer: str | None = None,
    weights: str | Path | None = None,
    labels: LabelArrays | None = None,
    images=None,
    cache: str | Path | None = None,
    report: bool = True,
    progress: bool = True,
):
    """Runs ``analysis`` on one layer, with a dissection's fingerprint, resume, lock and
    publishing (see ``pipeline.dissect`` for the arguments).

    With ``out``, OUT is locked while the run lasts; a finished run of the same
    fingerprint there (``OUT/<kind>.fingerprint.json``) is read back with
    ``analysis.load`` instead of computed again; otherwise the result's files and the
    fingerprint are published into OUT as one set.

    Returns:
      ``analysis.run``'s result (or ``analysis.load``'s, for a finished run).
    """
    check_config(config)
    check_paths(out=out, cache=cache)
    check_out_apart(out, dataset)
    features = sys.modules.get("jaxdissect.models.features")
    if features is not None and isinstance(source, features.FeatureModel) and not layer:
        raise DissectError(
            f"name the layer of model {source.name!r} (`layer`)", arguments=("layer",)
        )
    dataset, source, images = open_inputs(
        dataset, source, [layer] if layer else None, config.batch_size, weights, images, cache,
        progress,
    )  # fmt: skip
    layer = layer or next(iter(source.shapes))
    if layer not in source.shapes:
        raise DissectError(f"layer {layer!r} is not among {sorted(source.shapes)}")
    if analysis.check is not None:
        analysis.check(dataset, source.shapes[layer])

    def inputs(images) -> LayerInputs:
        nonlocal labels
        if labels is None:
            labels = load_label_arrays(dataset, cache, progress)
        return LayerInputs(dataset, labels, source, layer, config, images, progress, report)

    if out is None:
        return analysis.run(inputs(None))
    out = Path(out)
    fingerprint = analysis_fingerprint(analysis, dataset, source, layer, config, report)
    writer = runtime.process_index() == 0
    with locked(out) if writer else contextlib.nullcontext():
        done = finished(out, analysis.kind, fingerprint)
        if runtime.process_count() > 1:
            done = _agree_on_reuse(out, analysis.kind, done)
        if done is not None:
            return analysis.load(done, dataset)
        result = analysis.run(inputs(None))
        if not writer:  # the other processes only computed
            return result
        shown = report and analysis.shows_images
        if shown and images is None:
            images = load_image_array(dataset, cache, progress)

        def write(staging: Path) -> None:
            text = fingerprint_text(fingerprint)
            (staging / f"{analysis.kind}.{FINGERPRINT}").write_text(text)
            analysis.write(staging, result, inputs(images if shown else None))

        publish_set(out, analysis.kind, write)
    return result


def _agree_on_reuse(out: Path, kind: str, done: Path | None) -> Path | None:
    """Process 0's decision to reuse OUT's finished run, taken by every process: where
    their views of OUT differ (a folder not shared, a stale run), one process computing
    while another reused would fail in collectives that the other never joins."""
    from jax.experimental import multihost_utils

    reused = bool(multihost_utils.broadcast_one_to_all(done is not None))
    if not reused:
        return None
    if done is None:
        raise DissectError(
            f"{out}: process {runtime.process_index()} cannot read the finished {kind} run "
            "that process 0 reuses there: give every process the same shared OUT folder"
        )
    return done


def read_layer(source: Activations, layer: str, batch_size: int, progress: bool):
    """One pass over the probe that keeps a layer's activations: (N, h, w, U) float32 in
    host memory, for analyses that visit the images more than twice."""
    import numpy as np

    from jaxdissect.progress import progress_bar

    acts = np.empty((source.num_images, *source.shapes[layer]), np.float32)
    for start in progress_bar(
        range(0, source.num_images, batch_size), desc=f"{layer}: activations", unit="batch",
        disable=not progress,
    ):  # fmt: skip
        stop = min(start + batch_size, source.num_images)
        acts[start:stop] = np.asarray(source.read(start, stop)[layer], np.float32)
    if not np.isfinite(acts).all():
        image = int(np.argmin(np.isfinite(acts).reshape(len(acts), -1).all(1)))
        raise FeaturesError(f"layer {layer!r}: NaN or inf activation in image {image}")
    return acts
