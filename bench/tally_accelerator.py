"""Broden-scale dissection on whatever JAX device is present (made for one H100/H200).

    python -m bench.tally_accelerator [--images 63305] [--units 512] [--size 7]
    python -m bench.tally_accelerator --model resnet18 --layer layer4

With ``--model``, a zoo network (random weights: nothing is downloaded) runs on 224x224
uint8 images held in host memory, as a decoded image cache would hold them, and the whole
dissection (``dissect_activations``: forward pass, thresholds, labels and activations kept
on the device between the passes, tally, scoring) is timed end to end; then the forward
pass alone. Without it:

Activations are drawn on the device image by image (as a forward pass would leave them);
labels come from host memory in the decoded cache's compact form (``bench.workload``).
Prints, per stage, seconds and images/s: the exact threshold pass, the tally pass, scoring,
and the end-to-end total; then the dense one-hot matmul baseline against our tally on the
same images (ratio, counts asserted identical), and a NetDissect-Lite-style NumPy loop on a
few images (counts asserted identical). Compilation is timed apart.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench.dense_baseline import dense_tally
from bench.lite_loop import lite_tally
from bench.workload import CATEGORIES, broden_like, label_category
from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import BrodenDataset
from jaxdissect.data.cache import LabelArrays
from jaxdissect.passes import compute_tally, compute_thresholds
from jaxdissect.pipeline import dissect_activations
from jaxdissect.stats import scores
from jaxdissect.stats.upsample import bilinear_matrix


@functools.partial(jax.jit, static_argnames=("count", "shape"))
def _draw(key, start, *, count, shape):
    """Activations of images [start, start + count), each from fold_in(key, index): ReLU
    noise with per-unit gains, on a 1/64 grid (see bench.workload.relu_features)."""

    def one(index):
        k1, k2 = jax.random.split(jax.random.fold_in(key, index))
        gain = jnp.exp(0.5 * jax.random.normal(k1, (1, 1, shape[-1])))
        values = jnp.clip(jax.random.normal(k2, shape) * gain - 0.5, 0, 15.9)
        return jnp.round(values * 64) / 64

    return jax.vmap(one)(start + jnp.arange(count))


LAYER = "layer"


def device_source(key, shape):
    def activations(start, stop):
        return {LAYER: _draw(key, start, count=stop - start, shape=shape)}

    return activations


def synthetic_dataset(num_images: int, size: int) -> BrodenDataset:
    category = label_category()
    return BrodenDataset(
        directory=Path("<broden-like workload>"),
        categories=CATEGORIES,
        label_names=tuple(f"label-{i}" for i in range(len(category))),
        label_category=category,
        images=tuple(f"{i}.jpg" for i in range(num_images)),
        image_size=(2 * size, 2 * size),
        label_size=(size, size),
        pixel_planes=((),) * num_images,
        image_labels=((),) * num_images,
    )


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = jax.block_until_ready(fn(*args, **kwargs))
    return result, time.perf_counter() - start


def subset(labels, count):
    return type(labels)(*(np.asarray(a[:count]) for a in labels))


def host_images(count: int, size: int, distinct: int = 4096) -> np.ndarray:
    """(count, size, size, 3) uint8 noise images in host memory: ``distinct`` drawn ones
    repeated (drawing 63,305 would take longer than the dissection)."""
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (min(distinct, count), size, size, 3), dtype=np.uint8)
    images = np.empty((count, size, size, 3), np.uint8)
    for start in range(0, count, len(block)):
        stop = min(start + len(block), count)
        images[start:stop] = block[: stop - start]
    return images


def model_end_to_end(args):
    from jaxdissect.models import zoo
    from jaxdissect.models.features import model_activations

    print(f"devices: {jax.devices()}")
    n, batch = args.images, args.batch_size
    labels, seconds = timed(broden_like, n, 0, args.label_size)
    images, image_seconds = timed(host_images, n, args.image_size)
    model = zoo.feature_model(args.model)
    source = model_activations(model, images, [args.layer], batch)
    shape = tuple(source(0, 1)[args.layer].shape[1:])
    print(
        f"workload: {n} images of {args.image_size}^2 in host memory, {args.model} "
        f"{args.layer} {shape}, {args.label_size}^2 labels ({seconds + image_seconds:.1f} s "
        "to draw labels and images)"
    )
    dataset = synthetic_dataset(n, args.label_size)
    config = DissectConfig(batch_size=batch, union="lite", kernel=args.kernel)
    shapes = {args.layer: shape}

    def run(count):
        part = synthetic_dataset(count, args.label_size) if count < n else dataset
        return dissect_activations(
            source, count, shapes, part, subset(labels, count), config, progress=False
        )

    _, compile_seconds = timed(run, 2 * batch)
    print(f"compile + two batches: {compile_seconds:.1f} s")
    result, total = timed(run, n)
    detectors = result[args.layer].summary["detectors"]
    print(
        f"dissection end to end (forward pass, thresholds, tally, scoring): {total:.2f} s "
        f"({n / total:,.0f} images/s); detectors: {detectors}"
    )

    def forward_only():
        total = jnp.zeros(())
        for s in range(0, n, batch):
            total = total + source(s, min(s + batch, n))[args.layer].sum()
        return total

    _, forward = timed(forward_only)
    print(f"forward pass alone, from host memory: {forward:.2f} s ({n / forward:,.0f} images/s)")
    _print_peak_memory()


def _print_peak_memory():
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        print(f"peak device memory: {stats['peak_bytes_in_use'] / 2**30:.1f} GiB")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=63305)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--size", type=int, default=7, help="activation map size h = w")
    parser.add_argument("--label-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--baseline-images", type=int, default=2048)
    parser.add_argument("--lite-images", type=int, default=32)
    parser.add_argument("--model", help="a zoo network to run (e.g. resnet18)")
    parser.add_argument("--layer", default="layer4", help="with --model")
    parser.add_argument("--image-size", type=int, default=224, help="with --model")
    parser.add_argument("--kernel", choices=("auto", "cpu", "xla"), default="auto")
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the dense and Lite-style baselines"
    )
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.model:
        return model_end_to_end(args)

    print(f"devices: {jax.devices()}")
    if args.kernel == "xla" or jax.default_backend() != "cpu":
        print(f"the data axis is sharded over {jax.device_count()} device(s)")
    shape = (args.size, args.size, args.units)
    labels, seconds = timed(broden_like, args.images, 0, args.label_size)
    print(
        f"workload: {args.images} images, {shape} activations, {args.label_size}^2 labels "
        f"({seconds:.1f} s to draw the labels)"
    )
    dataset = synthetic_dataset(args.images, args.label_size)
    source = device_source(jax.random.key(0), shape)
    shapes = {LAYER: shape}
    config = DissectConfig(batch_size=args.batch_size, union="lite", kernel=args.kernel)
    _compile(args, source, labels, shapes, config)
    thresholds = _stages(args, source, labels, dataset, shapes, config)
    if args.no_baselines:
        return
    count = min(args.baseline_images, args.images) // args.batch_size * args.batch_size
    part = subset(labels, count)
    _dense_comparison(args, source, part, dataset, thresholds, shapes, config)
    _lite_comparison(args, source, labels, part, dataset, thresholds, shapes, config)


def _compile(args, source, labels, shapes, config):
    """Compiles on a small prefix (same batch shapes), so the full passes are timed apart."""
    warm = synthetic_dataset(args.batch_size, args.label_size)
    warm_labels = subset(labels, args.batch_size)
    _, compile_seconds = timed(
        lambda: (
            compute_tally(
                source,
                warm_labels,
                warm,
                compute_thresholds(source, args.batch_size, shapes, config, progress=False),
                shapes,
                config,
                progress=False,
            )
            and dissect_activations(
                source, args.batch_size, shapes, warm, warm_labels, config, progress=False
            )
        )
    )
    print(f"compile + first batch: {compile_seconds:.1f} s")


def _stages(args, source, labels, dataset, shapes, config):
    """Times each stage and the whole dissection; returns the thresholds."""

    # What the activations alone cost (the stand-in for a forward pass), in both passes.
    def draw_all():
        total = jnp.zeros(())
        for s in range(0, args.images, args.batch_size):
            total = total + source(s, min(s + args.batch_size, args.images))[LAYER].sum()
        return total

    draw_all()
    _, t_draw = timed(draw_all)
    thresholds, t_threshold = timed(
        compute_thresholds, source, args.images, shapes, config, progress=False
    )
    counts, t_tally = timed(
        compute_tally, source, labels, dataset, thresholds, shapes, config, progress=False
    )
    G, I, A = counts[LAYER]
    start = time.perf_counter()
    unit_iou = scores.iou(G, I, A, dataset.label_category)
    scores.label_units(unit_iou, dataset.label_category, len(CATEGORIES))
    t_score = time.perf_counter() - start
    n = args.images
    print(f"drawing the activations (forward stand-in, included below): {t_draw:.2f} s a pass")
    print(f"thresholds: {t_threshold:.2f} s ({n / t_threshold:,.0f} images/s)")
    print(f"tally, labels from host memory: {t_tally:.2f} s ({n / t_tally:,.0f} images/s)")
    device_labels = LabelArrays(*jax.block_until_ready(jax.device_put(labels)))
    on_device, t_device = timed(
        compute_tally, source, device_labels, dataset, thresholds, shapes, config, progress=False
    )
    for a, b in zip(on_device[LAYER], counts[LAYER], strict=True):
        np.testing.assert_array_equal(a, b)
    print(f"tally, labels in device memory: {t_device:.2f} s ({n / t_device:,.0f} images/s)")
    print(f"scoring: {t_score:.2f} s")
    result, total = timed(
        dissect_activations, source, n, shapes, dataset, labels, config, progress=False
    )
    for a, b in zip(
        (result[LAYER].label_area, result[LAYER].intersection, result[LAYER].unit_area),
        counts[LAYER],
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    print(
        f"total, end to end (dissect_activations: thresholds, labels copied to the device "
        f"meanwhile, tally, scoring): {total:.2f} s ({n / total:,.0f} images/s); "
        f"detectors (IoU > 0.04): {result[LAYER].summary['detectors']}"
    )
    _print_peak_memory()
    return thresholds


def _dense_comparison(args, source, part, dataset, thresholds, shapes, config):
    """The dense one-hot matmul tally against ours: same images, same thresholds."""
    count = part.slot_planes.shape[0]
    part_dataset = synthetic_dataset(count, args.label_size)
    rows = jnp.asarray(bilinear_matrix(args.label_size, args.size))
    cols = jnp.asarray(bilinear_matrix(args.label_size, args.size))
    category = jnp.asarray(dataset.label_category)

    def baseline():
        totals = [0, 0, 0]
        for s in range(0, count, args.batch_size):
            planes = jnp.asarray(part.label_planes(s, s + args.batch_size))
            out = dense_tally(
                source(s, s + args.batch_size)[LAYER],
                jnp.asarray(thresholds[LAYER].thresholds),
                planes,
                jnp.asarray(part.image_labels[s : s + args.batch_size]),
                category,
                rows,
                cols,
                num_labels=len(category),
                num_categories=len(CATEGORIES),
            )
            totals = [t + np.asarray(o, np.int64) for t, o in zip(totals, out, strict=True)]
        return totals

    timed(baseline)  # compile
    dense, t_dense = timed(baseline)
    ours, t_ours = timed(
        compute_tally, source, part, part_dataset, thresholds, shapes, config, progress=False
    )
    for a, b in zip(dense, ours[LAYER], strict=True):
        np.testing.assert_array_equal(a, b)
    print(
        f"on {count} images: dense one-hot baseline {count / t_dense:,.0f} images/s, "
        f"ours {count / t_ours:,.0f} images/s: {t_dense / t_ours:.1f}x; counts identical"
    )


def _lite_comparison(args, source, labels, part, dataset, thresholds, shapes, config):
    """A NetDissect-Lite-style NumPy loop against ours on a few images."""
    few = args.lite_images
    acts = np.asarray(source(0, few)[LAYER])
    lite = lite_tally(
        acts,
        thresholds[LAYER].thresholds,
        part.label_planes(0, few),
        part.image_labels[:few],
        dataset.label_category,
        len(CATEGORIES),
    )
    small = compute_tally(
        source,
        subset(labels, few),
        synthetic_dataset(few, args.label_size),
        thresholds,
        shapes,
        config,
        progress=False,
    )
    for a, b in zip(lite, small[LAYER], strict=True):
        np.testing.assert_array_equal(a, b)
    print(f"NetDissect-Lite-style NumPy loop on {few} images: counts identical")


if __name__ == "__main__":
    main()
