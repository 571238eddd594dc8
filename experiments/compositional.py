"""Compositional explanations of a trained network: do formulas of concepts explain its
units better than single labels, and better than they explain a rotated basis?

    python -m experiments.compositional [--config smoke|default|full] [--workdir DIR] [key=value ...]

Trains (or reuses) the baseline network of ``train/`` (or explains the run named by
``run=WORKDIR``), then explains its ``layer`` in the units' basis and in one random rotation
of it (``jaxdissect.rotation``) with ``formula_search``: the exact search for every length
1..``length`` and the beam search at ``length``. Writes to the workdir (default
runs/compositional-<config>): results.json (per basis: the mean exact IoU against formula
length; the share of units whose best formula beats their best single label by
``margin``; the mix of operators and of the categories of the formulas' concepts; the
share of beam results below the proved optimum and their mean gap; and every unit's
formula), compositional.png and summary.html. Expected: IoU grows with length, more for
the units than for the rotated basis.
"""

from __future__ import annotations

import collections
import dataclasses
import html
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import (
    ProbeConfig,
    experiment_main,
    save_json,
    start_experiment,
    write_page,
)
from jaxdissect.config import DissectConfig
from jaxdissect.formula_search import exact_search, explain
from jaxdissect.formulas import format_formula, program_tree, tree_labels, tree_operators
from jaxdissect.rotation import random_rotation
from jaxdissect.sources import Activations, model_run
from train.checkpoints import feature_model
from train.config import make_config
from train.loop import train


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    train_preset: str = "default"
    steps: int = 1500
    run: str = ""  # a training workdir to explain instead of training one
    layer: str = "conv5"
    length: int = 3
    beam: int = 10
    labels_per_unit: int = 40
    margin: float = 0.02  # a formula "beats" its single label by at least this IoU
    seed: int = 0  # of the random rotation
    dissect: DissectConfig = dataclasses.field(default_factory=lambda: DissectConfig(batch_size=50))
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)


PRESETS = {
    "smoke": dict(
        train_preset="smoke",
        steps=6,
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


def rotated(activations: Activations, layer: str, rotation) -> Activations:
    """The layer's activations in the rotated basis ``acts @ R``, batch by batch."""
    matrix = jnp.asarray(rotation, jnp.float32)

    def read(start, stop):
        acts = activations.read(start, stop)[layer]
        return {
            layer: jnp.einsum("bhwu,uv->bhwv", acts, matrix, precision=jax.lax.Precision.HIGHEST)
        }

    identity = {**activations.identity, "rotation": np.asarray(rotation).tolist()}
    return Activations(read, {layer: activations.shapes[layer]}, activations.num_images,
                       identity, activations.provenance)  # fmt: skip


def basis_summary(explanations, by_length, dataset, margin: float) -> dict:
    """The study's numbers for one basis, from its explanations and exact results."""
    exact, beam = explanations.exact, explanations.beam
    labels = explanations.problem.concept_labels
    candidates = explanations.candidates
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
        "candidates_per_unit": int(candidates.rows.shape[1]),
        "units": units,
    }


def run(config: Config, workdir: str | Path, progress: bool = True) -> dict:
    workdir, probe = start_experiment(config, workdir, progress)
    run_dir = Path(config.run) if config.run else workdir / "run"
    if not config.run:
        train(
            make_config(
                config.train_preset,
                [f"steps={config.steps}", f"image_size={config.probe.image_size}"],
            ),
            run_dir,
            progress=progress,
        )
    model = feature_model(run_dir)
    activations = model_run(model, probe.images, [config.layer], config.dissect.batch_size)
    num_units = activations.shapes[config.layer][-1]
    rotation = random_rotation(jax.random.key(config.seed), num_units)
    summary = {"config": dataclasses.asdict(config), "units": num_units, "bases": {}}
    for basis, source in (
        ("units", activations),
        ("rotated", rotated(activations, config.layer, rotation)),
    ):
        explanations = explain(
            probe.dataset, source, config.dissect, workdir / basis, layer=config.layer,
            length=config.length, beam=config.beam, exact=True,
            labels_per_unit=config.labels_per_unit, labels=probe.labels, images=probe.images,
            progress=progress,
        )  # fmt: skip
        by_length = [
            exact_search(explanations.problem, explanations.candidates, n)
            for n in range(1, config.length)
        ] + [explanations.exact]
        summary["bases"][basis] = basis_summary(
            explanations, by_length, probe.dataset, config.margin
        )
    save_json(workdir / "results.json", summary)
    plot(summary, workdir / "compositional.png")
    write_summary(summary, workdir)
    return summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for basis, values in summary["bases"].items():
        lengths = range(1, len(values["iou_by_length"]) + 1)
        axis.plot(lengths, values["iou_by_length"], marker="o", label=basis)
    axis.set_xlabel("formula length (concepts)")
    axis.set_ylabel("mean IoU of the best formula (exact)")
    axis.set_xticks(list(lengths))
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_summary(summary: dict, workdir: Path) -> Path:
    rows = []
    for basis, values in summary["bases"].items():
        ious = ", ".join(f"{v:.4f}" for v in values["iou_by_length"])
        mix = lambda counts: ", ".join(  # noqa: E731
            f"{html.escape(k)}: {v}" for k, v in sorted(counts.items())
        )
        rows.append(
            f"<tr><td>{basis}</td><td>{ious}</td><td>{values['beats_single_label']:.1%}</td>"
            f"<td>{mix(values['operators'])}</td><td>{mix(values['categories'])}</td>"
            f"<td>{values['beam_below_optimum']:.1%} (gap {values['beam_mean_gap']:.4f})</td></tr>"
        )
    body = f"""<h1>Compositional explanations ({summary["units"]} units)</h1>
<table><tr><th>basis</th><th>mean IoU by length</th><th>beats single label</th>
<th>operators</th><th>categories</th><th>beam below optimum</th></tr>{"".join(rows)}</table>
<img src="compositional.png" alt="mean IoU against formula length">
<p>Formulas: <a href="units/formulas.html">units</a>, <a href="rotated/formulas.html">rotated</a>.
Config: <code>{html.escape(json.dumps(summary["config"]))}</code></p>"""
    return write_page(workdir / "summary.html", "Compositional explanations", body)


def main(argv=None) -> int:
    return experiment_main("compositional", __doc__, PRESETS, Config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
