"""Explaining predictions through interpreted units, and segmenting images with them.

    python -m experiments.explain [--config smoke|default|full] [--workdir DIR] [key=value ...]

Trains (or reuses) a ResNet-style network, whose last stage feeds global average pooling
and a linear classifier, so that unit u contributes w[c, u] * pooled_u(x) to class c's
logit. Dissects that stage (layer3), then:
- explain.png: for sample probe images, the predicted scene and the units contributing
  most to it, each with its label and its thresholded mask over the image; results.json
  records how many of those units' concepts are really in the image (ground truth);
- segmentation: each pixel takes the concept of the most active interpreted unit (the
  largest activation / threshold ratio among units whose IoU is above 0.04, per category),
  scored against the synthetic world's ground truth: pixel accuracy and mean IoU per
  category.
Each of ``seeds`` seeds trains its own network; results.json gives every number per seed
with its mean and 95 % t-interval (explain.png shows seed 0). Writes to the workdir
(default runs/explain-<config>).
"""

from __future__ import annotations

import dataclasses
import html
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from experiments.claims import format_interval, interval
from experiments.cli import experiment_main
from experiments.common import (
    ProbeConfig,
    checkpoint_identity,
    dissect_model,
    provenance,
    start_experiment,
    write_page,
)
from experiments.plots import figure_html, save_figure
from experiments.workdir import study_set
from jaxdissect.config import DissectConfig
from jaxdissect.stats.upsample import bilinear_matrix
from train.checkpoints import feature_model, load_run
from train.config import make_config
from train.loop import train

PIXEL_CATEGORIES = ("object", "part", "material", "color")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    train_preset: str = "default"
    steps: int = 1500
    layer: str = "layer3"
    examples: int = 6
    top_units: int = 3
    seeds: int = 3  # 0 .. seeds - 1: each trains its own network (initialisation, data order)
    dissect: DissectConfig = dataclasses.field(default_factory=lambda: DissectConfig(batch_size=50))
    # The probe set; the network trains at probe.image_size.
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)


PRESETS = {
    "smoke": dict(
        train_preset="smoke",
        steps=4,
        examples=2,
        seeds=1,
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


def upsampled(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w, U) -> (N, H, W, U), half-pixel bilinear."""
    rows = bilinear_matrix(size[0], maps.shape[1]).astype(np.float64)
    cols = bilinear_matrix(size[1], maps.shape[2]).astype(np.float64)
    return np.einsum("yh,nhwu,xw->nyxu", rows, maps.astype(np.float64), cols)


def segment(ratio: np.ndarray, unit_labels: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Per pixel, the label of the usable unit with the largest activation / threshold ratio
    above 1, else 0. ratio: (N, H, W, U)."""
    masked = np.where(usable, ratio, -np.inf)
    best = np.argmax(masked, axis=-1)
    active = np.take_along_axis(masked, best[..., None], -1)[..., 0] > 1
    return np.where(active, unit_labels[best], 0)


def segmentation_scores(prediction: np.ndarray, truth: np.ndarray) -> dict:
    """Pixel accuracy over labelled pixels, and mean IoU over the labels in the truth."""
    labelled = truth > 0
    accuracy = float(np.mean(prediction[labelled] == truth[labelled])) if labelled.any() else 0.0
    ious = []
    for label in np.unique(truth[labelled]):
        p, t = prediction == label, truth == label
        ious.append(np.sum(p & t) / np.sum(p | t))
    return {
        "pixel_accuracy": accuracy,
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "labels": len(ious),
    }


def _train_seed(config: Config, workdir: Path, seed: int, progress: bool) -> Path:
    """Trains (or reuses) the network of ``seed``; returns its run folder."""
    run_dir = workdir / "runs" / f"seed{seed}"
    train(
        make_config(
            config.train_preset,
            [
                f"steps={config.steps}",
                f"image_size={config.probe.image_size}",
                f"init_seed={seed}",
                f"seed={seed}",
                "family=resnet",
                "depth=2",
                "batch_norm=true",
                "dropout=false",
            ],
        ),
        run_dir,
        progress=progress,
    )
    return run_dir


def _truth(dataset, planes: np.ndarray, category: str) -> np.ndarray:
    """(B, sh, sw) each pixel's label of ``category``, from whichever plane has one (0: none)."""
    index_of = dataset.categories.index(category)
    truth = np.zeros((planes.shape[0], *planes.shape[2:]), np.int64)
    for plane in range(planes.shape[1]):
        values = planes[:, plane]
        truth = np.where(dataset.label_category[values] == index_of, values, truth)
    return truth


def _explanation(
    dataset, index, maps, logits, planes, weights, rows, unit_label, class_names, top_units
) -> dict:
    """One image's prediction explained by the units that contribute most to it (pooled
    activation times the classifier's weight), with their maps."""
    predicted = int(np.argmax(logits))
    contribution = weights[:, predicted] * maps.mean(axis=(0, 1))
    top = np.argsort(-contribution, kind="stable")[:top_units]
    present = set(np.unique(planes).tolist()) | set(dataset.image_labels[index])
    return {
        "image": index,
        "predicted": class_names[predicted],
        "truth": dataset.label_names[dataset.image_labels[index][0]],
        "units": [
            {
                "unit": int(u) + 1,
                "label": rows[u]["label"],
                "category": rows[u]["category"],
                "iou": rows[u]["score"],
                "contribution": float(contribution[u]),
                "concept_in_image": bool(unit_label[u] in present),
            }
            for u in top
        ],
        "maps": maps[:, :, top],
    }


def explain_seed(config: Config, workdir: Path, probe, seed: int, progress: bool):
    """Trains (or reuses) the network of ``seed``, dissects it, explains sample predictions
    and segments the probe set. Returns (its measurements, the explained images with their
    maps, the units' thresholds)."""
    run_dir = _train_seed(config, workdir, seed, progress)
    model = feature_model(run_dir)
    network, _ = load_run(run_dir)
    weights = np.asarray(network.classifier.kernel.get_value())  # (U, C)
    class_names = json.loads((run_dir / "run.json").read_text())["class_names"]
    results = dissect_model(
        model,
        [config.layer],
        probe,
        config.dissect,
        workdir / "dissections" / f"seed{seed}",
        checkpoint_identity(run_dir, None),
    )[config.layer]
    rows = sorted(results["units"], key=lambda r: r["unit"])
    thresholds = np.asarray(results["thresholds"])
    number = {name: i for i, name in enumerate(probe.dataset.label_names)}
    unit_label = np.array([number.get(r["label"], 0) for r in rows])
    unit_category = np.array([r["category"] for r in rows])
    interpreted = np.array([r["score"] > config.dissect.iou_threshold for r in rows])

    label_size = probe.dataset.label_size
    per_category = {c: {"prediction": [], "truth": []} for c in PIXEL_CATEGORIES}
    scene_images = [
        i
        for i in range(probe.dataset.num_images)
        if probe.dataset.image_labels[i]
        and probe.dataset.category_of(probe.dataset.image_labels[i][0]) == "scene"
    ]
    explained = []
    for start in range(0, probe.dataset.num_images, config.dissect.batch_size):
        stop = min(start + config.dissect.batch_size, probe.dataset.num_images)
        out = model.apply(
            jnp.asarray(np.asarray(probe.images[start:stop])), (config.layer, "logits")
        )
        maps = np.asarray(out[config.layer])
        ratio = upsampled(maps, label_size) / np.maximum(thresholds, 1e-12)
        planes = probe.labels.label_planes(start, stop)
        for category in PIXEL_CATEGORIES:
            usable = interpreted & (unit_category == category)
            prediction = segment(ratio, unit_label, usable)
            per_category[category]["prediction"].append(prediction)
            per_category[category]["truth"].append(_truth(probe.dataset, planes, category))
        for index in range(start, stop):
            if index not in scene_images[: config.examples]:
                continue
            explained.append(
                _explanation(
                    probe.dataset,
                    index,
                    maps[index - start],
                    np.asarray(out["logits"][index - start]),
                    planes[index - start],
                    weights,
                    rows,
                    unit_label,
                    class_names,
                    config.top_units,
                )
            )
    segmentation = {
        c: segmentation_scores(np.concatenate(v["prediction"]), np.concatenate(v["truth"]))
        for c, v in per_category.items()
    }
    agreement = [u["concept_in_image"] for e in explained for u in e["units"]]
    measured = {
        "interpreted_units": int(interpreted.sum()),
        "units": len(rows),
        "segmentation": segmentation,
        "explanations": [{k: v for k, v in e.items() if k != "maps"} for e in explained],
        "top_unit_concepts_in_image": float(np.mean(agreement)) if agreement else None,
    }
    return measured, explained, thresholds


def run(config: Config, workdir: str | Path, progress: bool = True) -> dict:
    started = time.time()
    with start_experiment(config, workdir, progress) as (workdir, probe):
        seeds = list(range(config.seeds))
        found = [explain_seed(config, workdir, probe, seed, progress) for seed in seeds]
        measured = [m for m, _, _ in found]
        agreement = [m["top_unit_concepts_in_image"] for m in measured]
        summary = {
            "study": "explain",
            "config": dataclasses.asdict(config),
            "seeds": seeds,
            "claims": [],  # the paper's explanations are qualitative: no claim is computed here
            "interpreted_units": interval([m["interpreted_units"] for m in measured]),
            "units": measured[0]["units"],
            "segmentation": {
                category: {
                    key: interval([m["segmentation"][category][key] for m in measured])
                    for key in ("pixel_accuracy", "mean_iou", "labels")
                }
                for category in PIXEL_CATEGORIES
            },
            "explanations": {
                str(seed): m["explanations"] for seed, m in zip(seeds, measured, strict=True)
            },
            "top_unit_concepts_in_image": None if None in agreement else interval(agreement),
            "provenance": provenance(),
            "seconds": round(time.time() - started, 1),
        }
        _, explained, thresholds = found[0]
        with study_set(workdir, summary) as folder:
            figure(explained, probe, thresholds, folder / "explain.png", summary["provenance"])
            write_summary(summary, folder)
        return summary


def figure(explained, probe, thresholds, path: Path, provenance: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not explained:
        return
    columns = 1 + len(explained[0]["units"])
    fig, axes = plt.subplots(
        len(explained), columns, figsize=(3 * columns, 3 * len(explained)), squeeze=False
    )
    for row, item in zip(axes, explained, strict=True):
        image = np.asarray(probe.images[item["image"]])
        row[0].imshow(image)
        row[0].set_title(f"predicted {item['predicted']}\n(truth {item['truth']})", fontsize=9)
        for axis, unit, k in zip(row[1:], item["units"], range(len(item["units"])), strict=True):
            activation = upsampled(item["maps"][None, :, :, k : k + 1], image.shape[:2])[0, :, :, 0]
            mask = activation > thresholds[unit["unit"] - 1]
            axis.imshow((image * (0.2 + 0.8 * mask[..., None])).astype(np.uint8))
            mark = "in image" if unit["concept_in_image"] else "not in image"
            axis.set_title(
                f"unit {unit['unit']}: {unit['label']} ({unit['category']})\n"
                f"IoU {unit['iou']:.3f}, {mark}",
                fontsize=8,
            )
        for axis in row:
            axis.set_xticks([])
            axis.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path, provenance, dpi=90)


def _cell(stat: dict | None, digits: int) -> str:
    return "" if stat is None else html.escape(format_interval(stat["mean"], stat["ci95"], digits))


def write_summary(summary: dict, workdir: Path) -> Path:
    seg = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{_cell(s['pixel_accuracy'], 3)}</td><td>{_cell(s['mean_iou'], 3)}</td>"
        f"<td>{_cell(s['labels'], 1)}</td></tr>"
        for c, s in summary["segmentation"].items()
    )
    layer = html.escape(summary["config"]["layer"])
    reports = " ".join(
        f'<a href="dissections/seed{seed}/{layer}/report.html">seed {seed}</a>'
        for seed in summary["seeds"]
    )
    caption = (
        "Seed 0: each image's predicted scene and the units contributing most to it, with "
        "their labels and thresholded masks: do the units' concepts match the image?"
    )
    body = f"""<h1>Explaining predictions through interpreted units</h1>
<p>{len(summary["seeds"])} seed(s); means over seeds with their 95 % t-interval in brackets.
Interpreted units (IoU above the threshold): {_cell(summary["interpreted_units"], 1)} of
{summary["units"]}. Share of the top contributing units whose concept is in the image they
explain: {_cell(summary["top_unit_concepts_in_image"], 3)}.</p>
{figure_html("explain.png", caption)}
<h2>Segmentation by interpreted units</h2>
<table><tr><th>category</th><th>pixel accuracy</th><th>mean IoU</th><th>labels</th></tr>{seg}</table>
<p>Dissection reports: {reports}</p>"""
    return write_page(workdir / "summary.html", "Explanations", body)


def main(argv=None) -> int:
    return experiment_main("explain", __doc__, PRESETS, Config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
