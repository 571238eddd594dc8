"""The random-basis test: are a layer's units more interpretable than rotations of them?

    python -m experiments.rotation [--config smoke|default|full] [--workdir DIR] [key=value ...]

Trains (or reuses) the baseline network of ``train/`` (or dissects the run named by
``run=WORKDIR``), then dissects its ``layer`` in the units' basis and in fractional
rotations R**alpha (alpha = 0, 0.2, ..., 1; R**alpha through the angles of R's real Schur
form, as the original NetDissect) for several random rotations R. Every rotated layer is
computed from the activations batch by batch, in the same two passes. Writes to the workdir
(default runs/rotation-<config>): results.json (unique detectors and detectors against
alpha at IoU thresholds 0.04 to 0.10, mean and spread over the rotations, and the chance
IoU a mask of the same area placed at random would score), rotation.png and summary.html.
"""

from __future__ import annotations

import dataclasses
import html
import json
import sys
from pathlib import Path

import jax
import numpy as np

from experiments.common import (
    ProbeConfig,
    checkpoint_identity,
    dissect_model,
    experiment_main,
    save_json,
    start_experiment,
    summary_at,
    write_page,
)
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
    seed: int = 0
    dissect: DissectConfig = dataclasses.field(default_factory=lambda: DissectConfig(batch_size=50))
    # The probe set; the network trains at probe.image_size.
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)


PRESETS = {
    "smoke": dict(
        train_preset="smoke",
        steps=6,
        alphas=("0", "0.5", "1"),
        rotations=2,
        dissect=DissectConfig(batch_size=20),
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
    units = model.apply(probe.images[:1], (config.layer,))[config.layer].shape[-1]
    rotations = {}
    for index in range(config.rotations):
        full = random_rotation(jax.random.fold_in(jax.random.key(config.seed), index), units)
        for alpha in config.alphas:
            if float(alpha) == 0:
                continue  # alpha = 0 is the units themselves
            rotations[f"{config.layer}@alpha{alpha}-r{index}"] = (
                config.layer,
                fractional_rotation(full, float(alpha)),
            )
    results = dissect_model(
        model,
        [config.layer],
        probe,
        config.dissect,
        workdir / "dissections",
        checkpoint_identity(run_dir, None),
        rotations=rotations,
        progress=progress,
    )
    label_positions = int(np.prod(probe.dataset.label_size))
    for value in results.values():
        value["label_positions"] = label_positions

    table = {}
    for threshold in config.iou_thresholds:
        rows = []
        for alpha in config.alphas:
            names = (
                [config.layer]
                if float(alpha) == 0
                else [f"{config.layer}@alpha{alpha}-r{i}" for i in range(config.rotations)]
            )
            summaries = [summary_at(results[name], float(threshold)) for name in names]
            unique = [s["unique_top_label"]["total"] for s in summaries]
            detectors = [s["detectors"] for s in summaries]
            rows.append(
                {
                    "alpha": float(alpha),
                    "unique_mean": float(np.mean(unique)),
                    "unique_std": float(np.std(unique)),
                    "detectors_mean": float(np.mean(detectors)),
                    "detectors_std": float(np.std(detectors)),
                }
            )
        table[threshold] = rows
    summary = {
        "config": dataclasses.asdict(config),
        "units": units,
        "by_iou_threshold": table,
        "chance_iou": {
            name: chance_iou(value)
            for name, value in results.items()
            if name == config.layer or name.endswith("-r0")
        },
    }
    save_json(workdir / "results.json", summary)
    plot(summary, workdir / "rotation.png", config.layer)
    write_summary(summary, workdir)
    return summary


def plot(summary: dict, path: Path, layer: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for threshold, rows in summary["by_iou_threshold"].items():
        alphas = [r["alpha"] for r in rows]
        for axis, key in zip(axes, ("unique", "detectors"), strict=True):
            axis.errorbar(
                alphas,
                [r[f"{key}_mean"] for r in rows],
                yerr=[r[f"{key}_std"] for r in rows],
                marker="o",
                capsize=3,
                label=f"IoU > {threshold}",
            )
    axes[0].set_ylabel("unique detectors")
    axes[1].set_ylabel("detectors")
    for axis in axes:
        axis.set_xlabel("rotation alpha (0: the units, 1: a full random rotation)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"{layer}: interpretability of rotated bases (mean and spread over rotations)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_summary(summary: dict, workdir: Path) -> Path:
    rows = "".join(
        f"<tr><td>{t}</td>"
        + "".join(f"<td>{r['unique_mean']:.1f} &plusmn; {r['unique_std']:.1f}</td>" for r in rows)
        + "</tr>"
        for t, rows in summary["by_iou_threshold"].items()
    )
    alphas = next(iter(summary["by_iou_threshold"].values()))
    header = "".join(f"<th>alpha {r['alpha']:g}</th>" for r in alphas)
    chance = ", ".join(f"{html.escape(k)}: {v:.4f}" for k, v in summary["chance_iou"].items())
    body = f"""<h1>Units against rotated bases ({summary["units"]} units)</h1>
<table><tr><th>IoU threshold</th>{header}</tr>{rows}</table>
<p>Mean chance IoU of the units' labels (a mask of the same area placed at random): {chance}</p>
<img src="rotation.png" alt="unique detectors against alpha">
<p>Config: <code>{html.escape(json.dumps(summary["config"]))}</code></p>"""
    return write_page(workdir / "summary.html", "Rotation", body)


def main(argv=None) -> int:
    return experiment_main("rotation", __doc__, PRESETS, Config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
