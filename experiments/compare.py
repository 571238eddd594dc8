"""Comparing networks: train named variants, dissect each one's top layer (units and a random
rotation), and measure a linear probe on held-out scene labels. Shared by width_depth,
architectures and supervision."""

from __future__ import annotations

import dataclasses
import html
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import (
    ROTATED,
    ProbeConfig,
    checkpoint_identity,
    dissect_model,
    save_json,
    start_experiment,
    unique_counts,
    write_page,
)
from jaxdissect.config import DissectConfig
from jaxdissect.data.synthetic import world
from jaxdissect.features import FeatureModel
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
    """What the comparison studies share; ``dissect``: how each network is dissected;
    ``probe``: on what (the networks train at ``probe.image_size``)."""

    train_preset: str = "default"
    steps: int = 600
    dissect: DissectConfig = dataclasses.field(default_factory=lambda: DissectConfig(batch_size=50))
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
    probe_train_images: int = 800  # linear probe: fitted on validation scenes, tested on test
    probe_test_images: int = 400
    seed: int = 0


# The comparison studies' presets (width_depth adds its own smoke sizes).
PRESETS = {
    "smoke": dict(
        train_preset="smoke",
        steps=4,
        dissect=DissectConfig(batch_size=20),
        probe=ProbeConfig(images=40, image_size=32),
        probe_train_images=32,
        probe_test_images=16,
    ),
    "default": {},
    "full": dict(
        train_preset="full",
        steps=300_000,
        dissect=DissectConfig(batch_size=256),
        probe=ProbeConfig(image_size=128),
    ),
}


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
    fit_x, fit_y = world.scene_arrays(
        config.seed, "validation", config.probe_train_images, geometry
    )
    test_x, test_y = world.scene_arrays(config.seed, "test", config.probe_test_images, geometry)
    a, b = pooled_features(model, layer, fit_x), pooled_features(model, layer, test_x)
    mean, scale = a.mean(0), a.std(0) + 1e-6
    a, b = (a - mean) / scale, (b - mean) / scale
    a, b = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
    targets = np.eye(int(fit_y.max()) + 1)[fit_y]
    weights = np.linalg.solve(a.T @ a + 1.0 * np.eye(a.shape[1]), a.T @ targets)
    return float(np.mean(np.argmax(b @ weights, 1) == test_y))


def run_comparison(
    variants: Sequence[Variant],
    config: CommonConfig,
    workdir: Path,
    title: str,
    progress: bool = True,
) -> dict:
    started = time.time()
    workdir, probe = start_experiment(config, workdir, progress)
    rows = []
    for index, variant in enumerate(variants):
        accuracy = None
        if variant.model is not None:
            model, layer, weights = variant.model, variant.layer, variant.weights
        else:
            run_dir = workdir / "runs" / (variant.run or variant.name)
            overrides = [
                f"steps={config.steps}",
                f"image_size={config.probe.image_size}",
                *variant.overrides,
            ]
            if variant.init_from_variant:
                overrides.append(f"init_from={workdir / 'runs' / variant.init_from_variant}")
            train(make_config(config.train_preset, overrides), run_dir, progress=progress)
            step = variant.step if variant.step is not None else list_checkpoints(run_dir)[-1]
            model = feature_model(run_dir, step)
            weights = checkpoint_identity(run_dir, step)
            layer = variant.layer or dissectable_layers(read_config(run_dir))[-1]
            metrics = [
                json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x
            ]
            accuracy = next(
                (m["eval_accuracy"] for m in metrics if m["step"] == step and "eval_accuracy" in m),
                None,
            )
        units = model.apply(jnp.asarray(probe.images[:1]), (layer,))[layer].shape[-1]
        key = jax.random.fold_in(jax.random.key(config.seed), index)
        results = dissect_model(
            model,
            [layer],
            probe,
            config.dissect,
            workdir / "dissections" / variant.name,
            weights,
            rotations={layer + ROTATED: (layer, random_rotation(key, units))},
        )
        rows.append(
            {
                "variant": variant.name,
                "layer": layer,
                "units": units,
                "unique": unique_counts(results[layer]),
                "unique_rotated": unique_counts(results[layer + ROTATED]),
                "eval_accuracy": accuracy,
                "linear_probe": linear_probe(model, layer, config),
            }
        )
        if progress:
            r = rows[-1]
            print(
                f"{variant.name}: {r['unique']['total']} unique detectors ({r['unique_rotated']['total']} "
                f"rotated) of {units} units; linear probe {r['linear_probe']:.3f}"
            )
    summary = {
        "title": title,
        "config": dataclasses.asdict(config),
        "rows": rows,
        "seconds": round(time.time() - started, 1),
    }
    save_json(workdir / "results.json", summary)
    plot(summary, workdir / "comparison.png")
    write_summary(summary, workdir)
    return summary


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    names = [r["variant"] for r in rows]
    x = np.arange(len(rows))
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    axes[0].bar(x - 0.2, [r["unique"]["total"] for r in rows], 0.4, label="units")
    axes[0].bar(x + 0.2, [r["unique_rotated"]["total"] for r in rows], 0.4, label="rotated basis")
    axes[0].set_xticks(x, names, rotation=30, ha="right")
    axes[0].set_ylabel("unique detectors (IoU > 0.04)")
    axes[0].legend()
    axes[1].scatter([r["linear_probe"] for r in rows], [r["unique"]["total"] for r in rows])
    for r in rows:
        axes[1].annotate(r["variant"], (r["linear_probe"], r["unique"]["total"]), fontsize=8)
    axes[1].set_xlabel("linear-probe accuracy on held-out scenes (discrimination)")
    axes[1].set_ylabel("unique detectors (interpretability)")
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.suptitle(summary["title"])
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_summary(summary: dict, workdir: Path) -> Path:
    body = "".join(
        f"<tr><td>{html.escape(r['variant'])}</td><td>{html.escape(r['layer'])}</td>"
        f"<td>{r['units']}</td><td>{r['unique']['total']}</td><td>{r['unique_rotated']['total']}</td>"
        f"<td>{r['unique']['detectors']}</td>"
        f"<td>{'' if r['eval_accuracy'] is None else format(r['eval_accuracy'], '.3f')}</td>"
        f"<td>{r['linear_probe']:.3f}</td>"
        f'<td><a href="dissections/{html.escape(r["variant"])}/{html.escape(r["layer"])}/report.html">report</a></td></tr>'
        for r in summary["rows"]
    )
    body = f"""<h1>{html.escape(summary["title"])}</h1><p>Run in {summary["seconds"]} s.</p>
<table><tr><th>network</th><th>layer</th><th>units</th><th>unique detectors</th>
<th>rotated basis</th><th>detectors</th><th>accuracy</th><th>linear probe</th><th></th></tr>{body}</table>
<img src="comparison.png" alt="unique detectors per network">
<p>Config: <code>{html.escape(json.dumps(summary["config"]))}</code></p>"""
    return write_page(workdir / "summary.html", summary["title"], body)
