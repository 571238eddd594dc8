"""Unique detectors against training iteration, for a baseline and the paper's variations.

    python -m experiments.training_dynamics [--config smoke|default|full] [--workdir DIR] [key=value ...]

Trains (via train/) a baseline AlexNet-style network and its variations (no dropout, batch
norm, a 3x wider last conv layer, two more random initialisations) on the synthetic world's
scenes, snapshotting at the paper's log-spaced iterations; dissects the last conv layer of
every snapshot on the probe set, in the units' own basis and in a random rotation of it;
and writes to the workdir (default runs/training_dynamics-<config>): config.json,
runs/<variation>/ (training workdirs), dissections/<variation>/<step>/<layer>[@rotated]/,
results.json, unique_detectors.png, per_category.png, accuracy.png and summary.html.
Everything already in the workdir is reused, so a rerun resumes. The default finishes in
about 15 minutes on 2 CPU cores; what it measured is in the README ("Results").
"""

from __future__ import annotations

import dataclasses
import html
import json
import sys
import time
from pathlib import Path

import jax

from experiments.common import (
    ROTATED,
    ProbeConfig,
    checkpoint_identity,
    dissect_model,
    eval_accuracy,
    experiment_main,
    save_json,
    start_experiment,
    unique_counts,
    write_page,
)
from jaxdissect.config import DissectConfig
from jaxdissect.rotation import random_rotation
from train.checkpoints import feature_model, list_checkpoints
from train.config import make_config
from train.loop import train

VARIATIONS = {
    "baseline": [],
    "no_dropout": ["dropout=false"],
    "batch_norm": ["batch_norm=true"],
    "wide_last": ["last_width=3"],
    "init_1": ["init_seed=1"],
    "init_2": ["init_seed=2"],
    # ViT-style (run them with layer=block3, as their own study: they have no conv5).
    "vit": ["family=vit", "depth=4"],
    "vit_no_dropout": ["family=vit", "depth=4", "dropout=false"],
}
CNN_VARIATIONS = ("baseline", "no_dropout", "batch_norm", "wide_last", "init_1", "init_2")
CATEGORIES = ("object", "part", "scene", "material", "texture", "color")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """See the module docstring; ``dissect``: how each snapshot is dissected; ``probe``: on
    what (the networks train at ``probe.image_size``)."""

    train_preset: str = "default"
    steps: int = 600
    variations: tuple[str, ...] = CNN_VARIATIONS
    layer: str = "conv5"
    rotation_seed: int = 0
    dissect: DissectConfig = dataclasses.field(default_factory=lambda: DissectConfig(batch_size=50))
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)

    def __post_init__(self):
        unknown = [v for v in self.variations if v not in VARIATIONS]
        if unknown:
            raise ValueError(f"unknown variations {unknown}; known: {', '.join(VARIATIONS)}")


PRESETS = {
    "smoke": dict(
        train_preset="smoke",
        steps=6,
        variations=("baseline", "no_dropout"),
        dissect=DissectConfig(batch_size=20),
        probe=ProbeConfig(images=40, image_size=32),
    ),
    "default": {},
    "full": dict(
        train_preset="full",
        steps=300_000,
        dissect=DissectConfig(batch_size=256),
        probe=ProbeConfig(images=0, image_size=128),
    ),
}


def train_config(config: Config, variation: str):
    overrides = [
        f"steps={config.steps}",
        f"image_size={config.probe.image_size}",
        *VARIATIONS[variation],
    ]
    return make_config(config.train_preset, overrides)


def run(config: Config, workdir: str | Path, progress: bool = True) -> dict:
    started = time.time()
    workdir, probe = start_experiment(config, workdir, progress)
    curves = {}
    for index, variation in enumerate(config.variations):
        run_dir = workdir / "runs" / variation
        train(train_config(config, variation), run_dir, progress=progress)
        accuracy = eval_accuracy(run_dir)
        points = []
        for step in list_checkpoints(run_dir):
            model = feature_model(run_dir, step)
            units = model.apply(probe.images[:1], (config.layer,))[config.layer].shape[-1]
            key = jax.random.fold_in(jax.random.key(config.rotation_seed), index * 1_000_003 + step)
            results = dissect_model(
                model,
                [config.layer],
                probe,
                config.dissect,
                workdir / "dissections" / variation / str(step),
                checkpoint_identity(run_dir, step),
                rotations={config.layer + ROTATED: (config.layer, random_rotation(key, units))},
            )
            points.append(
                {
                    "step": step,
                    "eval_accuracy": accuracy.get(step),
                    "units": unique_counts(results[config.layer]),
                    "rotated": unique_counts(results[config.layer + ROTATED]),
                    "num_units": units,
                }
            )
            if progress:
                print(
                    f"{variation} step {step}: unique detectors {points[-1]['units']['total']} "
                    f"(rotated {points[-1]['rotated']['total']}), accuracy "
                    f"{points[-1]['eval_accuracy']}",
                    file=sys.stderr,
                )
        curves[variation] = points
    results = {
        "config": dataclasses.asdict(config),
        "layer": config.layer,
        "curves": curves,
        "seconds": round(time.time() - started, 1),
    }
    save_json(workdir / "results.json", results)
    plot(curves, workdir, config.layer)
    write_summary(results, workdir)
    return results


def plot(curves: dict, workdir: Path, layer: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(curves, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))

    def steps(points):
        return [p["step"] for p in points]

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for axis, basis in zip(axes, ("units", "rotated"), strict=True):
        for variation, points in curves.items():
            axis.plot(
                steps(points),
                [p[basis]["total"] for p in points],
                "o-",
                ms=3,
                color=colors[variation],
                label=variation,
            )
        axis.set_xscale("symlog", linthresh=1)
        axis.set_xlabel("training iteration")
        axis.set_title(
            f"{layer}: {'its units' if basis == 'units' else 'a random rotation of its basis'}"
        )
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("unique detectors (IoU > 0.04)")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(workdir / "unique_detectors.png", dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for axis, category in zip(axes.ravel(), CATEGORIES, strict=True):
        for variation, points in curves.items():
            axis.plot(
                steps(points),
                [p["units"].get(category, 0) for p in points],
                "-",
                color=colors[variation],
                label=variation,
            )
            axis.plot(
                steps(points),
                [p["rotated"].get(category, 0) for p in points],
                "--",
                color=colors[variation],
                alpha=0.6,
            )
        axis.set_xscale("symlog", linthresh=1)
        axis.set_title(category)
        axis.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    figure.suptitle(f"{layer}: unique detectors per category (solid: units, dashed: rotated basis)")
    figure.tight_layout()
    figure.savefig(workdir / "per_category.png", dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for variation, points in curves.items():
        known = [p for p in points if p["eval_accuracy"] is not None]
        axis.plot(
            steps(known),
            [p["eval_accuracy"] for p in known],
            "o-",
            ms=3,
            color=colors[variation],
            label=variation,
        )
    axis.set_xscale("symlog", linthresh=1)
    axis.set_xlabel("training iteration")
    axis.set_ylabel("validation accuracy")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(workdir / "accuracy.png", dpi=100)
    plt.close(figure)


def write_summary(results: dict, workdir: Path) -> Path:
    rows = []
    for variation, points in results["curves"].items():
        first, last = points[0], points[-1]
        links = " ".join(
            f'<a href="dissections/{variation}/{p["step"]}/{results["layer"]}/report.html">{p["step"]}</a>'
            for p in points
        )
        rows.append(
            f"<tr><td>{html.escape(variation)}</td><td>{first['units']['total']}</td>"
            f"<td>{last['units']['total']}</td><td>{last['rotated']['total']}</td>"
            f"<td>{last['units']['detectors']}/{last['num_units']}</td>"
            f"<td>{last['eval_accuracy']:.3f}</td><td>{links}</td></tr>"
        )
    body = f"""<h1>Unique detectors across training ({html.escape(results["layer"])})</h1>
<p>Run in {results["seconds"]} s. Config: <code>{html.escape(json.dumps(results["config"]))}</code></p>
<table><tr><th>variation</th><th>unique at step 0</th><th>unique at the end</th>
<th>rotated basis, end</th><th>detectors, end</th><th>accuracy, end</th><th>dissection reports by step</th></tr>
{"".join(rows)}</table>
<h2>Unique detectors</h2><img src="unique_detectors.png" alt="unique detectors against iteration">
<h2>Per category</h2><img src="per_category.png" alt="unique detectors per category">
<h2>Accuracy</h2><img src="accuracy.png" alt="accuracy against iteration">
"""
    return write_page(workdir / "summary.html", "Training dynamics", body)


def main(argv=None) -> int:
    return experiment_main("training_dynamics", __doc__, PRESETS, Config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
