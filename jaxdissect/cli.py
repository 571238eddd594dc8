"""Command line: ``python -m jaxdissect {dissect,features,formulas,directions,report,summarize,
synthetic,demo,fetch,precompile} ...`` (also ``jaxdissect``). Argument parsing and printing
only: the work is the library's
(``pipeline.dissect`` for ``dissect``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from jaxdissect.config import KERNELS, UNIONS
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


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


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
        help="zoo:NAME (alexnet, vgg16, resnet18, resnet50, resnet20-cifar10, vit_b_16, vit_s_16) or "
        "package.module:factory (factory(weights) returns a jaxdissect.models.features.FeatureModel)",
    )
    dissect.add_argument(
        "--weights",
        type=Path,
        action="append",
        default=None,
        help="PyTorch checkpoint for --model (default: random init); repeat it to dissect "
        "several checkpoints of the model in one pass, each into OUT/<file name>/",
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
        choices=UNIONS,
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
        choices=KERNELS,
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
        type=_non_negative_int,
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
    distributed.add_argument("--process-id", type=_non_negative_int, default=None)

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
    probe.add_argument("--seed", type=_non_negative_int, default=0)
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
    figure.add_argument("--seed", type=_non_negative_int, default=0)
    figure.add_argument("--rows", type=_positive_int, default=4)
    figure.add_argument("--size", type=_positive_int, default=128)
    formulas = commands.add_parser(
        "formulas",
        help="the best logical formula of concepts (AND, OR, AND NOT) for every unit",
        description="Explain each unit of one layer by a formula of concepts (Mu & Andreas "
        "2020): beam search, or with --exact the proved optimum. Writes OUT/formulas.csv "
        "(unit,formula,iou,length,certified,bound), OUT/formulas.json and OUT/formulas.html.",
    )
    formulas.add_argument("--dataset", required=True, type=Path, help="Broden-format folder")
    formulas_source = formulas.add_mutually_exclusive_group(required=True)
    formulas_source.add_argument("--features", type=Path, help="activations .npy (N, h, w, U)")
    formulas_source.add_argument("--model", help="as for dissect")
    formulas.add_argument("--weights", type=Path, default=None, help="as for dissect")
    formulas.add_argument("--layer", default=None, help="the layer (required with --model)")
    formulas.add_argument("--out", required=True, type=Path, help="output folder")
    formulas.add_argument("--length", type=_positive_int, default=3, help="longest formula")
    formulas.add_argument("--beam", type=_positive_int, default=10, help="beam width")
    formulas.add_argument(
        "--exact", action="store_true", help="prove the optimum (branch and bound)"
    )
    formulas.add_argument(
        "--labels-per-unit",
        type=_positive_int,
        default=40,
        help="candidate concepts per unit: its best single labels by IoU (default 40)",
    )
    formulas.add_argument("--quantile", type=_fraction(True), default=0.005)
    formulas.add_argument("--categories", type=_categories, default=None)
    formulas.add_argument("--batch-size", type=_positive_int, default=64)
    formulas.add_argument(
        "--kernel",
        choices=KERNELS,
        default="auto",
        help="how masks are counted, as for dissect: cpu (compiled loops), xla (sharded over "
        "all devices) or auto (default)",
    )
    formulas.add_argument("--cache", type=Path, default=None)
    formulas.add_argument("--no-report", action="store_true", help="skip formulas.html")
    formulas.add_argument("--no-progress", action="store_true")
    from jaxdissect.data.fetch import SOURCES, describe

    fetch = commands.add_parser(
        "fetch",
        help="download Broden or a model safely (resumable, verified, safe extraction)",
        description="Download NAME into DIR, as NetDissect-Lite's scripts do, resuming an "
        "interrupted transfer and checking size and SHA-256; a zip is extracted safely into "
        "DIR/NAME. Names:\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("name", choices=list(SOURCES), metavar="NAME")
    fetch.add_argument("--dir", required=True, type=Path, help="where to put it")
    origin = fetch.add_mutually_exclusive_group()
    origin.add_argument("--url", default=None, help="another URL for the same file (a mirror)")
    origin.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        default=None,
        help="a file you already have, used instead of downloading (offline)",
    )
    fetch.add_argument(
        "--keep-archive", action="store_true", help="keep the downloaded zip after extracting"
    )
    fetch.add_argument(
        "--retries", type=_non_negative_int, default=5, help="retries of a broken transfer"
    )
    fetch.add_argument("--no-progress", action="store_true")
    commands.add_parser(
        "precompile",
        help="compile and cache the CPU kernels now (for images and shared installs)",
        description="Compile the Numba CPU kernels a dissection uses and cache them, so that "
        "the first dissection does not (about 35 s on 2 cores).",
    )
    directions = commands.add_parser(
        "directions",
        help="per concept, a learned linear combination of the units (Net2Vec) against the "
        "best single unit",
        description="Train, for every concept with enough pixels, a direction in the space "
        "of one layer's units (weights and a bias, Net2Vec's class-balanced sigmoid loss, "
        "Adam) on the probe's train images, choose its threshold there, and score it on "
        "held-out images beside the best single unit at the dissection's threshold. Writes "
        "OUT/directions.csv (label,category,iou_direction,iou_best_unit,best_unit,...), "
        "OUT/directions.npz (the weights by label), OUT/directions.json and "
        "OUT/directions.html.",
    )
    directions.add_argument("--dataset", required=True, type=Path, help="Broden-format folder")
    directions_source = directions.add_mutually_exclusive_group(required=True)
    directions_source.add_argument("--features", type=Path, help="activations .npy (N, h, w, U)")
    directions_source.add_argument("--model", help="as for dissect")
    directions.add_argument("--weights", type=Path, default=None, help="as for dissect")
    directions.add_argument("--layer", default=None, help="the layer (required with --model)")
    directions.add_argument("--layout", choices=("nhwc", "nchw"), default="nhwc")
    directions.add_argument("--out", required=True, type=Path, help="output folder")
    directions.add_argument(
        "--heldout",
        type=_fraction(True),
        default=0.3,
        help="share of the images held out for scoring (default 0.3)",
    )
    directions.add_argument(
        "--seed", type=_non_negative_int, default=0, help="fixes the split and the data order"
    )
    directions.add_argument(
        "--min-pixels",
        type=_positive_int,
        default=200,
        help="train a concept covering at least this many label pixels on each side of the "
        "split (default 200)",
    )
    directions.add_argument("--epochs", type=_positive_int, default=10)
    directions.add_argument(
        "--step-images", type=_positive_int, default=32, help="images per optimiser step"
    )
    directions.add_argument("--learning-rate", type=float, default=0.02, help="Adam's step size")
    directions.add_argument(
        "--quantile",
        type=_fraction(True),
        default=0.005,
        help="the units' thresholds, as for dissect (default 0.005)",
    )
    directions.add_argument("--categories", type=_categories, default=None)
    directions.add_argument("--batch-size", type=_positive_int, default=32)
    directions.add_argument(
        "--kernel",
        choices=KERNELS,
        default="auto",
        help="how the units' thresholds and counts run, as for dissect",
    )
    directions.add_argument("--cache", type=Path, default=None)
    directions.add_argument("--no-report", action="store_true", help="skip directions.html")
    directions.add_argument("--no-progress", action="store_true")
    demo = commands.add_parser(
        "demo",
        help="a quick look: dissect a layer of known units on the synthetic world (about 10 s)",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--images", type=_positive_int, default=600)
    demo.add_argument("--seed", type=_non_negative_int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    return parser


def run_fetch(args: argparse.Namespace) -> int:
    from jaxdissect.data.fetch import MANIFEST, fetch

    fetched = fetch(
        args.name,
        args.dir,
        url=args.url,
        from_file=args.from_file,
        keep_archive=args.keep_archive,
        retries=args.retries,
        progress=not args.no_progress,
    )
    if fetched.already:
        print(f"{fetched.path}: already there")
        return 0
    print(f"{args.name}: {fetched.path} ({fetched.seconds:.1f} s)")
    if fetched.recorded:
        print(
            f"SHA-256 {fetched.sha256} recorded in {args.dir / MANIFEST}: later fetches must match"
        )
    return 0


def run_precompile(args: argparse.Namespace) -> int:
    from jaxdissect.precompile import main as precompile_main

    precompile_main()
    return 0


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
        from jaxdissect.data.synthetic.figure import MAX_ROWS, save_world_figure

        if args.rows > MAX_ROWS:
            raise DissectError(f"--rows {args.rows}: at most {MAX_ROWS} rows fit one figure")
        print(f"wrote {save_world_figure(args.out, args.seed, args.rows, config)}")
    return 0


def _dissect_checkpoints(args: argparse.Namespace, config, dataset, progress: bool) -> int:
    """``dissect --model M --weights A --weights B ...``: every checkpoint in one pass."""
    from jaxdissect import runtime
    from jaxdissect.many import checkpoint_names
    from jaxdissect.pipeline import dissect
    from jaxdissect.report.results import format_summary
    from jaxdissect.sources import load_model

    models = [load_model(args.model, weights) for weights in args.weights]
    names = checkpoint_names(args.weights, models)
    found = dissect(
        dataset,
        models,
        config,
        args.out,
        layers=args.layer,
        weights=args.weights,
        cache=args.cache,
        report=not args.no_report,
        checkpoint_every=args.checkpoint_every,
        progress=progress,
    )
    if runtime.process_index() != 0:
        return 0
    for name in names:
        if name not in found:
            print(f"{name}: already dissected in {args.out / name} (reused)")
            continue
        for layer, dissection in found[name].items():
            print(f"{name} layer {layer}:")
            print(format_summary(dissection.summary))
        print(f"wrote {args.out / name}")
    print(peak_memory())
    return 0


def run_dissect(args: argparse.Namespace) -> int:
    from jaxdissect.config import DissectConfig
    from jaxdissect.data.broden import open_broden
    from jaxdissect.pipeline import dissect
    from jaxdissect.report.results import format_summary
    from jaxdissect.sources import features_activations, load_model

    writer = start_processes(args)
    progress = not args.no_progress and writer
    try:
        config = DissectConfig(
            quantile=args.quantile,
            iou_threshold=args.iou_threshold,
            union=args.union,
            batch_size=args.batch_size,
            top_images=args.top_images,
            kernel=args.kernel,
        )
    except ValueError as error:
        raise DissectError(str(error)) from None
    if args.features is not None:
        if args.layer and len(args.layer) > 1:
            raise DissectError("--features holds one layer: give at most one --layer")
        if args.weights is not None:
            raise DissectError("--weights goes with --model, not --features")
        source = features_activations(
            args.features, args.layout, args.layer[0] if args.layer else None
        )
    else:
        if not args.layer:
            raise DissectError("--model needs at least one --layer")
        missing = [w for w in args.weights or [] if not w.is_file()]
        if missing:
            raise DissectError(f"{missing[0]}: weights file not found")
    dataset = open_broden(args.dataset, args.categories)
    announce_compile(config)
    if args.features is None:
        if args.weights and len(args.weights) > 1:
            return _dissect_checkpoints(args, config, dataset, progress)
        source = load_model(args.model, args.weights[0] if args.weights else None)
    dissections = dissect(
        dataset,
        source,
        config,
        args.out,
        layers=args.layer,
        weights=args.weights[0] if args.weights else None,
        cache=args.cache,
        report=not args.no_report,
        checkpoint_every=args.checkpoint_every,
        progress=progress,
    )
    from jaxdissect import runtime

    if runtime.process_index() != 0:
        return 0
    for layer, dissection in dissections.items():
        out = args.out if len(dissections) == 1 else args.out / layer
        print(f"layer {layer}:")
        print(format_summary(dissection.summary))
        print(f"wrote {out / 'tally.csv'} and {out / 'results.json'}")
        if not args.no_report:
            print(f"report: {out / 'report.html'}")
    if len(dissections) > 1 and not args.no_report:
        print(f"index: {args.out / 'index.html'}")
    print(peak_memory())
    return 0


def announce_compile(config) -> None:
    """Compiles the CPU kernels first, saying so on the first line, when a CPU dissection
    would otherwise compile them silently in its first batch."""
    from jaxdissect.kernels import kernel_name
    from jaxdissect.precompile import announce_and_compile, kernels_cached

    cpu = kernel_name(config) == "cpu"  # a DissectError for a bad combination
    if cpu and not kernels_cached():
        announce_and_compile(sys.stderr)


def peak_memory() -> str:
    """The process's peak resident memory, and each device's peak where JAX reports it."""
    import resource

    from jaxdissect import runtime

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    parts = [f"peak memory: host {host:.2f} GiB"]
    # Without JAX imported, no device was used.
    for device in runtime.jax.local_devices() if runtime.loaded() else []:
        stats = device.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            parts.append(
                f"{device.platform}:{device.id} {stats['peak_bytes_in_use'] / 2**30:.2f} GiB"
            )
    return ", ".join(parts)


def run_formulas(args: argparse.Namespace) -> int:
    from jaxdissect.compositional.explain import explain
    from jaxdissect.config import DissectConfig
    from jaxdissect.data.broden import open_broden
    from jaxdissect.sources import load_model

    if args.features is not None and args.weights is not None:
        raise DissectError("--weights goes with --model, not --features")
    source = args.features if args.features is not None else load_model(args.model, args.weights)
    explanations = explain(
        open_broden(args.dataset, args.categories),
        source,
        DissectConfig(quantile=args.quantile, batch_size=args.batch_size, kernel=args.kernel),
        args.out,
        layer=args.layer,
        weights=args.weights,
        length=args.length,
        beam=args.beam,
        exact=args.exact,
        labels_per_unit=args.labels_per_unit,
        cache=args.cache,
        report=not args.no_report,
        progress=not args.no_progress,
    )
    result = explanations.result
    print(
        f"layer {explanations.layer}: {len(result.iou)} units, mean IoU {result.iou.mean():.4f}"
        + (f", {int(result.certified.sum())} proved optimal" if args.exact else "")
    )
    print(f"wrote {args.out / 'formulas.csv'} and {args.out / 'formulas.json'}")
    return 0


def run_directions(args: argparse.Namespace) -> int:
    from jaxdissect.compositional.directions import DirectionConfig, directions
    from jaxdissect.config import DissectConfig
    from jaxdissect.data.broden import open_broden
    from jaxdissect.sources import features_activations, load_model

    if args.features is not None and args.weights is not None:
        raise DissectError("--weights goes with --model, not --features")
    try:
        settings = DirectionConfig(
            heldout=args.heldout,
            seed=args.seed,
            min_pixels=args.min_pixels,
            epochs=args.epochs,
            batch_size=args.step_images,
            learning_rate=args.learning_rate,
        )
    except ValueError as error:
        raise DissectError(str(error)) from None
    if args.features is not None:
        source = features_activations(args.features, args.layout, args.layer)
    else:
        source = load_model(args.model, args.weights)
    found = directions(
        open_broden(args.dataset, args.categories),
        source,
        DissectConfig(quantile=args.quantile, batch_size=args.batch_size, kernel=args.kernel),
        args.out,
        layer=args.layer,
        weights=args.weights,
        settings=settings,
        cache=args.cache,
        report=not args.no_report,
        progress=not args.no_progress,
    )
    rows = found.rows
    beats = sum(r["iou_direction"] >= r["iou_best_unit"] + 0.05 for r in rows)
    print(
        f"layer {found.layer}: {len(rows)} concepts, mean held-out IoU "
        f"{np.mean([r['iou_direction'] for r in rows]):.4f} (directions) against "
        f"{np.mean([r['iou_best_unit'] for r in rows]):.4f} (best units); {beats} directions "
        "beat their best unit by at least 0.05"
    )
    print(f"wrote {args.out / 'directions.csv'} and {args.out / 'directions.npz'}")
    if not args.no_report:
        print(f"report: {args.out / 'directions.html'}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_image_array
    from jaxdissect.report.html import write_index
    from jaxdissect.report.schema import check_same_probe, read_results

    folders = (
        [args.out]
        if (args.out / "results.json").is_file()
        else sorted(p.parent for p in args.out.glob("*/results.json"))
    )
    if not folders:
        raise DissectError(f"{args.out}: no results.json here or in its subfolders")
    sets: dict[Path, list[str | None]] = {}
    for folder in folders:
        root, layer = _set_of(folder, args.out)
        sets.setdefault(root, []).append(layer)

    def images_for(folder: Path):
        results = read_results(folder)
        try:
            dataset = open_broden(results["dataset"], results["categories"])
            check_same_probe(results, dataset)
            return load_image_array(dataset, args.cache, progress=False)
        except DissectError as error:
            print(
                f"jaxdissect: warning: drawing {folder}'s cards without images ({error})",
                file=sys.stderr,
            )
            return None

    for root, layers in sets.items():
        for page in _republish_reports(root, layers, images_for):
            print(f"{'index' if page.name == 'index.html' else 'report'}: {page}")
    if args.out not in sets:  # separate OUTs in one folder
        print(f"index: {write_index(args.out, [f.name for f in folders])}")
    return 0


def _set_of(folder: Path, top: Path) -> tuple[Path, str | None]:
    """(the OUT whose set holds ``folder``'s results, the layer folder's name in it or None)."""
    from jaxdissect.outdir import STORE

    if folder.is_symlink() and os.readlink(folder).startswith(f"{STORE}/"):
        return folder.parent, folder.name  # a layer of the parent's set
    if folder == top or (folder / ".lock").exists() or (folder / STORE).exists():
        return folder, None  # an OUT of its own
    return folder.parent, folder.name  # a layer folder an earlier version wrote


def _republish_reports(root: Path, layers: list[str | None], images_for) -> list[Path]:
    """Publishes OUT ``root``'s set anew with fresh reports of ``layers`` (None: OUT's one
    layer): its other files are carried over, by hard link where the system allows."""
    import shutil

    from jaxdissect.driver import FINGERPRINT
    from jaxdissect.outdir import MANIFEST, current_set, discard, locked, new_set, publish
    from jaxdissect.report.html import write_index, write_layer_report

    redrawn = {f"{layer}/" if layer else "" for layer in layers}
    with locked(root):
        current = current_set(root, "dissect")
        if current is not None:
            manifest = json.loads((current / MANIFEST).read_text())["files"]
            carried = [
                name
                for name in manifest
                if name != "index.html"
                and not any(
                    name in (f"{prefix}report.html",) or name.startswith(f"{prefix}report/")
                    for prefix in redrawn
                )
            ]
            source = current
        else:  # plain files of an earlier version
            data = ("results.json", "tally.csv", "counts.npz", FINGERPRINT)
            carried = [
                f"{prefix}{name}"
                for prefix in sorted(redrawn)
                for name in data
                if (root / f"{prefix}{name}").is_file()
            ]
            source = root
        folder = new_set(root, "dissect")
        try:
            for name in carried:
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source / name, target)
                except OSError:
                    shutil.copy2(source / name, target)
            pages = []
            for layer in layers:
                layer_folder = folder / layer if layer else folder
                write_layer_report(layer_folder, images_for(layer_folder))
                pages.append(root / layer / "report.html" if layer else root / "report.html")
            named = sorted({name.split("/")[0] for name in carried if "/" in name})
            named = [n for n in named if (folder / n / "results.json").is_file()]
            if named and not (folder / "results.json").exists():
                write_index(folder, named)
                pages.append(root / "index.html")
        except BaseException:
            discard(folder)
            raise
        publish(folder, root)
    return pages


JOIN_TIMEOUT_S = 300  # how long a process waits for process 0's coordinator to listen


def _wait_for_coordinator(host: str, port: int, args: argparse.Namespace) -> None:
    """Waits, saying so, until process 0 listens at --coordinator. JAX's own wait ends in an
    abort with a C++ stack trace, and says nothing while it waits."""
    import socket
    import time

    print(
        f"jaxdissect: process {args.process_id} of {args.num_processes}: waiting up to "
        f"{JOIN_TIMEOUT_S} s for process 0 at {args.coordinator}",
        file=sys.stderr,
    )
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise DissectError(
                    f"--coordinator {args.coordinator}: process 0 did not listen within "
                    f"{JOIN_TIMEOUT_S} s (is it running, and is the address right?)"
                ) from None
            time.sleep(0.5)


def start_processes(args: argparse.Namespace) -> bool:
    """Joins a jax.distributed run when --coordinator is given; True for the process that
    writes the outputs (process 0, or the only one)."""
    if args.coordinator is None:
        if args.num_processes is not None or args.process_id is not None:
            raise DissectError("--num-processes and --process-id go with --coordinator")
        return True
    if args.num_processes is None or args.process_id is None:
        raise DissectError("--coordinator needs --num-processes and --process-id")
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DissectError(
            f"--coordinator {args.coordinator!r}: expected host:port, a port in [1, 65535]"
        )
    if not 0 <= args.process_id < args.num_processes:
        raise DissectError(
            f"--process-id must lie in [0, {args.num_processes}), got {args.process_id}"
        )
    import jax

    # CPU devices reduce across processes through gloo; accelerators use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.process_id != 0:
        _wait_for_coordinator(host, int(port), args)
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    return jax.process_index() == 0


def run_features(args: argparse.Namespace) -> int:
    from jaxdissect.report.results import atomic_path
    from jaxdissect.sources import load_model, open_features

    images = open_features(args.images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DissectError(
            f"{args.images}: expected uint8 RGB images of shape (N, H, W, 3), got "
            f"{images.dtype} {images.shape}"
        )
    if len(images) == 0:
        raise DissectError(f"{args.images}: holds no images (shape {images.shape})")
    model = load_model(args.model, args.weights)
    layers = model.check_layers([args.layer])
    batches = []
    for start in range(0, len(images), args.batch_size):
        batch = np.asarray(images[start : start + args.batch_size])
        batches.append(np.asarray(model.apply(batch, layers)[args.layer]))
    output = np.concatenate(batches)
    if output.dtype.kind == "f" and not np.isfinite(output).all():
        bad = int(np.flatnonzero((~np.isfinite(output.reshape(len(output), -1))).any(1))[0])
        raise DissectError(
            f"{args.model} layer {args.layer}: NaN or inf activations (first in image {bad}); "
            "nothing written"
        )
    with atomic_path(args.out) as temporary:
        with open(temporary, "wb") as f:
            np.save(f, output)
    print(f"wrote {args.out}: {args.layer} activations of shape {output.shape}")
    return 0


def run_summarize(args: argparse.Namespace) -> int:
    import json

    from jaxdissect.report.results import format_summary, summarize_tally_csv

    summary = summarize_tally_csv(args.tally, args.iou_threshold)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def _compilation_cache(args: argparse.Namespace) -> None:
    """JAX's persistent compilation cache under the project's cache folder, so that a second
    run of the same model compiles nothing; set before JAX is imported (it reads the
    variable then), unless the user's environment names a folder already."""
    from jaxdissect.data.cache import default_cache_root

    root = getattr(args, "cache", None) or default_cache_root()
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(root) / "xla"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _compilation_cache(args)
    handlers = {
        "dissect": run_dissect,
        "summarize": run_summarize,
        "synthetic": run_synthetic,
        "demo": run_demo,
        "features": run_features,
        "report": run_report,
        "formulas": run_formulas,
        "fetch": run_fetch,
        "precompile": run_precompile,
        "directions": run_directions,
    }
    try:
        return handlers[args.command](args)
    except DissectError as error:
        print(f"jaxdissect: error: {error.for_cli()}", file=sys.stderr)
        return 2
    except MemoryError:
        print(
            f"jaxdissect: error: {args.command}: out of memory (lower the sizes or batch size)",
            file=sys.stderr,
        )
        return 2
    except OSError as error:  # a full disk, a read-only folder, a file where a folder goes
        where = f"{error.filename}: " if error.filename else ""
        print(f"jaxdissect: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
