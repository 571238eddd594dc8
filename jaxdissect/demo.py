"""``python -m jaxdissect demo``: dissection end to end on the embedded synthetic world.

Writes a synthetic Broden-format probe set, builds a layer whose units are known (one unit
per concept: its label mask, averaged to the layer's resolution, plus noise; and as many
pure-noise units), dissects it, and prints the summary: each concept unit should be
labelled with its own concept and the noise units with nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxdissect.config import DissectConfig, check_paths
from jaxdissect.data.broden import open_broden
from jaxdissect.data.cache import load_label_arrays
from jaxdissect.data.synthetic import world
from jaxdissect.pipeline import dissect
from jaxdissect.report.results import format_summary
from jaxdissect.sources import features_activations


def concept_layer(planes, image_labels, chosen, stride, seed=0):
    """(N, sh/stride, sw/stride, 2 * len(chosen)) activations: concept units, then noise."""
    rng = np.random.default_rng(seed)
    num_images, _, height, width = planes.shape
    size = (height // stride, width // stride)
    features = rng.normal(0, 0.05, (num_images, *size, 2 * len(chosen))).astype(np.float32)
    for unit, label in enumerate(chosen):
        mask = (planes == label).sum(axis=1).astype(np.float32)
        mask += (image_labels == label).any(axis=1)[:, None, None]
        features[..., unit] += mask.reshape(num_images, size[0], stride, size[1], stride).mean(
            axis=(2, 4)
        )
    return features


def run(out: str | Path, num_images: int = 600, seed: int = 0, progress: bool = True) -> Path:
    check_paths(out=out)
    out = Path(out)
    probe = out / "probe"
    if not (probe / "index.csv").is_file():
        world.write_probe(probe, num_images, seed, world.WorldConfig(image_size=64), progress)
    dataset = open_broden(probe)
    labels = load_label_arrays(dataset, out / "cache", progress)
    planes = labels.label_planes(0, dataset.num_images)
    image_labels = np.asarray(labels.image_labels)
    counts = np.bincount(planes.ravel(), minlength=dataset.num_labels)
    counts += np.bincount(image_labels.ravel(), minlength=dataset.num_labels) * planes[0, 0].size
    # Four concepts per category, the most frequent ones.
    chosen = []
    for c in range(len(dataset.categories)):
        members = np.flatnonzero((dataset.label_category == c) & (counts > 0))
        chosen += members[np.argsort(-counts[members], kind="stable")[:4]].tolist()
    activations = concept_layer(planes, image_labels, chosen, stride=2, seed=seed)
    out_folder = out / "dissection"
    dissection = dissect(
        dataset,
        features_activations(activations, layer="concept-layer"),
        DissectConfig(quantile=0.05),
        out_folder,
        labels=labels,
        cache=out / "cache",
        progress=progress,
    )["concept-layer"]
    recovered = sum(
        int(dissection.labels.category_label[u, dataset.label_category[label]]) == label
        for u, label in enumerate(chosen)
    )
    print(format_summary(dissection.summary))
    print(
        f"concept units labelled with their own concept (within its category): "
        f"{recovered}/{len(chosen)}; noise units: {len(chosen)}"
    )
    print(f"wrote {out_folder / 'tally.csv'} and {out_folder / 'results.json'}")
    print(f"report: {out_folder / 'report.html'}")
    return out_folder / "results.json"
