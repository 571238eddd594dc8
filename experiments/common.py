"""What every experiment shares: the probe set, and dissecting a checkpoint (its own units
and a randomly rotated basis, in the same two passes). Flags: ``experiments.cli``."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shlex
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.workdir import (
    check_own_folders,
    claim_workdir,
    held_workdir,
    record_config,
    study_name,
)
from jaxdissect import outdir
from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import BrodenDataset, open_broden
from jaxdissect.data.cache import LabelArrays, load_image_array, load_label_arrays
from jaxdissect.data.synthetic import world
from jaxdissect.driver import completed, run_fingerprint
from jaxdissect.errors import DissectError
from jaxdissect.float_pin import float_settings
from jaxdissect.many import dissect_many
from jaxdissect.models.features import FeatureModel
from jaxdissect.pipeline import dissect
from jaxdissect.report.results import write_text_atomic
from jaxdissect.report.schema import read_results
from jaxdissect.sources import Activations, array_identity, model_run

ROTATED = "@rotated"

# The ``gpu`` presets: the synthetic world at 128 px (their probe.image_size) with full-width networks (AlexNet-style
# conv5: 256 units), trained for a step budget (train/ has no early stopping: the results
# report the snapshot where validation accuracy peaked), dissected on a 10,000-image probe.
GPU_STEPS = 20_000
GPU_TRAIN_OVERRIDES = (
    "width=1.0",
    "train_images=20000",
    "eval_images=2000",
    "batch_size=128",
    "learning_rate=0.01",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """The probe set a study dissects on.

    Attributes:
      directory: a Broden folder; None: the synthetic world's probe split, written to
        ``<workdir>/probe``.
      images: how many synthetic probe images to draw.
      image_size: their side in pixels (the studies train at this size too).
      seed: the synthetic probe's seed.
    """

    directory: str | None = None
    images: int = 600
    image_size: int = 64
    seed: int = 1


@dataclasses.dataclass(frozen=True)
class Probe:
    dataset: BrodenDataset
    labels: LabelArrays
    images: np.ndarray


def prepare_probe(
    directory: str | Path, num_images: int, image_size: int, seed: int, progress: bool
) -> Probe:
    """The probe set: a Broden folder if ``directory`` holds one, else the synthetic world's
    probe split written there."""
    directory = Path(directory)
    if not (directory / "index.csv").is_file():
        world.write_probe(
            directory, num_images, seed, world.WorldConfig(image_size=image_size), progress
        )
    dataset = open_broden(directory)
    return Probe(
        dataset,
        load_label_arrays(dataset, progress=progress),
        load_image_array(dataset, progress=progress),
    )


@contextlib.contextmanager
def start_experiment(
    config, workdir: str | Path, progress: bool, study: str | None = None
) -> Iterator[tuple[Path, Probe]]:
    """Claims the workdir for ``study``, holds its lock for the block, records the run's
    config (run_config.json) and prepares the probe set ``config.probe`` (a ProbeConfig)
    names; yields (workdir, probe). The study publishes its results in the block
    (``experiments.workdir.study_set``).

    Args:
      config: the study's config.
      workdir: its folder; one that belongs to another study, or that another run of the
        study holds, is refused (DissectError).
      progress: progress bars.
      study: the study's name (default: the module that defines ``config``'s type).
    """
    workdir = Path(workdir)
    study = study or study_name(config)
    directory = config.probe.directory
    # A folder the user names is read, never written: the synthetic probe (written where
    # a folder has no index.csv) goes only to the workdir's own probe/.
    if directory and not (Path(directory) / "index.csv").is_file():
        raise DissectError(
            f"probe.directory={directory}: not a Broden folder (no index.csv); leave "
            "probe.directory unset to draw the synthetic probe into the workdir"
        )
    claim_workdir(workdir, study)  # before the lock: another's workdir is left untouched
    with held_workdir(workdir):
        claim_workdir(workdir, study)  # again: another study may have claimed it meanwhile
        check_own_folders(workdir)
        outdir.check_store(workdir)  # a forged journal, refused now rather than at the end
        record_config(workdir, dataclasses.asdict(config))
        probe = config.probe
        prepared = prepare_probe(
            probe.directory or workdir / "probe",
            probe.images,
            probe.image_size,
            probe.seed,
            progress=progress,
        )
        yield workdir, prepared


def checkpoint_identity(run_dir: Path, step: int | None) -> dict:
    """A training checkpoint's identity: its run's config, its step and a hash of its files
    (the parameters as saved), so that reused dissections belong to exactly this network."""
    from train.checkpoints import list_checkpoints

    run_dir = Path(run_dir)
    step = list_checkpoints(run_dir)[-1] if step is None else step
    digest = hashlib.blake2b(digest_size=16)
    folder = run_dir / "checkpoints" / str(step)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    config = hashlib.blake2b((run_dir / "config.json").read_bytes(), digest_size=16)
    return {"run_config": config.hexdigest(), "step": step, "parameters": digest.hexdigest()}


def with_rotations(
    activations: Activations,
    rotations: dict[str, tuple[str, np.ndarray]],
    identity: dict | None = None,
    provenance: dict | None = None,
) -> Activations:
    """``activations`` plus, for each ``name: (layer, R)`` of ``rotations``, the layer in the
    rotated basis ``acts @ R`` (computed batch by batch from the same read). The identity is
    ``activations``' with ``identity`` and the rotations' array identities added, so results
    cached under it belong to exactly these rotations."""
    matrices = {
        name: (layer, jnp.asarray(r, jnp.float32)) for name, (layer, r) in rotations.items()
    }

    def rotate(read):
        def rotated(start, stop):
            acts = dict(read(start, stop))
            for name, (layer, matrix) in matrices.items():
                acts[name] = jnp.einsum(
                    "bhwu,uv->bhwv", acts[layer], matrix, precision=jax.lax.Precision.HIGHEST
                )
            return acts

        return rotated

    identity = {
        **activations.identity,
        **(identity or {}),
        "rotations": {
            name: [layer, array_identity(np.asarray(r, np.float32))]
            for name, (layer, r) in rotations.items()
        },
    }
    shapes = {**activations.shapes}
    for name, (layer, _) in rotations.items():
        shapes[name] = activations.shapes[layer]
    # The resume check's first images of each batch, rotated as the batches are.
    heads = None if activations.heads is None else rotate(activations.heads)
    return Activations(
        rotate(activations.read),
        shapes,
        activations.num_images,
        identity,
        activations.provenance if provenance is None else provenance,
        heads,
    )


def dissect_model(
    model: FeatureModel,
    layers: typing.Sequence[str],
    probe: Probe,
    config: DissectConfig,
    out: Path,
    weights: dict,
    rotations: dict[str, tuple[str, np.ndarray]] | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """Dissects ``layers`` of ``model`` (``weights`` identifies its parameters: e.g.
    ``checkpoint_identity(run folder, step)``) and,
    for each ``name: (layer, R)`` of ``rotations``, the layer in the rotated basis
    ``acts @ R`` (computed batch by batch, in the same passes). Results already in ``out``
    are reused when they come from the same checkpoint, probe, rotations and config.
    Returns {name: results.json content}."""
    rotations = rotations or {}
    names = [*layers, *rotations]
    activations = model_run(model, probe.images, layers, config.batch_size)
    source = with_rotations(activations, rotations, {"weights": weights}, {"model": model.name})
    fingerprint = run_fingerprint(probe.dataset, source, config)
    if not completed(out, names, fingerprint, layer_folders=True):
        dissect(
            probe.dataset,
            source,
            config,
            out,
            labels=probe.labels,
            images=probe.images,
            checkpoint_every=20,
            layer_folders=True,
            progress=progress,
        )
    return {name: read_results(out / name) for name in names}


def dissect_models(
    models: typing.Sequence[FeatureModel],
    layers: typing.Sequence[str],
    probe: Probe,
    config: DissectConfig,
    out: Path,
    names: typing.Sequence[str],
    weights: typing.Sequence[dict],
    rotations: typing.Sequence[dict[str, tuple[str, np.ndarray]]] | None = None,
    progress: bool = False,
) -> dict[str, dict[str, dict]]:
    """``dissect_model`` of checkpoints of one architecture (the snapshots of one training
    run, or one training config's seeds), as one pass over their stacked parameters
    (``jaxdissect.many``): the probe is read and the passes run once for all of them. Each
    checkpoint ``names[k]`` writes ``out/<names[k]>/``, with its own ``weights`` identity
    and ``rotations``, the fingerprint and files ``dissect_model`` would give it, so either
    path reuses the other's results. The caller vouches that the models share an
    architecture (the many path checks their parameters' names and shapes only).
    Returns {name: {layer: results.json content}}."""
    rotations = list(rotations) if rotations is not None else [{}] * len(models)
    if len(models) == 1 or any(model.function is None for model in models):
        return {
            name: dissect_model(model, layers, probe, config, out / name, w, r, progress)
            for model, name, w, r in zip(models, names, weights, rotations, strict=True)
        }

    def view(model, identity, rotated):
        """The source ``dissect_model`` builds for ``model``, over its share of the pass."""

        def apply(own: Activations) -> Activations:
            # The shared pass's name is the architecture's; the checkpoint keeps its own.
            stacked = {k: v for k, v in own.provenance.items() if k == "stacked_forward"}
            return with_rotations(
                own,
                rotated,
                {"model": model.name, "weights": identity},
                {"model": model.name, **stacked},
            )

        return apply

    architecture = models[0].name
    dissect_many(
        probe.dataset,
        [dataclasses.replace(model, name=architecture) for model in models],
        config,
        out,
        layers=layers,
        names=names,
        views=[view(*args) for args in zip(models, weights, rotations, strict=True)],
        labels=probe.labels,
        images=probe.images,
        checkpoint_every=20,
        layer_folders=True,
        progress=progress,
    )
    return {
        name: {layer: read_results(out / name / layer) for layer in [*layers, *rotated]}
        for name, rotated in zip(names, rotations, strict=True)
    }


def summary_at(results: dict, iou_threshold: float) -> dict:
    """A results.json's summary recomputed at another IoU threshold."""
    from jaxdissect.stats.scores import summarize

    rows = sorted(results["units"], key=lambda row: row["unit"])
    categories = results["categories"]
    return summarize(
        categories,
        [row["category"] for row in rows],
        [row["label"] for row in rows],
        np.array([row["score"] for row in rows]),
        [[row[f"{c}-label"] for c in categories] for row in rows],
        np.array([[row[f"{c}-iou"] for c in categories] for row in rows]),
        iou_threshold,
    )


def unique_counts(results: dict) -> dict:
    """The numbers the plots show, from a results.json: unique detectors (top-label rule)
    per category and in total, and the detector count."""
    summary = results["summary"]
    return {
        "total": summary["unique_top_label"]["total"],
        "detectors": summary["detectors"],
        **summary["unique_top_label"]["per_category"],
    }


def eval_accuracy(workdir: Path) -> dict[int, float]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line]
    return {r["step"]: r["eval_accuracy"] for r in records if "eval_accuracy" in r}


STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1200px}"
    "td,th{padding:4px 10px;border-bottom:1px solid #ddd}"
    "img{max-width:100%;height:auto}figure{margin:1em 0}figcaption{color:#444}"
    ".replicated{color:#070}.contradicted{color:#a00}.inconclusive{color:#666}"
)


def write_page(path: Path, title: str, body: str) -> Path:
    """A self-contained HTML summary page."""
    import html

    from jaxdissect.report.html import content_security_policy

    page = (
        f'<!doctype html><meta charset="utf-8">{content_security_policy()}'
        f"<title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style>\n{body}\n"
    )
    write_text_atomic(path, page)
    return path


PROVENANCE_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "numba")


def provenance() -> dict:
    """What a results.json was produced with: the installed versions of the packages its
    numbers depend on, the git commit of this checkout (None outside a git checkout, or
    without git) and the machine."""
    import os
    import platform
    import subprocess
    from importlib import metadata

    versions = {}
    for name in PROVENANCE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None

    def git(*args):
        try:
            found = subprocess.run(
                ["git", *args],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except OSError:
            return None
        return found.stdout.strip() if found.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        # How the process was started (python -m experiments.<study> ... from the CLI).
        "command": shlex.join(["python", *sys.orig_argv[1:]]),
        "versions": versions,
        "git_commit": commit or None,
        # Uncommitted changes to tracked files: the commit alone does not reproduce it.
        "git_dirty": None if changes is None else bool(changes),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "devices": sorted({device.device_kind for device in jax.devices()}),
            **float_settings(),
        },
    }
