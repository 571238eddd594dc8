"""The random-basis test: are a layer's units more interpretable than rotations of them?

    python -m experiments.rotation [--config smoke|default|full] [--workdir DIR] [key=value ...]

Trains (or reuses) the baseline network of ``train/`` (or dissects the run named by
``run=WORKDIR``), then dissects its ``layer`` in the units' basis and in fractional
rotations R**alpha (alpha = 0, 0.2, ..., 1; R**alpha through the angles of R's real Schur
form, as the original NetDissect) for several random rotations R. Every rotated layer is
computed from the activations batch by batch, in the same two passes. Each of ``seeds``
seeds trains its own network and draws its own rotations. Writes to the workdir (default
runs/rotation-<config>): results.json (unique detectors and detectors against alpha at IoU
thresholds 0.04 to 0.10, per seed the mean over its rotations, then the mean over seeds
with a 95 % t-interval; the chance IoU a mask of the same area placed at random would
score; the claims), rotation.png and summary.html.
"""

from __future__ import annotations

import dataclasses
import html
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from experiments.claims import claim, claims_html, format_interval, interval, slope
from experiments.cli import experiment_main
from experiments.common import (
    GPU_STEPS,
    GPU_TRAIN_OVERRIDES,
    ProbeConfig,
    checkpoint_identity,
    dissect_models,
    provenance,
    start_experiment,
    summary_at,
    write_page,
)
from experiments.plots import BAND, band, figure_html, pyplot, save_figure, verdicts_sentence
from experiments.workdir import study_set
from jaxdissect.config import DissectConfig
from jaxdissect.rotation import fractional_rotation, random_rotation
from train.checkpoints import feature_model
from train.config import make_config
from train.loop import train


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    train_preset: str = "default"
    steps: int = 1500
    run: str = ""  # a training workdir to dissect instead of training one
    layer: str = "conv5"
    alphas: tuple[str, ...] = ("0", "0.2", "0.4", "0.6", "0.8", "1")
    rotations: int = 3
    iou_thresholds: tuple[str, ...] = ("0.04", "0.06", "0.08", "0.1")
    # Seeds 0 .. seeds - 1: each trains its own network (initialisation, data order) and draws
    # its own rotations (with ``run``, only the rotations change).
    seeds: int = 3
    train_overrides: tuple[str, ...] = ()  # key=value settings of train/
    dissect: DissectConfig = dataclasses.field(default_factory=lambda: DissectConfig(batch_size=50))
    # The probe set; the network trains at probe.image_size.
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)


PRESETS = {
    "smoke": dict(
        train_preset="smoke",
        steps=6,
        alphas=("0", "0.5", "1"),
        rotations=2,
        seeds=2,
        dissect=DissectConfig(batch_size=20),
        probe=ProbeConfig(images=40, image_size=32),
    ),
    "default": {},
    # An accelerator, on the synthetic world (see experiments.common.GPU_TRAIN_OVERRIDES).
    "gpu": dict(
        train_overrides=GPU_TRAIN_OVERRIDES,
        steps=GPU_STEPS,
        dissect=DissectConfig(batch_size=250),
        probe=ProbeConfig(images=10_000, image_size=128),
    ),
    "full": dict(
        train_preset="full",
        steps=300_000,
        dissect=DissectConfig(batch_size=256),
        probe=ProbeConfig(image_size=128),
    ),
}


def chance_iou(results: dict) -> float:
    """Mean over units of the IoU their top label would get from a mask of the unit's area
    placed uniformly at random: E[I] = A * G / P over P labelled positions, so the IoU is
    E[I] / (A + G - E[I])."""
    rows = results["units"]
    positions = results["images"] * results.get("label_positions", 1)
    values = []
    for row in rows:
        category = row["category"]
        area, truth = row[f"{category}-activation"], row[f"{category}-truth"]
        expected = area * truth / positions
        union = area + truth - expected
        values.append(expected / union if union > 0 else 0.0)
    return float(np.mean(values))


def seed_rotations(config: Config, seed: int, units: int) -> dict[str, tuple[str, np.ndarray]]:
    """The rotated bases ``seed`` draws: {layer@alpha<a>-r<i>: (layer, R_i**a)}."""
    rotations = {}
    for index in range(config.rotations):
        full = random_rotation(jax.random.fold_in(jax.random.key(seed), index), units)
        for alpha in config.alphas:
            if float(alpha) == 0:
                continue  # alpha = 0 is the units themselves
            rotations[f"{config.layer}@alpha{alpha}-r{index}"] = (
                config.layer,
                fractional_rotation(full, float(alpha)),
            )
    return rotations


def dissect_seeds(config: Config, workdir: Path, probe, seeds: list[int], progress: bool):
    """Trains (or reuses) the network of each seed, then dissects their layer and rotations
    in one pass (the seeds' networks share an architecture). Returns {seed: {name:
    results.json content}} (name: the layer, or the layer@alpha<a>-r<i>)."""
    run_dirs = {}
    for seed in seeds:
        run_dirs[seed] = Path(config.run) if config.run else workdir / "runs" / f"seed{seed}"
        if not config.run:
            overrides = [
                f"steps={config.steps}",
                f"image_size={config.probe.image_size}",
                f"init_seed={seed}",
                f"seed={seed}",
                *config.train_overrides,
            ]
            train(make_config(config.train_preset, overrides), run_dirs[seed], progress=progress)
    models = [feature_model(run_dirs[seed]) for seed in seeds]
    units = models[0].apply(probe.images[:1], (config.layer,))[config.layer].shape[-1]
    found = dissect_models(
        models,
        [config.layer],
        probe,
        config.dissect,
        workdir / "dissections",
        [f"seed{seed}" for seed in seeds],
        [checkpoint_identity(run_dirs[seed], None) for seed in seeds],
        rotations=[seed_rotations(config, seed, units) for seed in seeds],
        progress=progress,
    )
    label_positions = int(np.prod(probe.dataset.label_size))
    for results in found.values():
        for value in results.values():
            value["label_positions"] = label_positions
    return {seed: found[f"seed{seed}"] for seed in seeds}


def run(config: Config, workdir: str | Path, progress: bool = True) -> dict:
    started = time.time()
    with start_experiment(config, workdir, progress) as (workdir, probe):
        seeds = list(range(config.seeds))
        found = dissect_seeds(config, workdir, probe, seeds, progress)

        def names(alpha):
            if float(alpha) == 0:
                return [config.layer]
            return [f"{config.layer}@alpha{alpha}-r{i}" for i in range(config.rotations)]

        def mean_over_rotations(seed, alpha, threshold, key):
            """A seed's count at ``alpha``, averaged over its rotations."""
            summaries = [summary_at(found[seed][name], float(threshold)) for name in names(alpha)]
            values = [
                s["unique_top_label"]["total"] if key == "unique" else s["detectors"]
                for s in summaries
            ]
            return float(np.mean(values))

        table = {
            threshold: [
                {
                    "alpha": float(alpha),
                    **{
                        key: interval(
                            [mean_over_rotations(s, alpha, threshold, key) for s in seeds]
                        )
                        for key in ("unique", "detectors")
                    },
                }
                for alpha in config.alphas
            ]
            for threshold in config.iou_thresholds
        }
        summary = {
            "study": "rotation",
            "config": dataclasses.asdict(config),
            "units": len(found[seeds[0]][config.layer]["units"]),
            "seeds": seeds,
            "claims": study_claims(table, config, seeds),
            "by_iou_threshold": table,
            "chance_iou": {
                name: interval([chance_iou(found[seed][name]) for seed in seeds])
                for name in found[seeds[0]]
                if name == config.layer or name.endswith("-r0")
            },
            "provenance": provenance(),
            "seconds": round(time.time() - started, 1),
        }
        with study_set(workdir, summary) as folder:
            plot(summary, folder / "rotation.png", config.layer)
            write_summary(summary, folder)
        return summary


def study_claims(table: dict, config: Config, seeds: list[int]) -> list[dict]:
    """At the dissection's IoU threshold (else the first one tabled): the units against the
    full rotation, and the slope of unique detectors against alpha (per seed, least
    squares)."""
    threshold = next(
        (t for t in config.iou_thresholds if float(t) == config.dissect.iou_threshold),
        config.iou_thresholds[0],
    )
    rows = table[threshold]
    first, last = rows[0], rows[-1]
    alphas = [row["alpha"] for row in rows]
    slopes = [
        slope(alphas, [row["unique"]["per_seed"][i] for row in rows]) for i in range(len(seeds))
    ]
    return [
        claim(
            f"units have more unique detectors than a rotation R**{last['alpha']:g} of their "
            f"basis (IoU > {threshold})",
            (f"alpha {first['alpha']:g}", f"alpha {last['alpha']:g}"),
            first["unique"]["per_seed"],
            last["unique"]["per_seed"],
            seeds,
        ),
        claim(
            f"unique detectors fall as the rotation alpha grows (IoU > {threshold}; the "
            "difference is the least-squares slope per unit of alpha)",
            ("slope against alpha", "no change"),
            slopes,
            [0.0] * len(seeds),
            seeds,
            paper_sign=-1,
        ),
    ]


def plot(summary: dict, path: Path, layer: str) -> None:
    plt = pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for color, (threshold, rows) in zip(colors, summary["by_iou_threshold"].items(), strict=False):
        alphas = [r["alpha"] for r in rows]
        for axis, key in zip(axes, ("unique", "detectors"), strict=True):
            band(axis, alphas, [r[key] for r in rows], color, f"IoU > {threshold}", low=0)
    axes[0].set_ylabel("unique detectors")
    axes[1].set_ylabel("detectors")
    for axis in axes:
        axis.set_xlabel("rotation alpha (0: the units, 1: a full random rotation)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(
        f"{layer}: rotated bases (mean over seeds of the mean over rotations; 95 % band)"
    )
    figure.tight_layout()
    save_figure(figure, path, summary.get("provenance"))


def write_summary(summary: dict, workdir: Path) -> Path:
    rows = "".join(
        f"<tr><td>{html.escape(str(t))}</td>"
        + "".join(
            f"<td>{html.escape(format_interval(r['unique']['mean'], r['unique']['ci95'], 1))}</td>"
            for r in rows
        )
        + "</tr>"
        for t, rows in summary["by_iou_threshold"].items()
    )
    alphas = next(iter(summary["by_iou_threshold"].values()))
    header = "".join(f"<th>alpha {r['alpha']:g}</th>" for r in alphas)
    chance = ", ".join(
        f"{html.escape(k)}: {html.escape(format_interval(v['mean'], v['ci95'], 4))}"
        for k, v in summary["chance_iou"].items()
    )
    caption = (
        "Unique detectors and detectors against the rotation's angle alpha (0: the units' own "
        f"basis, 1: a random rotation), per IoU threshold (line: mean over seeds; {BAND}, "
        "clipped at 0)." + verdicts_sentence(summary.get("claims", []))
    )
    body = f"""<h1>Units against rotated bases ({summary["units"]} units)</h1>
<p>{len(summary["seeds"])} seed(s); run in {summary["seconds"]} s.</p>
{claims_html(summary["claims"])}
<h2>Unique detectors</h2><p>Mean over seeds (of each seed's mean over its rotations), with
the 95 % t-interval in brackets.</p>
<table><tr><th>IoU threshold</th>{header}</tr>{rows}</table>
<p>Mean chance IoU of the units' labels (a mask of the same area placed at random): {chance}</p>
{figure_html("rotation.png", caption)}
<p>Config: <code>{html.escape(json.dumps(summary["config"]))}</code></p>"""
    return write_page(workdir / "summary.html", "Rotation", body)


def main(argv=None) -> int:
    return experiment_main("rotation", __doc__, PRESETS, Config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
