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
    dissect.add_argument(
        "--features",
        required=True,
        type=Path,
        help="activations .npy, one row per index.csv row, (N, h, w, U) unless --layout nchw",
    )
    dissect.add_argument("--out", required=True, type=Path, help="output folder")
    dissect.add_argument("--layer", default=None, help="layer name for the outputs")
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
        "--cache",
        type=Path,
        default=None,
        help="decoded-label cache (default: $JAXDISSECT_CACHE or ~/.cache/jaxdissect)",
    )
    dissect.add_argument("--no-progress", action="store_true", help="hide progress bars")

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


def _load_features(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DissectError(f"{path}: features file not found")
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise DissectError(f"{path}: not a NumPy .npy array ({error})") from None
    if not isinstance(features, np.ndarray) or features.dtype.kind not in "fiu":
        raise DissectError(f"{path}: features must be a numeric .npy array")
    return features


def run_dissect(args: argparse.Namespace) -> int:
    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_label_arrays
    from jaxdissect.dissect import DissectConfig, dissect_activations, features_source
    from jaxdissect.results import format_summary, write_dissection

    progress = not args.no_progress
    dataset = open_broden(args.dataset, args.categories)
    features = _load_features(args.features)
    try:
        source, shape = features_source(features, args.layout)
    except DissectError as error:
        raise DissectError(f"{args.features}: {error}") from None
    if features.shape[0] != dataset.num_images:
        raise DissectError(
            f"{args.features}: {features.shape[0]} rows of activations but "
            f"{args.dataset / 'index.csv'} lists {dataset.num_images} images"
        )
    labels = load_label_arrays(dataset, args.cache, progress)
    config = DissectConfig(
        quantile=args.quantile,
        iou_threshold=args.iou_threshold,
        union=args.union,
        batch_size=args.batch_size,
    )
    layer = args.layer or args.features.stem
    dissection = dissect_activations(
        source, features.shape[0], shape, dataset, labels, config, layer, progress
    )
    results = write_dissection(
        args.out, dissection, dataset, config, {"features": str(args.features)}
    )
    print(format_summary(dissection.summary))
    print(f"wrote {args.out / 'tally.csv'} and {results}")
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
    }
    try:
        return handlers[args.command](args)
    except DissectError as error:
        print(f"jaxdissect: error: {error}", file=sys.stderr)
        return 2
