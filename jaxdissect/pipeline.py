"""The dissection pipeline: the one function the CLI, the studies and Python users call.

``dissect`` opens and checks the inputs, runs both passes (``passes``) on the chosen
backend (``kernels``), scores each layer (``dissection``), and, given an output folder,
writes the set of outputs (``results``, ``report``) under a lock, resumable from its
passes' checkpoints (``checkpoint``), keyed by ``run_fingerprint``; the machinery it runs on
(``driver``) also runs the other analyses of a layer (``compositional``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from jaxdissect import runtime
from jaxdissect.checkpoint import PassCheckpoints
from jaxdissect.config import (
    DissectConfig,
    check_config,
    check_out_apart,
    check_paths,
    fit_to_images,
)
from jaxdissect.data.broden import BrodenDataset
from jaxdissect.data.cache import LabelArrays, load_image_array, load_label_arrays
from jaxdissect.dissection import Dissection
from jaxdissect.driver import (
    DEFAULT_CONFIG,
    dissect_activations,
    layer_folder,
    open_inputs,
    run_fingerprint,
    write_outputs,
)
from jaxdissect.errors import DissectError
from jaxdissect.outdir import locked
from jaxdissect.sources import Activations, heads_digest
from jaxdissect.timings import mark


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
    check_config(config)
    check_paths(out=out, cache=cache)
    check_out_apart(out, dataset)
    if isinstance(source, (list, tuple)) and not isinstance(source, Activations):
        # Checkpoints of one architecture: one pass.
        from jaxdissect.many import dissect_many

        weights = _checked_model_list(source, layers, out, weights)
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
    config = fit_to_images(config, dataset.num_images)
    if labels is None:
        labels = load_label_arrays(dataset, cache, progress)
    mark("label cache")
    if out is None:
        return dissect_activations(
            source.read, source.num_images, source.shapes, dataset, labels, config, progress
        )
    return _dissect_into(
        Path(out), dataset, source, labels, images, config, cache, report, checkpoint_every,
        layer_folders, progress,
    )  # fmt: skip


def _checked_model_list(models, layers, out, weights) -> list:
    """``dissect``'s arguments for a list of models checked: a non-empty list of
    FeatureModels, some layers, an output folder, and a list of weights files (or none);
    returns the weights, one per model."""
    from jaxdissect.models.features import FeatureModel

    if not models:
        raise DissectError(
            "`source` is an empty list: give one FeatureModel per checkpoint",
            arguments=("source",),
        )
    others = [type(m).__name__ for m in models if not isinstance(m, FeatureModel)]
    if others:
        raise DissectError(
            f"`source` lists a {others[0]}: a list holds FeatureModels (checkpoints of "
            "one architecture)",
            arguments=("source",),
        )
    if not layers:
        raise DissectError(
            f"name at least one layer (`layers`) of model {models[0].name!r}",
            arguments=("layers",),
        )
    if out is None:
        raise DissectError(
            "dissecting several models needs an output folder (`out`)", arguments=("out",)
        )
    weights = weights if weights is not None else [None] * len(models)
    if isinstance(weights, (str, Path)):
        raise DissectError(
            "give one `weights` file per model (a list), or none", arguments=("weights",)
        )
    return weights


def _dissect_into(
    out, dataset, source, labels, images, config, cache, report, checkpoint_every,
    layer_folders, progress,
) -> dict[str, Dissection]:  # fmt: skip
    """``dissect`` with an output folder: under OUT's lock, resumable from the passes'
    checkpoints, the outputs published as a set by process 0."""
    writer = runtime.process_index() == 0
    for layer in source.shapes:  # each layer's folder name refused before any work
        layer_folder(out, layer, list(source.shapes), layer_folders)
    fingerprint = run_fingerprint(dataset, source, config)
    with locked(out) if writer else contextlib.nullcontext():
        checkpoints = None
        if checkpoint_every is not None and runtime.process_count() == 1:
            checkpoints = PassCheckpoints(out / ".checkpoint", fingerprint, checkpoint_every)
            if "model" in source.identity or "features" in source.identity:
                # A model's name and weights file do not pin what it computes, nor do the
                # probe's stamps (or images given in memory) pin what it sees: the first
                # image of every batch is checked before saved states are trusted.
                checkpoints.check_activations(
                    heads_digest(source.read, source.num_images, config.batch_size, source.heads)
                )
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
