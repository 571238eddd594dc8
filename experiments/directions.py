"""Concepts spread over units: do learned directions (Net2Vec) segment concepts better than
a trained network's single units, and do the units lose that contest more in a rotated basis?

    python -m experiments.directions [--config smoke|default|full] [--workdir DIR] [key=value ...]

For each of ``seeds`` seeds, trains (or reuses) the baseline network of ``train/`` (the
seed sets its initialisation and data order, as in training_dynamics; or uses the run
named by ``run=WORKDIR``, where only the rotation changes), then runs
``jaxdissect.compositional.directions`` on its ``layer`` in the units' basis and in a random rotation of
it (the seed's; ``experiments.common.with_rotations``, as the other studies rotate): every
concept with enough pixels gets a direction trained on the probe's train images and scored
on held-out ones (a split fixed by ``directions.seed``, the same for every seed) beside the
best single unit of that basis at the dissection's threshold. Writes to the workdir
(default runs/directions-<config>): runs/seed<s>/ (training workdirs),
directions/seed<s>/<basis>/ (directions.csv, .npz, .json, .html), results.json (per basis,
each number as per-seed values, mean and 95 % t-interval: the share of concepts whose
direction beats the best unit by at least ``margin`` IoU, the mean held-out IoU of the
directions, of the best units and of chance; every seed's concepts; the claims with
verdicts), directions.png and summary.html.

What the paper and Net2Vec lead one to expect: directions beat single units (a concept is
spread over several units), and a rotation leaves the directions' IoU (a linear
combination of rotated units spans the same space) while lowering the best unit's.
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

from experiments.claims import claim, claims_html, format_interval, interval
from experiments.cli import experiment_main
from experiments.common import (
    ROTATED,
    ProbeConfig,
    provenance,
    start_experiment,
    with_rotations,
    write_page,
)
from experiments.plots import figure_html, pyplot, save_figure
from experiments.training_dynamics import train_config
from experiments.workdir import study_set
from jaxdissect.compositional.directions import DirectionConfig, directions
from jaxdissect.config import DissectConfig
from jaxdissect.rotation import random_rotation
from jaxdissect.sources import model_run
from train.checkpoints import feature_model
from train.loop import train

BASES = ("units", "rotated")
# What each basis reports per seed (means over its concepts).
NUMBERS = ("beats_best_unit", "iou_direction", "iou_best_unit", "iou_chance", "gain")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """See the module docstring. ``seeds``: seeds 0 .. seeds - 1, each its own network
    (initialisation, data order) and rotation. ``train_overrides``: key=value settings of
    train/ for every run. ``margin``: a direction beats its best unit by at least this IoU."""

    train_preset: str = "default"
    train_overrides: tuple[str, ...] = ()
    steps: int = 600  # training_dynamics' baseline: the same seeded networks
    run: str = ""  # a training workdir to use instead of training one per seed
    seeds: int = 3
    layer: str = "conv5"
    margin: float = 0.05
    directions: DirectionConfig = dataclasses.field(default_factory=DirectionConfig)
    dissect: DissectConfig = dataclasses.field(default_factory=lambda: DissectConfig(batch_size=50))
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)

    def __post_init__(self):
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")


PRESETS = {
    "smoke": dict(
        train_preset="smoke",
        steps=6,
        seeds=2,
        directions=DirectionConfig(min_pixels=50, epochs=2, batch_size=8),
        dissect=DissectConfig(batch_size=20, quantile=0.02),
        probe=ProbeConfig(images=40, image_size=32),
    ),
    "default": {},
    "full": dict(
        train_preset="full",
        steps=300_000,
        dissect=DissectConfig(batch_size=256),
        probe=ProbeConfig(image_size=128),
    ),
}


def basis_summary(rows: list[dict], margin: float) -> dict:
    """One seed's numbers for one basis from its concepts' rows."""

    def mean(key):
        return float(np.mean([row[key] for row in rows]))

    return {
        "concepts": len(rows),
        "beats_best_unit": float(np.mean([r["iou_direction"] >= r["iou_best_unit"] + margin for r in rows])),
        "iou_direction": mean("iou_direction"),
        "iou_best_unit": mean("iou_best_unit"),
        "iou_chance": mean("iou_chance"),
        "gain": mean("iou_direction") - mean("iou_best_unit"),
        "rows": [
            {
                key: row[key]
                for key in ("label", "category", "iou_direction", "iou_best_unit", "best_unit", "iou_chance")
            }
            for row in rows
        ],
    }  # fmt: skip


def directions_seed(config: Config, workdir: Path, probe, seed: int, progress: bool) -> dict:
    """Trains (or reuses) the network of ``seed`` and learns its layer's concept directions
    in the units' basis and in the seed's random rotation. Returns {basis: basis_summary}."""
    run_dir = Path(config.run) if config.run else workdir / "runs" / f"seed{seed}"
    if not config.run:
        # The same seeded baseline run as training_dynamics trains.
        train(train_config(config, "baseline", seed), run_dir, progress=progress)
    model = feature_model(run_dir)
    model.check_layers((config.layer,))
    activations = model_run(model, probe.images, [config.layer], config.dissect.batch_size)
    num_units = activations.shapes[config.layer][-1]
    rotation = random_rotation(jax.random.key(seed), num_units)
    rotated = with_rotations(activations, {config.layer + ROTATED: (config.layer, rotation)})
    found = {}
    for basis, source, layer in (
        ("units", activations, config.layer),
        ("rotated", rotated, config.layer + ROTATED),
    ):
        result = directions(
            probe.dataset, source, config.dissect, workdir / "directions" / f"seed{seed}" / basis,
            layer=layer, settings=config.directions, labels=probe.labels, images=probe.images,
            progress=progress,
        )  # fmt: skip
        found[basis] = basis_summary(result.rows, config.margin)
    return found


def study_claims(bases: dict, seeds: list[int]) -> list[dict]:
    """The claims, seed by seed, on mean held-out IoUs in percent (the claims table prints
    two decimals)."""

    def percent(basis, key):
        return [100 * value for value in bases[basis][key]["per_seed"]]

    return [
        claim(
            "concepts are segmented better by a learned direction than by the best single unit "
            "(Net2Vec; mean held-out IoU over concepts, %)",
            ("directions", "best units"),
            percent("units", "iou_direction"),
            percent("units", "iou_best_unit"),
            seeds,
        ),
        claim(
            "the best single unit segments concepts better in the units' basis than in a "
            "random rotation of it (mean held-out IoU, %)",
            ("units", "rotated"),
            percent("units", "iou_best_unit"),
            percent("rotated", "iou_best_unit"),
            seeds,
        ),
        claim(
            "directions gain more over the best single direction of a rotated basis than over "
            "the best unit (mean held-out IoU gain, %)",
            ("rotated", "units"),
            percent("rotated", "gain"),
            percent("units", "gain"),
            seeds,
        ),
    ]


def run(config: Config, workdir: str | Path, progress: bool = True) -> dict:
    started = time.time()
    with start_experiment(config, workdir, progress) as (workdir, probe):
        seeds = list(range(config.seeds))
        per_seed = [directions_seed(config, workdir, probe, seed, progress) for seed in seeds]
        bases = {
            basis: {
                **{key: interval([found[basis][key] for found in per_seed]) for key in NUMBERS},
                "concepts": per_seed[0][basis]["concepts"],
                "rows_by_seed": {
                    str(seed): found[basis]["rows"]
                    for seed, found in zip(seeds, per_seed, strict=True)
                },
            }
            for basis in BASES
        }
        summary = {
            "study": "directions",
            "config": dataclasses.asdict(config),
            "layer": config.layer,
            "seeds": seeds,
            "claims": study_claims(bases, seeds),
            "bases": bases,
            # Directions span the same space in any basis: their IoU should barely move.
            "direction_iou_units_minus_rotated": interval(
                [
                    found["units"]["iou_direction"] - found["rotated"]["iou_direction"]
                    for found in per_seed
                ]
            ),
            "provenance": provenance(),
            "seconds": round(time.time() - started, 1),
        }
        with study_set(workdir, summary) as folder:
            plot(summary, folder)
            write_summary(summary, folder)
        return summary


def plot(summary: dict, workdir: Path) -> None:
    plt = pyplot()
    colors = dict(zip(BASES, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    figure, axis = plt.subplots(figsize=(5.5, 5))
    top = 0.0
    for basis, values in summary["bases"].items():
        units = [r["iou_best_unit"] for rows in values["rows_by_seed"].values() for r in rows]
        found = [r["iou_direction"] for rows in values["rows_by_seed"].values() for r in rows]
        top = max(top, *units, *found)
        axis.scatter(units, found, s=8, alpha=0.5, color=colors[basis], label=basis)
    top = max(top, 0.05) * 1.05
    axis.plot([0, top], [0, top], color="#888", linewidth=1, label="equal IoU")
    axis.set_xlim(0, top)
    axis.set_ylim(0, top)
    axis.set_xlabel("best single unit (or rotated direction): held-out IoU")
    axis.set_ylabel("learned direction: held-out IoU")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    save_figure(figure, workdir / "directions.png", summary.get("provenance"))


def write_summary(summary: dict, workdir: Path) -> Path:
    def stat(value, digits=3):
        return html.escape(format_interval(value["mean"], value["ci95"], digits))

    rows = "".join(
        f"<tr><td>{basis}</td><td>{values['concepts']}</td>"
        + "".join(f"<td>{stat(values[key])}</td>" for key in NUMBERS)
        + "</tr>"
        for basis, values in summary["bases"].items()
    )
    links = "<br>".join(
        f"seed {seed}: "
        + ", ".join(
            f'<a href="directions/seed{seed}/{basis}/directions.html">{basis}</a>'
            for basis in summary["bases"]
        )
        for seed in summary["seeds"]
    )
    margin = summary["config"]["margin"]
    caption = (
        "Each point is a concept of one seed: its learned direction's held-out IoU against "
        "the best single unit's (the best single direction of the rotated basis), for the "
        "units' basis and a random rotation; the grey line marks equal IoU."
    )
    body = f"""<h1>Concept directions of {html.escape(summary["layer"])}</h1>
<p>{len(summary["seeds"])} seed(s); run in {summary["seconds"]} s. Numbers are means over
seeds with their 95 % t-interval in brackets; IoUs are held-out means over concepts.</p>
{claims_html(summary["claims"])}
<h2>Numbers</h2>
<table><tr><th>basis</th><th>concepts</th><th>share whose direction beats the best unit by
{html.escape(str(margin))}</th><th>direction IoU</th><th>best unit IoU</th>
<th>chance IoU</th><th>direction minus best unit</th></tr>{rows}</table>
<p>Direction IoU, units' basis minus rotated basis:
{stat(summary["direction_iou_units_minus_rotated"], 4)}</p>
{figure_html("directions.png", caption)}
<p>Report cards by seed: {links}</p>
<p>Config: <code>{html.escape(json.dumps(summary["config"]))}</code></p>"""
    return write_page(workdir / "summary.html", "Concept directions", body)


def main(argv=None) -> int:
    return experiment_main("directions", __doc__, PRESETS, Config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
