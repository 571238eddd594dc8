"""Compositional explanations of a trained network: do formulas of concepts explain its
units better than single labels, and better than they explain a rotated basis?

    python -m experiments.compositional [--config smoke|default|full] [--workdir DIR] [key=value ...]

For each of ``seeds`` seeds, trains (or reuses) the baseline network of ``train/`` (the
seed sets its initialisation and data order; or explains the run named by ``run=WORKDIR``,
where only the rotation changes), then explains its ``layer`` in the units' basis and in a
random rotation of it (the seed's; ``experiments.common.with_rotations``, as the other
studies rotate) with ``compositional.explain`` (the pipeline's fingerprint, resume and
lock): the exact search for every length 1..``length`` and the beam search at ``length``;
the probe set stays the same; a rerun reads finished explanations back. Writes to the workdir
(default runs/compositional-<config>): runs/seed<s>/ (training workdirs),
explanations/seed<s>/<basis>/ (formulas.csv, .json, .npz, .html), results.json (per basis, each
number as per-seed values, mean and 95 % t-interval: the mean exact IoU against formula
length; the share of units whose best formula beats their best single label by
``margin``; the counts of operators and of the categories of the formulas' concepts; the
share of beam results below the proved optimum and their mean gap; every seed's formulas;
and the claims with verdicts), compositional.png, formula_mix.png and summary.html.
Expected: IoU grows with length, more for the units than for the rotated basis.
"""

from __future__ import annotations

import collections
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
from experiments.plots import BAND, band, figure_html, pyplot, save_figure, verdicts_sentence
from experiments.training_dynamics import train_config
from experiments.workdir import study_set
from jaxdissect.compositional.explain import explain
from jaxdissect.compositional.formulas import (
    format_formula,
    program_tree,
    tree_labels,
    tree_operators,
)
from jaxdissect.config import DissectConfig
from jaxdissect.errors import DissectError
from jaxdissect.rotation import random_rotation
from jaxdissect.sources import model_run
from train.checkpoints import feature_model
from train.loop import train

BASES = ("units", "rotated")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """See the module docstring. ``seeds``: seeds 0 .. seeds - 1, each its own network
    (initialisation, data order) and rotation. ``train_overrides``: key=value settings of
    train/ for every run."""

    train_preset: str = "default"
    train_overrides: tuple[str, ...] = ()
    steps: int = 1500
    run: str = ""  # a training workdir to explain instead of training one per seed
    seeds: int = 3
    layer: str = "conv5"
    length: int = 3
    beam: int = 10
    labels_per_unit: int = 40
    margin: float = 0.02  # a formula "beats" its single label by at least this IoU
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
        labels_per_unit=8,
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


def basis_summary(explanations, by_length, dataset, margin: float) -> dict:
    """One seed's numbers for one basis, from its explanations and exact results."""
    exact, beam = explanations.exact, explanations.beam
    labels = explanations.concept_labels
    single = by_length[0].iou
    operators, categories, units = collections.Counter(), collections.Counter(), []
    for unit in range(len(exact.iou)):
        rows = exact.labels[unit]
        tree = program_tree(np.where(rows >= 0, labels[np.maximum(rows, 0)], -1), exact.ops[unit])
        operators.update(tree_operators(tree))
        for label in tree_labels(tree):
            category = int(dataset.label_category[label])
            categories.update([dataset.categories[category] if category >= 0 else "none"])
        units.append(
            {
                "unit": unit + 1,
                "formula": format_formula(tree, dataset.label_names),
                "iou": float(exact.iou[unit]),
                "single_iou": float(single[unit]),
                "beam_iou": float(beam.iou[unit]),
            }
        )
    below = beam.iou < exact.iou - 1e-12
    return {
        "iou_by_length": [float(r.iou.mean()) for r in by_length],
        "beats_single_label": float(np.mean(exact.iou >= single + margin)),
        "operators": dict(operators),
        "categories": dict(categories),
        "beam_below_optimum": float(below.mean()),
        "beam_mean_gap": float((exact.iou - beam.iou)[below].mean()) if below.any() else 0.0,
        "certified": float(exact.certified.mean()),
        "candidates_per_unit": int(explanations.candidates.rows.shape[1]),
        "units": units,
    }


def explain_seed(config: Config, workdir: Path, probe, seed: int, progress: bool) -> dict:
    """Trains (or reuses) the network of ``seed`` and explains its layer in the units' basis
    and in the seed's random rotation. Returns {basis: basis_summary}."""
    run_dir = Path(config.run) if config.run else workdir / "runs" / f"seed{seed}"
    if not config.run:
        # The compositional Config has the fields train_config reads (preset, steps,
        # overrides, probe): the same seeded baseline run as training_dynamics trains.
        train(train_config(config, "baseline", seed), run_dir, progress=progress)
    model = feature_model(run_dir)
    activations = model_run(model, probe.images, [config.layer], config.dissect.batch_size)
    num_units = activations.shapes[config.layer][-1]
    rotation = random_rotation(jax.random.key(seed), num_units)
    rotated = with_rotations(activations, {config.layer + ROTATED: (config.layer, rotation)})
    found = {}
    for basis, source, layer in (
        ("units", activations, config.layer),
        ("rotated", rotated, config.layer + ROTATED),
    ):
        explanations = explain(
            probe.dataset, source, config.dissect,
            workdir / "explanations" / f"seed{seed}" / basis, layer=layer,
            length=config.length, beam=config.beam, exact=True, shorter=True,
            labels_per_unit=config.labels_per_unit, labels=probe.labels, images=probe.images,
            progress=progress,
        )  # fmt: skip
        by_length = [*explanations.shorter, explanations.exact]
        found[basis] = basis_summary(explanations, by_length, probe.dataset, config.margin)
    return found


def across_seeds(per_seed: list[dict], seeds: list[int]) -> dict:
    """One basis's per-seed summaries as intervals across seeds (a count absent from a
    seed's formulas is 0 there), with every seed's formulas."""

    def counts(key):
        names = sorted({name for found in per_seed for name in found[key]})
        return {name: interval([found[key].get(name, 0) for found in per_seed]) for name in names}

    scalars = (
        "beats_single_label",
        "beam_below_optimum",
        "beam_mean_gap",
        "certified",
        "candidates_per_unit",
    )
    lengths = len(per_seed[0]["iou_by_length"])
    return {
        "iou_by_length": [
            interval([found["iou_by_length"][n] for found in per_seed]) for n in range(lengths)
        ],
        **{key: interval([found[key] for found in per_seed]) for key in scalars},
        "operators": counts("operators"),
        "categories": counts("categories"),
        "units_by_seed": {
            str(seed): found["units"] for seed, found in zip(seeds, per_seed, strict=True)
        },
    }


def study_claims(bases: dict, length: int, seeds: list[int]) -> list[dict]:
    """The claims this study tests, seed by seed: longer formulas match units better than
    single labels, and formulas explain the units better than a rotation of their basis.
    IoUs in percent: the claims tables print two decimals."""

    def iou(basis, n):
        return [100 * value for value in bases[basis]["iou_by_length"][n - 1]["per_seed"]]

    found = []
    if length > 1:
        found.append(
            claim(
                f"formulas (length {length}) match units better than single labels "
                "(mean exact IoU, %)",
                (f"units length {length}", "units length 1"),
                iou("units", length),
                iou("units", 1),
                seeds,
            )
        )
    found.append(
        claim(
            "units are better explained by formulas than a random rotation of their basis "
            f"(mean IoU of the best formula of length <= {length}, %)",
            ("units", "rotated"),
            iou("units", length),
            iou("rotated", length),
            seeds,
        )
    )
    return found


def run(config: Config, workdir: str | Path, progress: bool = True) -> dict:
    started = time.time()
    with start_experiment(config, workdir, progress) as (workdir, probe):
        # Before any network is trained (the explanation would refuse it only after): a formula
        # holds each label at most once.
        available = min(config.labels_per_unit, probe.dataset.num_labels - 1)
        if config.length > available:
            raise DissectError(
                f"length={config.length}: longer than the {available} labels a formula may draw "
                f"on (labels_per_unit={config.labels_per_unit}; the probe has "
                f"{probe.dataset.num_labels - 1} labels)"
            )
        seeds = list(range(config.seeds))
        per_seed = [explain_seed(config, workdir, probe, seed, progress) for seed in seeds]
        bases = {
            basis: across_seeds([found[basis] for found in per_seed], seeds) for basis in BASES
        }
        summary = {
            "study": "compositional",
            "config": dataclasses.asdict(config),
            "layer": config.layer,
            "units": len(per_seed[0]["units"]["units"]),
            "seeds": seeds,
            "claims": study_claims(bases, config.length, seeds),
            "bases": bases,
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
    figure, axis = plt.subplots(figsize=(6, 4))
    for basis, values in summary["bases"].items():
        lengths = list(range(1, len(values["iou_by_length"]) + 1))
        band(axis, lengths, values["iou_by_length"], colors[basis], basis)
    axis.set_xlabel("formula length (concepts)")
    axis.set_ylabel("mean IoU of the best formula (exact)")
    axis.set_xticks(lengths)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    save_figure(figure, workdir / "compositional.png", summary.get("provenance"))

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key in zip(axes, ("operators", "categories"), strict=True):
        names = sorted({name for values in summary["bases"].values() for name in values[key]})
        width = 0.8 / len(summary["bases"])
        for index, (basis, values) in enumerate(summary["bases"].items()):
            # A name absent from this basis's formulas was counted 0 times.
            stats = [values[key].get(name, {"mean": 0.0, "ci95": None}) for name in names]
            # Error bars: the 95 % interval where it is defined (two seeds or more).
            errors = [
                [s["mean"] - s["ci95"][0] if s["ci95"] else 0.0 for s in stats],
                [s["ci95"][1] - s["mean"] if s["ci95"] else 0.0 for s in stats],
            ]
            positions = [i + (index - 0.5) * width for i in range(len(names))]
            axis.bar(positions, [s["mean"] for s in stats], width, yerr=errors, capsize=3, color=colors[basis],
                     label=basis)  # fmt: skip
        axis.set_xticks(range(len(names)), names, rotation=30, ha="right")
        axis.set_ylabel(f"{key} in the best formulas (count)")
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, workdir / "formula_mix.png", summary.get("provenance"))


def write_summary(summary: dict, workdir: Path) -> Path:
    def stat(value, digits=3):
        return html.escape(format_interval(value["mean"], value["ci95"], digits))

    rows = []
    for basis, values in summary["bases"].items():
        ious = "<br>".join(
            f"{n}: {stat(v, 4)}" for n, v in enumerate(values["iou_by_length"], start=1)
        )
        rows.append(
            f"<tr><td>{html.escape(basis)}</td><td>{ious}</td><td>{stat(values['beats_single_label'])}</td>"
            f"<td>{stat(values['certified'])}</td><td>{stat(values['beam_below_optimum'])}</td>"
            f"<td>{stat(values['beam_mean_gap'], 4)}</td></tr>"
        )
    links = "<br>".join(
        f"seed {seed}: "
        + ", ".join(
            f'<a href="explanations/seed{seed}/{html.escape(basis)}/formulas.html">'
            f"{html.escape(basis)}</a>"
            for basis in summary["bases"]
        )
        for seed in summary["seeds"]
    )
    body = f"""<h1>Compositional explanations ({summary["units"]} units of {html.escape(summary["layer"])})</h1>
<p>{len(summary["seeds"])} seed(s); run in {summary["seconds"]} s. Numbers are means over
seeds with their 95 % t-interval in brackets; shares are fractions of the units.</p>
{claims_html(summary["claims"])}
<h2>Numbers</h2>
<table><tr><th>basis</th><th>mean exact IoU by formula length</th>
<th>share beating their single label by {summary["config"]["margin"]}</th>
<th>share proved optimal</th><th>share of beam results below the optimum</th>
<th>their mean gap</th></tr>{"".join(rows)}</table>
<h2>Plots</h2>
{figure_html("compositional.png", f"Mean IoU of the best formula against its length, for the units and a random rotation of their basis (line: mean over seeds; {BAND})." + verdicts_sentence(summary.get("claims", [])))}
{figure_html("formula_mix.png", "Which operators and which categories of concepts the best formulas use, per basis (bar: mean count over seeds; error bar: 95 % interval).")}
<p>Formulas by seed: {links}</p>
<p>Config: <code>{html.escape(json.dumps(summary["config"]))}</code></p>"""
    return write_page(workdir / "summary.html", "Compositional explanations", body)


def main(argv=None) -> int:
    return experiment_main("compositional", __doc__, PRESETS, Config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
