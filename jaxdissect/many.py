"""Many checkpoints of one architecture, dissected in one process.

The probe is read once, the labels go to the devices once, and the models run as one
forward pass over their stacked parameters: ``jax.vmap`` on accelerators; on the CPU
``jax.lax.map``, which gives the same bits as one model's forward pass and, measured on
2 cores, a third of vmap's time (XLA's CPU convolutions do not batch over kernels). Each
(checkpoint, layer) is one layer of the two passes, so the passes run once for all of
them. Each checkpoint's outputs go to ``OUT/<name>/`` with the fingerprint its own run
would have, byte-identical to that run's, so either kind of rerun reuses them; with vmap,
whose bits are not verified equal to one model's, the fingerprint and results.json record
``stacked_forward: vmap``, and only a rerun of many checkpoints reuses them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import runtime
from jaxdissect.checkpoint import PassCheckpoints
from jaxdissect.config import DissectConfig, fit_to_images
from jaxdissect.data.broden import BrodenDataset, open_broden
from jaxdissect.data.cache import load_image_array, load_label_arrays
from jaxdissect.driver import (
    check_images,
    completed,
    dissect_activations,
    run_fingerprint,
    write_outputs,
)
from jaxdissect.errors import DissectError
from jaxdissect.models.features import FeatureModel
from jaxdissect.outdir import locked
from jaxdissect.sources import (
    Activations,
    heads_digest,
    keep_budget,
    map_shapes,
    model_identity,
)

SEPARATOR = "/"  # between a checkpoint's name and its layer's, in the passes' layer names
GROUP_CHECKPOINTS = ".checkpoint-"  # OUT/.checkpoint-<group key>: one group's pass states


def group_key(names: Sequence[str], fingerprints: Sequence[dict]) -> str:
    """A group's checkpoint folder suffix: a hash of its members' names and fingerprints,
    so that a regrouped rerun (some checkpoints done, another group size) never meets
    another group's states under its name."""
    members = json.dumps([list(names), list(fingerprints)], sort_keys=True, default=str)
    return hashlib.sha256(members.encode()).hexdigest()[:16]


def _check_checkpoint_folders(out: Path, names: Sequence[str]) -> None:
    """Refuses a link (or a file) at OUT/<name>: a checkpoint's outputs, whole OUT of its
    own, were written wherever a link planted there led, outside OUT."""
    for name in names:
        folder = out / name
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise DissectError(
                f"`out` {out}: {name} is a link or not a folder; each checkpoint's outputs "
                "are written only inside OUT (move it away)",
                arguments=("out",),
            )


def check_names(names: Sequence[str], argument: str) -> list[str]:
    """Refuses checkpoint folder names that clash or cannot be a folder under OUT; the
    error names ``argument``, where they came from."""
    names = list(names)
    bad = [n for n in names if not isinstance(n, str) or not n or n.startswith(".")]
    bad += [n for n in names if isinstance(n, str) and SEPARATOR in n]
    if bad:
        raise DissectError(
            f"checkpoint name {bad[0]!r} (from `{argument}`) cannot be an output folder name",
            arguments=(argument,),
        )
    seen = [n for n in names if names.count(n) > 1]
    if seen:
        raise DissectError(
            f"two checkpoints would write to the same folder {seen[0]!r}: give `{argument}` "
            "of different names",
            arguments=(argument,),
        )
    return names


def checkpoint_names(weights: Sequence[str | Path | None], models: Sequence[FeatureModel]):
    """Each checkpoint's output folder name: its weights file's name without its last
    suffix (``run.step100.th`` gives ``run.step100``; the model's name without weights).
    Duplicates are refused, naming what to change: the weights files or, where a model has
    none, ``names``."""
    names = [
        Path(w).stem if w is not None else m.name for w, m in zip(weights, models, strict=True)
    ]
    return check_names(names, "weights" if None not in weights else "names")


def check_one_architecture(models: Sequence[FeatureModel]) -> None:
    """Refuses models that cannot share a forward pass: parameters not exposed, or other
    names, structures or shapes than the first's."""
    first = models[0]
    if any(m.function is None for m in models):
        raise DissectError(
            f"model {first.name!r} does not expose its parameters (FeatureModel.function): "
            "dissect its checkpoints one at a time"
        )
    structure = jax.tree.structure(first.params)
    shapes = [(x.shape, x.dtype) for x in jax.tree.leaves(first.params)]
    for model in models[1:]:
        same = jax.tree.structure(model.params) == structure and shapes == [
            (x.shape, x.dtype) for x in jax.tree.leaves(model.params)
        ]
        if model.name != first.name or not same:
            raise DissectError(
                f"checkpoints of one run must share an architecture: {model.name!r} differs "
                f"from {first.name!r} in its parameters' names or shapes"
            )


def forward_mode() -> str:
    """How stacked checkpoints run: ``lax.map`` on the CPU, whose bits equal one model's
    forward pass (tested); ``vmap`` elsewhere, batched kernels whose bits are not verified
    equal to one model's (``bench/device_check.py`` part e compares them)."""
    return "lax.map" if runtime.default_backend() == "cpu" else "vmap"


@functools.partial(jax.jit, static_argnames=("function", "layers", "mode"))
def _stacked_run(stacked, images, *, function, layers, mode):
    def one(params):
        return function(params, images, layers)

    return jax.vmap(one)(stacked) if mode == "vmap" else jax.lax.map(one, stacked)


def stacked_forward(models: Sequence[FeatureModel]):
    """``forward(images, layers) -> {layer: (K, B, h, w, U)}`` of K models of one
    architecture: one compiled function over their stacked parameters (compiled once per
    model function, layers, mode and shapes, also across calls)."""
    check_one_architecture(models)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(m.params for m in models))
    function, mode = models[0].function, forward_mode()
    return lambda images, layers: _stacked_run(
        stacked, images, function=function, layers=layers, mode=mode
    )


def _group_size(count: int, shapes: Mapping[str, tuple[int, int, int]], batch_size: int) -> int:
    """How many models' activations of one batch fit the memory kept for them."""
    per_model = sum(batch_size * h * w * u * 4 for h, w, u in shapes.values())
    return max(1, min(count, keep_budget() // max(per_model, 1) or 1))


def _group_source(models, names, images, layers, batch_size, current, sources):
    """An ActivationSource over a group of checkpoints: {name/layer: (B, h, w, U)}. Each
    batch runs the group's forward once; each checkpoint's source in ``sources`` (its
    layers, or its view of them) reads its share from ``current`` while the batch lasts."""
    forward = stacked_forward(models)

    def read(start: int, stop: int):
        batch = np.asarray(images[start:stop])
        if len(batch) < batch_size:  # padded as a single model's run is: same bits
            padding = np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, padding])
        out = forward(jnp.asarray(batch), layers)
        current.update(
            {name: {layer: out[layer][k, : stop - start] for layer in layers}
             for k, name in enumerate(names)}
        )  # fmt: skip
        try:
            return {
                f"{name}{SEPARATOR}{layer}": value
                for name in names
                for layer, value in sources[name].read(start, stop).items()
            }
        finally:
            current.clear()  # the stacked outputs do not outlive the batch

    return read


def _share(current: dict, name: str, start: int, stop: int):
    """Checkpoint ``name``'s activations of the batch its group is reading."""
    return current[name]


def dissect_many(
    dataset: BrodenDataset | str | Path,
    models: Sequence[FeatureModel],
    config: DissectConfig,
    out: str | Path,
    *,
    layers: Sequence[str],
    weights: Sequence[str | Path | None] | None = None,
    names: Sequence[str] | None = None,
    views: Sequence[Callable[[Activations], Activations]] | None = None,
    labels=None,
    images=None,
    cache: str | Path | None = None,
    report: bool = True,
    checkpoint_every: int | None = 100,
    layer_folders: bool | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Dissects ``layers`` of every model (checkpoints of one architecture) in one pass.

    Args:
      models: FeatureModels of one architecture (``FeatureModel.function`` and ``params``).
      weights: each model's weights file (identified by content, as in a single run).
      names: each checkpoint's folder under ``out`` (default: ``checkpoint_names``).
      views: per model, a function of its Activations (``layers``, read from the shared
        forward pass) giving the Activations dissected and written to its folder: e.g.
        ``experiments.common.with_rotations``, which adds rotated bases computed from them
        and identifies the checkpoint; its identity is the fingerprint's, so results match
        a single run of the same view. Default: the model's layers as they are.
      Others: as ``pipeline.dissect``; ``out`` is required.

    Returns:
      {checkpoint name: {layer: Dissection}} (a view's layers, with ``views``) of the
      checkpoints dissected now (those whose outputs were complete already are reused and
      left out).
    """
    models = list(models)
    weights, names = _checked_arguments(models, weights, names, views)
    if not isinstance(dataset, BrodenDataset):
        dataset = open_broden(dataset)
    layers = models[0].check_layers(layers)
    check_images(images, dataset)
    if images is None:
        images = load_image_array(dataset, cache, progress)
    out = Path(out)
    config = fit_to_images(config, len(images))  # as a single run
    _check_checkpoint_folders(out, names)
    current = {}  # while a group reads a batch: checkpoint name -> {layer: its activations}
    sources = _sources(models, names, weights, views, images, layers, current)
    fingerprints = {name: run_fingerprint(dataset, sources[name], config) for name in names}
    todo = _not_completed(out, names, sources, fingerprints, layer_folders)
    if labels is None and todo:
        labels = load_label_arrays(dataset, cache, progress)
    groups = _groups(todo, len(names), sources[names[todo[0]]].shapes if todo else {}, config,
                     progress)  # fmt: skip
    keys = [group_key([names[k] for k in g], [fingerprints[names[k]] for k in g]) for g in groups]
    found = {}
    writer = runtime.process_index() == 0
    with locked(out) if writer else contextlib.nullcontext():
        if writer:
            _discard_other_groups(out, keys)
        for group, key in zip(groups, keys, strict=True):
            group_names = [names[k] for k in group]
            read, group_shapes, checkpoints = _group_pass(
                [models[k] for k in group], group_names, sources, current, images, layers,
                config, [fingerprints[n] for n in group_names],
                out / f"{GROUP_CHECKPOINTS}{key}", checkpoint_every,
            )  # fmt: skip
            dissections = dissect_activations(
                read, len(images), group_shapes, dataset, labels, config, progress, checkpoints
            )
            if writer:
                found |= _write_group(
                    out, dissections, group_names, sources, fingerprints, dataset, config,
                    images, report, layer_folders,
                )  # fmt: skip
            if checkpoints is not None:
                checkpoints.remove()
    return found


def _checked_arguments(models, weights, names, views) -> tuple[list, list[str]]:
    """``dissect_many``'s per-model arguments checked: (weights, names), defaults filled."""
    check_one_architecture(models)
    weights = list(weights) if weights is not None else [None] * len(models)
    if len(weights) != len(models):
        raise DissectError(
            f"{len(models)} models but {len(weights)} `weights` files", arguments=("weights",)
        )
    if names is None:
        names = checkpoint_names(weights, models)
    elif isinstance(names, str) or len(names) != len(models):
        raise DissectError(
            f"`names` must list one folder name per model ({len(models)})", arguments=("names",)
        )
    else:
        names = check_names(names, "names")
    if views is not None and len(views) != len(models):
        raise DissectError(
            f"`views` must give one function per model ({len(models)})", arguments=("views",)
        )
    return weights, names


def _sources(models, names, weights, views, images, layers, current) -> dict[str, Activations]:
    """Each checkpoint's Activations: its share of its group's batch (``current``), with its
    own identity (and ``stacked_forward`` where the stacked forward is vmap), through its
    view."""
    probe = stacked_forward(models[:1])(jnp.asarray(np.asarray(images[:1])), layers)
    # The one model's outputs, without the stacking axis.
    shapes = map_shapes({layer: value[0] for layer, value in probe.items()}, models[0].name)
    mode = forward_mode()
    sources = {}
    for k, (name, model, path) in enumerate(zip(names, models, weights, strict=True)):
        identity, provenance = model_identity(model, path)
        if mode != "lax.map":  # lax.map's bits are one model's; vmap's may not be
            identity = {**identity, "stacked_forward": mode}
            provenance = {**provenance, "stacked_forward": mode}
        own = Activations(
            functools.partial(_share, current, name), shapes, len(images), identity, provenance
        )
        sources[name] = own if views is None else views[k](own)
    return sources


def _not_completed(out: Path, names, sources, fingerprints, layer_folders) -> list[int]:
    """The indices of the checkpoints whose outputs under OUT/<name>/ are not complete
    (``driver.completed``) for their fingerprint."""
    return [
        k
        for k, name in enumerate(names)
        if not completed(out / name, list(sources[name].shapes), fingerprints[name], layer_folders)
    ]


def _groups(todo: list[int], total: int, shapes, config: DissectConfig, progress: bool):
    """The checkpoints to dissect split into groups whose activations of one batch fit
    together, saying so (and how many were reused)."""
    size = _group_size(len(todo), shapes, config.batch_size)
    groups = [todo[i : i + size] for i in range(0, len(todo), size)]
    if progress and len(todo) < total:
        print(f"{total - len(todo)} of {total} checkpoints already dissected: reused")
    if progress and len(groups) > 1:
        print(
            f"{len(todo)} checkpoints in {len(groups)} groups of at most {size}: their "
            "activations of one batch together would not fit the memory kept for them"
        )
    return groups


def _discard_other_groups(out: Path, keys: Sequence[str]) -> None:
    """Removes the pass states in OUT of groups this run no longer has (another grouping,
    or checkpoints since dissected)."""
    if not out.is_dir():
        return
    for folder in sorted(out.glob(f"{GROUP_CHECKPOINTS}*")):
        if folder.is_dir() and folder.name[len(GROUP_CHECKPOINTS) :] not in keys:
            PassCheckpoints.discard(folder)


def _group_pass(
    models, names, sources, current, images, layers, config: DissectConfig, fingerprints,
    folder: Path, checkpoint_every: int | None,
):  # fmt: skip
    """What the passes over one group of checkpoints run on: (read, shapes, checkpoints),
    the batches' reader, the shapes of its {name/layer} activations, and the group's pass
    checkpoints in ``folder`` (None without ``checkpoint_every`` or under several
    processes)."""
    batch = min(config.batch_size, max(1, len(images)))  # batches are padded to this size
    read = _group_source(models, names, images, layers, batch, current, sources)
    shapes = {
        f"{name}{SEPARATOR}{layer}": shape
        for name in names
        for layer, shape in sources[name].shapes.items()
    }
    checkpoints = None
    if checkpoint_every is not None and runtime.process_count() == 1:
        heads = _group_source(models, names, images[::batch], layers, batch, current, sources)
        checkpoints = _group_checkpoints(
            folder, fingerprints, checkpoint_every, read, heads, len(images), batch
        )
    return read, shapes, checkpoints


def _group_checkpoints(
    folder: Path, fingerprints: list, every: int, read, heads, num_images: int, batch_size: int
) -> PassCheckpoints:
    """A group's pass checkpoints, named by its members' fingerprints; their saved states
    resume only where the models compute, through their views, what they computed on the
    first image of every batch (``heads``: those images run together)."""
    identity = json.loads(json.dumps({"checkpoints": fingerprints}, default=str))
    checkpoints = PassCheckpoints(folder, identity, every)
    checkpoints.check_activations(heads_digest(read, num_images, batch_size, heads))
    return checkpoints


def _write_group(
    out, dissections, names, sources, fingerprints, dataset, config, images, report, folders
) -> dict[str, dict]:
    """Each checkpoint's layers of a group's dissection written to OUT/<name>/, as its own
    run writes them; {name: {layer: Dissection}}."""
    found = {}
    for name in names:
        mine = {
            layer: dissections[f"{name}{SEPARATOR}{layer}"]._replace(layer=layer)
            for layer in sources[name].shapes
        }
        with locked(out / name):
            write_outputs(
                out / name, mine, dataset, config, sources[name], fingerprints[name], images,
                report, folders,
            )  # fmt: skip
        found[name] = mine
    return found
