"""Command line: ``python -m jaxdissect {dissect,summarize,synthetic,demo} ...`` (also
``jaxdissect``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from jaxdissect.errors import DissectError


def _fraction(low_open: bool):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (0.0 < value < 1.0 if low_open else 0.0 <= value < 1.0):
            interval = "(0, 1)" if low_open else "[0, 1)"
            raise argparse.ArgumentTypeError(f"must lie in {interval}, got {text}")
        return value

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _categories(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one category name")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxdissect", description="Network Dissection in JAX.")
    commands = parser.add_subparsers(dest="command", required=True)

    dissect = commands.add_parser(
        "dissect",
        help="label every unit of a layer with the concept it detects",
        description="Dissect a layer's activations on a Broden-format probe set.",
    )
    dissect.add_argument("--dataset", required=True, type=Path, help="Broden-format folder")
    source = dissect.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--features",
        type=Path,
        help="activations .npy, one row per index.csv row, (N, h, w, U) unless --layout nchw",
    )
    source.add_argument(
        "--model",
        help="zoo:NAME (alexnet, vgg16, resnet18, resnet50, resnet20-cifar10) or "
        "package.module:factory (factory(weights) returns a jaxdissect.features.FeatureModel)",
    )
    dissect.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="PyTorch checkpoint for --model (default: random init)",
    )
    dissect.add_argument("--out", required=True, type=Path, help="output folder")
    dissect.add_argument(
        "--layer",
        action="append",
        default=None,
        help="layer to dissect (repeat for several; with --features, a name for the outputs)",
    )
    dissect.add_argument(
        "--union",
        choices=("paper", "lite"),
        default="paper",
        help="which images count towards a unit's area (default: paper)",
    )
    dissect.add_argument(
        "--quantile",
        type=_fraction(True),
        default=0.005,
        help="fraction of activations above each threshold (default 0.005)",
    )
    dissect.add_argument(
        "--iou-threshold",
        type=_fraction(False),
        default=0.04,
        help="detector when IoU is above this (default 0.04)",
    )
    dissect.add_argument(
        "--categories",
        type=_categories,
        default=None,
        help="comma-separated subset (default: all in category.csv)",
    )
    dissect.add_argument("--layout", choices=("nhwc", "nchw"), default="nhwc")
    dissect.add_argument("--batch-size", type=_positive_int, default=32)
    dissect.add_argument(
        "--kernel",
        choices=("auto", "cpu", "xla"),
        default="auto",
        help="cpu: compiled sparse loops on the CPU cores; xla: jitted and sharded over all "
        "devices; auto (default): cpu when JAX runs on the CPU in one process",
    )
    dissect.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="decoded-label cache (default: $JAXDISSECT_CACHE or ~/.cache/jaxdissect)",
    )
    dissect.add_argument("--no-progress", action="store_true", help="hide progress bars")
    dissect.add_argument("--no-report", action="store_true", help="skip the HTML report")
    dissect.add_argument(
        "--top-images",
        type=int,
        default=8,
        help="most activating images kept per unit for the report (default 8)",
    )
    dissect.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=100,
        help="save the passes' states every N batches in OUT/.checkpoint, so that the same "
        "command resumes after an interruption (default 100)",
    )
    distributed = dissect.add_argument_group(
        "several processes (jax.distributed): start one per host with the same arguments"
    )
    distributed.add_argument("--coordinator", default=None, help="host:port of process 0")
    distributed.add_argument("--num-processes", type=_positive_int, default=None)
    distributed.add_argument("--process-id", type=int, default=None)

    features = commands.add_parser(
        "features",
        help="write one layer's activations for an array of images",
        description="Run a model over uint8 RGB images (N, H, W, 3) and save a layer's "
        "activations (N, h, w, U), or the classifier output for --layer logits.",
    )
    features.add_argument("--model", required=True, help="as for dissect")
    features.add_argument("--weights", type=Path, default=None)
    features.add_argument("--layer", required=True)
    features.add_argument("--images", required=True, type=Path, help="uint8 (N, H, W, 3) .npy")
    features.add_argument("--out", required=True, type=Path, help="output .npy")
    features.add_argument("--batch-size", type=_positive_int, default=64)

    report = commands.add_parser(
        "report",
        help="(re)build the HTML report of a finished dissection",
        description="Rebuild OUT/report.html (and OUT/index.html for several layers) from "
        "OUT's results.json and counts.npz; the probe images come from the dataset named there.",
    )
    report.add_argument("out", type=Path, help="a dissect --out folder")
    report.add_argument("--cache", type=Path, default=None)

    summarize = commands.add_parser(
        "summarize",
        help="detectors and unique detectors of a tally.csv",
        description="Count detectors and unique detectors (top-label and per-category rules).",
    )
    summarize.add_argument("tally", type=Path, help="a tally.csv in NetDissect's columns")
    summarize.add_argument("--iou-threshold", type=_fraction(False), default=0.04)
    summarize.add_argument("--json", action="store_true", help="print JSON instead of a table")
    synthetic = commands.add_parser(
        "synthetic",
        help="the embedded synthetic concept world",
        description="Write the synthetic world's probe set, or a picture of it.",
    )
    synthetic_commands = synthetic.add_subparsers(dest="synthetic_command", required=True)
    probe = synthetic_commands.add_parser("probe", help="write a Broden-format probe folder")
    probe.add_argument("--out", required=True, type=Path, help="output folder")
    probe.add_argument("--images", required=True, type=_positive_int, help="number of images")
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--size", type=_positive_int, default=64, help="image size (square)")
    probe.add_argument(
        "--label-size",
        type=_positive_int,
        default=None,
        help="label-plane size (default: size // 2; must divide size)",
    )
    probe.add_argument("--no-progress", action="store_true")
    figure = synthetic_commands.add_parser("figure", help="a PNG of images with their labels")
    figure.add_argument("--out", required=True, type=Path, help="PNG path")
    figure.add_argument("--seed", type=int, default=0)
    figure.add_argument("--rows", type=_positive_int, default=4)
    figure.add_argument("--size", type=_positive_int, default=128)
    demo = commands.add_parser(
        "demo",
        help="dissect a layer of known units on the synthetic world (make demo)",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--images", type=_positive_int, default=600)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    return parser


def run_demo(args: argparse.Namespace) -> int:
    from jaxdissect.demo import run

    run(args.out, args.images, args.seed, progress=not args.no_progress)
    return 0


def _world_config(args: argparse.Namespace):
    from jaxdissect.data.synthetic.world import WorldConfig

    try:
        return WorldConfig(image_size=args.size, label_size=getattr(args, "label_size", None))
    except ValueError as error:
        raise DissectError(f"--size/--label-size: {error}") from None


def run_synthetic(args: argparse.Namespace) -> int:
    config = _world_config(args)
    if args.synthetic_command == "probe":
        from jaxdissect.data.synthetic.world import write_probe

        if (args.out / "index.csv").exists():
            raise DissectError(
                f"{args.out}: already holds a probe set (index.csv); choose another --out"
            )
        write_probe(args.out, args.images, args.seed, config, progress=not args.no_progress)
        print(f"wrote a Broden-format probe set of {args.images} images to {args.out}")
    else:
        from jaxdissect.data.synthetic.figure import save_world_figure

        print(f"wrote {save_world_figure(args.out, args.seed, args.rows, config)}")
    return 0


def _load_features(path: Path):
    """A numeric .npy file, read batch by batch (``NpyRows``)."""
    from jaxdissect.npy_rows import NpyRows

    if not path.is_file():
        raise DissectError(f"{path}: features file not found")
    try:
        features = NpyRows(path)
    except (ValueError, OSError, SyntaxError) as error:
        raise DissectError(f"{path}: not a NumPy .npy array ({error})") from None
    if features.dtype.kind not in "fiu":
        raise DissectError(f"{path}: features must be a numeric .npy array, not {features.dtype}")
    return features


def run_dissect(args: argparse.Namespace) -> int:
    import dataclasses

    import jax

    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_image_array, load_label_arrays
    from jaxdissect.dissect import DissectConfig, dissect_activations, features_source
    from jaxdissect.report import write_index, write_layer_report
    from jaxdissect.results import format_summary, write_dissection

    writer = start_processes(args)
    progress = not args.no_progress and writer
    dataset = open_broden(args.dataset, args.categories)
    config = DissectConfig(
        quantile=args.quantile,
        iou_threshold=args.iou_threshold,
        union=args.union,
        batch_size=args.batch_size,
        top_images=max(args.top_images, 0),
        kernel=args.kernel,
    )
    if args.features is not None:
        if args.layer and len(args.layer) > 1:
            raise DissectError("--features holds one layer: give at most one --layer")
        if args.weights is not None:
            raise DissectError("--weights goes with --model, not --features")
        features = _load_features(args.features)
        layer = args.layer[0] if args.layer else args.features.stem
        try:
            source, shapes = features_source(features, args.layout, layer)
        except DissectError as error:
            raise DissectError(f"{args.features}: {error}") from None
        if features.shape[0] != dataset.num_images:
            raise DissectError(
                f"{args.features}: {features.shape[0]} rows of activations but "
                f"{args.dataset / 'index.csv'} lists {dataset.num_images} images"
            )
        extra = {"features": str(args.features)}
    else:
        if not args.layer:
            raise DissectError("--model needs at least one --layer")
        model = load_model(args.model, args.weights)
        layers = model.check_layers(args.layer)
        images = load_image_array(dataset, args.cache, progress)
        source, shapes = model_source(model, images, layers, config.batch_size)
        extra = {"model": args.model, "weights": str(args.weights) if args.weights else None}
    labels = load_label_arrays(dataset, args.cache, progress)
    checkpoints = None
    if args.coordinator is None:  # one process: resumable
        from jaxdissect.checkpoint import PassCheckpoints
        from jaxdissect.data.cache import cache_key

        fingerprint = {
            "config": dataclasses.asdict(config),
            "dataset": cache_key(dataset),
            "shapes": shapes,
            "devices": len(jax.devices()),
            "extra": extra,
            "features": _file_stamp(args.features),
            "weights": _file_stamp(args.weights),
        }
        checkpoints = PassCheckpoints(args.out / ".checkpoint", fingerprint, args.checkpoint_every)
    dissections = dissect_activations(
        source, dataset.num_images, shapes, dataset, labels, config, progress, checkpoints
    )
    if not writer:  # process 0 writes; the others only computed their share
        return 0
    images = None if args.no_report else load_image_array(dataset, args.cache, progress)
    for layer, dissection in dissections.items():
        # One layer writes OUT/; several write OUT/<layer>/.
        out = args.out if len(dissections) == 1 else args.out / layer
        results = write_dissection(out, dissection, dataset, config, extra)
        print(f"layer {layer}:")
        print(format_summary(dissection.summary))
        print(f"wrote {out / 'tally.csv'} and {results}")
        if images is not None:
            print(f"report: {write_layer_report(out, images)}")
    if len(dissections) > 1 and images is not None:
        print(f"index: {write_index(args.out, list(dissections))}")
    if checkpoints is not None:
        checkpoints.remove()
    print(peak_memory())
    return 0


def _file_stamp(path: Path | None):
    """Identifies an input file's version (for resuming only with the same inputs)."""
    if path is None or not path.is_file():
        return None
    stat = path.stat()
    return [str(path.absolute()), stat.st_size, stat.st_mtime_ns]


def peak_memory() -> str:
    """The process's peak resident memory, and each device's peak where JAX reports it."""
    import resource

    import jax

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    parts = [f"peak memory: host {host:.2f} GiB"]
    for device in jax.local_devices():
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            parts.append(
                f"{device.platform}:{device.id} {stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
            )
    return ", ".join(parts)


def run_report(args: argparse.Namespace) -> int:
    import json

    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_image_array
    from jaxdissect.report import write_index, write_layer_report

    folders = (
        [args.out]
        if (args.out / "results.json").is_file()
        else sorted(p.parent for p in args.out.glob("*/results.json"))
    )
    if not folders:
        raise DissectError(f"{args.out}: no results.json here or in its subfolders")
    for folder in folders:
        results = json.loads((folder / "results.json").read_text())
        try:
            dataset = open_broden(results["dataset"], results["categories"])
            images = load_image_array(dataset, args.cache, progress=False)
        except DissectError as error:
            print(
                f"jaxdissect: warning: drawing {folder}'s cards without images ({error})",
                file=sys.stderr,
            )
            images = None
        print(f"report: {write_layer_report(folder, images)}")
    if len(folders) > 1 or folders[0] != args.out:
        print(f"index: {write_index(args.out, [f.name for f in folders])}")
    return 0


def start_processes(args: argparse.Namespace) -> bool:
    """Joins a jax.distributed run when --coordinator is given; True for the process that
    writes the outputs (process 0, or the only one)."""
    if args.coordinator is None:
        return True
    if args.num_processes is None or args.process_id is None:
        raise DissectError("--coordinator needs --num-processes and --process-id")
    if not 0 <= args.process_id < args.num_processes:
        raise DissectError(
            f"--process-id must lie in [0, {args.num_processes}), got {args.process_id}"
        )
    import jax

    # CPU devices reduce across processes through gloo; accelerators use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    return jax.process_index() == 0


def load_model(spec: str, weights: Path | None):
    """A FeatureModel from ``zoo:NAME`` or ``package.module:factory``."""
    import importlib

    from jaxdissect.features import FeatureModel

    if spec.startswith("zoo:"):
        from jaxdissect import zoo

        return zoo.feature_model(spec[len("zoo:") :], weights)
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise DissectError(f"--model {spec!r}: expected zoo:NAME or package.module:factory")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as error:
        raise DissectError(f"--model {spec!r}: cannot import it ({error})") from None
    model = factory(weights)
    if not isinstance(model, FeatureModel):
        raise DissectError(
            f"--model {spec!r}: the factory returned {type(model).__name__}, not a "
            "jaxdissect.features.FeatureModel (wrap your model with from_nnx, from_linen or "
            "from_function)"
        )
    return model


def model_source(model, images, layers, batch_size):
    """An ActivationSource over ``images`` and the layers' (h, w, U) shapes."""
    import jax.numpy as jnp

    from jaxdissect.features import model_activations

    probe = model.apply(jnp.asarray(np.asarray(images[:1])), layers)
    shapes = {}
    for layer, value in probe.items():
        if value.ndim != 4:
            raise DissectError(
                f"layer {layer!r} of {model.name!r} has shape {tuple(value.shape)}; dissection "
                "needs (B, h, w, U) maps"
            )
        shapes[layer] = tuple(value.shape[1:])
    return model_activations(model, images, layers, batch_size), shapes


def run_features(args: argparse.Namespace) -> int:
    from jaxdissect.results import atomic_path

    images = _load_features(args.images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DissectError(
            f"{args.images}: expected uint8 RGB images of shape (N, H, W, 3), got "
            f"{images.dtype} {images.shape}"
        )
    model = load_model(args.model, args.weights)
    layers = model.check_layers([args.layer])
    batches = []
    for start in range(0, len(images), args.batch_size):
        batch = np.asarray(images[start : start + args.batch_size])
        batches.append(np.asarray(model.apply(batch, layers)[args.layer]))
    output = np.concatenate(batches)
    with atomic_path(args.out) as temporary:
        with open(temporary, "wb") as f:
            np.save(f, output)
    print(f"wrote {args.out}: {args.layer} activations of shape {output.shape}")
    return 0


def run_summarize(args: argparse.Namespace) -> int:
    import json

    from jaxdissect.results import format_summary, summarize_tally_csv

    summary = summarize_tally_csv(args.tally, args.iou_threshold)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "dissect": run_dissect,
        "summarize": run_summarize,
        "synthetic": run_synthetic,
        "demo": run_demo,
        "features": run_features,
        "report": run_report,
    }
    try:
        return handlers[args.command](args)
    except DissectError as error:
        print(f"jaxdissect: error: {error}", file=sys.stderr)
        return 2
