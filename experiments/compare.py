"""Comparing networks: train named variants, dissect each one's top layer (units and a random
rotation), and measure a linear probe on held-out scene labels. Shared by width_depth,
architectures and supervision."""

from __future__ import annotations

import dataclasses
import html
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.claims import claim, claims_html, format_interval, interval
from experiments.common import (
    GPU_STEPS,
    GPU_TRAIN_OVERRIDES,
    ROTATED,
    ProbeConfig,
    checkpoint_identity,
    dissect_models,
    eval_accuracy,
    provenance,
    start_experiment,
    unique_counts,
    write_page,
)
from experiments.plots import figure_html, pyplot, save_figure
from experiments.workdir import study_set
from jaxdissect.config import DissectConfig
from jaxdissect.data.synthetic import world
from jaxdissect.models.features import FeatureModel
from jaxdissect.rotation import random_rotation
from train.checkpoints import feature_model, list_checkpoints, read_config
from train.config import make_config
from train.loop import train
from train.models import dissectable_layers


@dataclasses.dataclass(frozen=True)
class Variant:
    """A network to compare: trained here with ``overrides`` (checkpoint ``step``, default the
    last; ``run`` shares another variant's training run; ``init_from_variant`` fine-tunes
    another variant's run), or given as a ready FeatureModel (``model``, e.g. a zoo network
    with imported weights, and ``weights``: what identifies them, for reusing results)."""

    name: str
    overrides: tuple[str, ...] = ()
    run: str | None = None
    step: int | None = None
    layer: str | None = None
    init_from_variant: str | None = None
    model: FeatureModel | None = None
    weights: dict | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class CommonConfig:
    """What the comparison studies share. ``seeds``: how many seeds (0 .. seeds - 1) each
    network is trained with (a seed sets its initialisation, data order and rotation; a zoo
    network's seed sets only its rotation); ``train_overrides``: key=value settings of
    train/ for every run (before the variant's own); ``dissect``: how each network is
    dissected; ``probe``: on what (the networks train at ``probe.image_size``)."""

    train_preset: str = "default"
    train_overrides: tuple[str, ...] = ()
    steps: int = 600
    seeds: int = 3
    dissect: DissectConfig = dataclasses.field(default_factory=lambda: DissectConfig(batch_size=50))
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
    probe_train_images: int = 800  # linear probe: fitted on validation scenes, tested on test
    probe_test_images: int = 400

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")


# The comparison studies' presets (width_depth adds its own smoke sizes).
PRESETS = {
    "smoke": dict(
        train_preset="smoke",
        steps=4,
        seeds=2,
        dissect=DissectConfig(batch_size=20),
        probe=ProbeConfig(images=40, image_size=32),
        probe_train_images=32,
        probe_test_images=16,
    ),
    "default": {},
    # An accelerator, on the synthetic world (see experiments.common.GPU_TRAIN_OVERRIDES).
    "gpu": dict(
        train_overrides=GPU_TRAIN_OVERRIDES,
        steps=GPU_STEPS,
        dissect=DissectConfig(batch_size=250),
        probe=ProbeConfig(images=10_000, image_size=128),
        probe_train_images=4000,
        probe_test_images=2000,
    ),
    "full": dict(
        train_preset="full",
        steps=300_000,
        dissect=DissectConfig(batch_size=256),
        probe=ProbeConfig(image_size=128),
    ),
}
# The synthetic world the networks train on (train/'s world_seed): the linear probe's scenes.
WORLD_SEED = 0


def pooled_features(
    model: FeatureModel, layer: str, images: np.ndarray, batch: int = 100
) -> np.ndarray:
    """(N, U) global-average-pooled activations of ``layer``."""
    parts = [
        np.asarray(model.apply(jnp.asarray(images[i : i + batch]), (layer,))[layer]).mean(
            axis=(1, 2)
        )
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts).astype(np.float64)


def linear_probe(model: FeatureModel, layer: str, config: CommonConfig) -> float:
    """Test accuracy of a ridge classifier on the layer's pooled features (scene labels of
    the validation split to fit, of the test split to score)."""
    geometry = world.WorldConfig(image_size=config.probe.image_size)
    fit_x, fit_y = world.scene_arrays(WORLD_SEED, "validation", config.probe_train_images, geometry)
    test_x, test_y = world.scene_arrays(WORLD_SEED, "test", config.probe_test_images, geometry)
    a, b = pooled_features(model, layer, fit_x), pooled_features(model, layer, test_x)
    mean, scale = a.mean(0), a.std(0) + 1e-6
    a, b = (a - mean) / scale, (b - mean) / scale
    a, b = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
    targets = np.eye(int(fit_y.max()) + 1)[fit_y]
    weights = np.linalg.solve(a.T @ a + 1.0 * np.eye(a.shape[1]), a.T @ targets)
    return float(np.mean(np.argmax(b @ weights, 1) == test_y))


def prepare_variant(variant: Variant, seed: int, config: CommonConfig, workdir: Path, progress):
    """Trains (or reuses) one network with one seed. Returns (its FeatureModel, the layer
    to dissect, what identifies its weights, its validation accuracy or None)."""
    if variant.model is not None:
        return variant.model, variant.layer, variant.weights, None
    run_dir = workdir / "runs" / (variant.run or variant.name) / f"seed{seed}"
    overrides = [
        f"steps={config.steps}",
        f"image_size={config.probe.image_size}",
        f"init_seed={seed}",
        f"seed={seed}",
        *config.train_overrides,
        *variant.overrides,
    ]
    if variant.init_from_variant:
        overrides.append(
            f"init_from={workdir / 'runs' / variant.init_from_variant / f'seed{seed}'}"
        )
    train(make_config(config.train_preset, overrides), run_dir, progress=progress)
    step = variant.step if variant.step is not None else list_checkpoints(run_dir)[-1]
    layer = variant.layer or dissectable_layers(read_config(run_dir))[-1]
    return (
        feature_model(run_dir, step),
        layer,
        checkpoint_identity(run_dir, step),
        eval_accuracy(run_dir).get(step),
    )


def measure_variant(
    variant: Variant, index: int, seeds: list[int], config: CommonConfig, workdir: Path, probe,
    progress,
) -> dict[int, tuple[dict, dict]]:  # fmt: skip
    """Trains (or reuses) one network per seed and dissects them (units and a rotation) in
    one pass: a variant's seeds share an architecture and a layer. Returns, per seed, its
    row of counts and its dissection's results.json."""
    prepared = {seed: prepare_variant(variant, seed, config, workdir, progress) for seed in seeds}
    model, layer, _, _ = prepared[seeds[0]]
    units = model.apply(jnp.asarray(probe.images[:1]), (layer,))[layer].shape[-1]
    rotations = [
        {layer + ROTATED: (layer, random_rotation(rotation_key(seed, index), units))}
        for seed in seeds
    ]
    found = dissect_models(
        [prepared[seed][0] for seed in seeds],
        [layer],
        probe,
        config.dissect,
        workdir / "dissections" / variant.name,
        [f"seed{seed}" for seed in seeds],
        [prepared[seed][2] for seed in seeds],
        rotations,
    )
    measured = {}
    for seed in seeds:
        model, _, _, accuracy = prepared[seed]
        results = found[f"seed{seed}"]
        row = {
            "layer": layer,
            "units": units,
            "unique": unique_counts(results[layer]),
            "unique_rotated": unique_counts(results[layer + ROTATED]),
            "eval_accuracy": accuracy,
            "linear_probe": linear_probe(model, layer, config),
        }
        if progress:
            print(
                f"{variant.name} seed {seed}: {row['unique']['total']} unique detectors "
                f"({row['unique_rotated']['total']} rotated) of {units} units; linear probe "
                f"{row['linear_probe']:.3f}"
            )
        measured[seed] = row, results[layer]
    return measured


def rotation_key(seed: int, index: int) -> jax.Array:
    """The key of the random rotation variant ``index``'s network of ``seed`` is compared
    with."""
    return jax.random.fold_in(jax.random.key(seed), index)


def _counts(per_seed: list[dict]) -> dict:
    keys = sorted({key for counts in per_seed for key in counts})
    return {key: interval([counts.get(key, 0) for counts in per_seed]) for key in keys}


def unique_claim(rows: dict, sentence: str, first: str, second: str, seeds: list[int]) -> dict:
    """The claim that network ``first`` has more unique detectors than ``second``."""
    return claim(
        sentence,
        (first, second),
        rows[first]["unique"]["total"]["per_seed"],
        rows[second]["unique"]["total"]["per_seed"],
        seeds,
    )


def run_comparison(
    variants: Sequence[Variant],
    config: CommonConfig,
    workdir: Path,
    title: str,
    progress: bool = True,
    claims: Callable[[dict, list[int]], list[dict]] = lambda rows, seeds: [],
    analysis: Callable[[dict, list[int]], tuple[dict, str]] | None = None,
    study: str = "",
) -> dict:
    """Trains and dissects every variant with every seed. ``claims(rows by variant name,
    seeds)`` gives the paper's claims the study tests; ``analysis({variant: {seed:
    dissection}}, seeds)`` a unit-level analysis, as (results.json entries, HTML)."""
    started = time.time()
    with start_experiment(config, workdir, progress, study or None) as (workdir, probe):
        seeds = list(range(config.seeds))
        rows, dissections = [], {}
        for index, variant in enumerate(variants):
            measured = measure_variant(variant, index, seeds, config, workdir, probe, progress)
            dissections[variant.name] = {seed: results for seed, (_, results) in measured.items()}
            per_seed = [row for row, _ in measured.values()]
            accuracies = [row["eval_accuracy"] for row in per_seed]
            rows.append(
                {
                    "variant": variant.name,
                    "layer": per_seed[0]["layer"],
                    "units": per_seed[0]["units"],
                    "unique": _counts([row["unique"] for row in per_seed]),
                    "unique_rotated": _counts([row["unique_rotated"] for row in per_seed]),
                    "eval_accuracy": None if None in accuracies else interval(accuracies),
                    "linear_probe": interval([row["linear_probe"] for row in per_seed]),
                }
            )
        extra, extra_html = analysis(dissections, seeds) if analysis else ({}, "")
        summary = {
            "study": study,
            "title": title,
            "config": dataclasses.asdict(config),
            "seeds": seeds,
            "claims": claims({row["variant"]: row for row in rows}, seeds),
            "rows": rows,
            **extra,
            "provenance": provenance(),
            "seconds": round(time.time() - started, 1),
        }
        with study_set(workdir, summary) as folder:
            plot(summary, folder / "comparison.png")
            write_summary(summary, folder, extra_html)
        return summary


def _yerr(stats: list[dict]) -> np.ndarray:
    """Asymmetric error bars from 95 % intervals (zero where undefined)."""
    return np.array(
        [
            [s["mean"] - s["ci95"][0], s["ci95"][1] - s["mean"]] if s["ci95"] else [0.0, 0.0]
            for s in stats
        ]
    ).T


def plot(summary: dict, path: Path) -> None:
    plt = pyplot()
    rows = summary["rows"]
    names = [r["variant"] for r in rows]
    x = np.arange(len(rows))
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for offset, key, label in ((-0.2, "unique", "units"), (0.2, "unique_rotated", "rotated basis")):
        stats = [r[key]["total"] for r in rows]
        axes[0].bar(
            x + offset, [s["mean"] for s in stats], 0.4, yerr=_yerr(stats), capsize=3, label=label
        )
    axes[0].set_xticks(x, names, rotation=30, ha="right")
    axes[0].set_ylabel("unique detectors (IoU > 0.04)")
    axes[0].legend(fontsize=8)
    probes, uniques = [r["linear_probe"] for r in rows], [r["unique"]["total"] for r in rows]
    axes[1].errorbar(
        [s["mean"] for s in probes],
        [s["mean"] for s in uniques],
        xerr=_yerr(probes),
        yerr=_yerr(uniques),
        fmt="o",
        capsize=3,
    )
    for name, p, u in zip(names, probes, uniques, strict=True):
        axes[1].annotate(name, (p["mean"], u["mean"]), fontsize=8)
    axes[1].set_xlabel("linear-probe accuracy on held-out scenes")
    axes[1].set_ylabel("unique detectors")
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.suptitle(summary["title"])
    figure.tight_layout()
    save_figure(figure, path, summary.get("provenance"))


def _cell(stat: dict | None, digits: int = 1) -> str:
    return "" if stat is None else html.escape(format_interval(stat["mean"], stat["ci95"], digits))


def write_summary(summary: dict, workdir: Path, extra_html: str = "") -> Path:
    body = "".join(
        f"<tr><td>{html.escape(r['variant'])}</td><td>{html.escape(r['layer'])}</td>"
        f"<td>{r['units']}</td><td>{_cell(r['unique']['total'])}</td>"
        f"<td>{_cell(r['unique_rotated']['total'])}</td><td>{_cell(r['unique']['detectors'])}</td>"
        f"<td>{_cell(r['eval_accuracy'], 3)}</td><td>{_cell(r['linear_probe'], 3)}</td><td>"
        + " ".join(
            f'<a href="dissections/{html.escape(r["variant"])}/seed{seed}/'
            f'{html.escape(r["layer"])}/report.html">seed {seed}</a>'
            for seed in summary["seeds"]
        )
        + "</td></tr>"
        for r in summary["rows"]
    )
    caption = (
        "Left: unique detectors of each network's units and of a random rotation of its basis "
        "(bars: mean over seeds, whiskers: 95 % interval); right: interpretability against "
        "discrimination."
    )
    body = f"""<h1>{html.escape(summary["title"])}</h1>
<p>{len(summary["seeds"])} seed(s) per network; run in {summary["seconds"]} s. Counts are
means over seeds with their 95 % t-interval in brackets.</p>
{claims_html(summary["claims"])}
<h2>Networks</h2>
<table><tr><th>network</th><th>layer</th><th>units</th><th>unique detectors</th>
<th>rotated basis</th><th>detectors</th><th>accuracy</th><th>linear probe</th><th>reports</th></tr>{body}</table>
{figure_html("comparison.png", caption)}
{extra_html}
<p>Config: <code>{html.escape(json.dumps(summary["config"]))}</code></p>"""
    return write_page(workdir / "summary.html", summary["title"], body)
