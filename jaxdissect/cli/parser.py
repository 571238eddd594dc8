"""The command line's grammar: every subcommand's options. An option that several commands
take is declared once, in a parent parser, with one default."""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxdissect.config import KERNELS, UNIONS


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


class _Once(argparse.Action):
    """Stores a flag's value, refusing the flag given twice: formulas and directions took
    the last of two --layer (or --weights) in silence, as if both had been run."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            raise argparse.ArgumentError(self, "given twice; this command takes one")
        setattr(namespace, self.dest, values)


def _nonempty_path(text: str) -> Path:
    """Where a command writes (--out, --cache, --dir), or fetch's --from: not the empty
    string, which a Path reads as the current folder."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path (it would mean the current folder)")
    return Path(text)


def _categories(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one category name")
    return names


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


class _Parents:
    """The options several commands share, each declared once with its one default."""

    def __init__(self):
        self.progress = _parent()
        self.progress.add_argument("--no-progress", action="store_true", help="hide progress bars")
        self.seed = _parent()
        self.seed.add_argument("--seed", type=_non_negative_int, default=0, help="random seed")
        self.batch = _parent()
        self.batch.add_argument(
            "--batch-size", type=_positive_int, default=32, help="images per batch (default 32)"
        )
        self.cache = _parent()
        self.cache.add_argument(
            "--cache",
            type=_nonempty_path,
            default=None,
            help="decoded-label cache (default: $JAXDISSECT_CACHE or ~/.cache/jaxdissect)",
        )
        self.iou_threshold = _parent()
        self.iou_threshold.add_argument(
            "--iou-threshold",
            type=_fraction(False),
            default=0.04,
            help="detector when IoU is above this (default 0.04)",
        )
        self.probe = self._probe()
        self.one_layer = _parent()
        self.one_layer.add_argument(
            "--weights", type=Path, default=None, action=_Once, help="as for dissect"
        )
        self.one_layer.add_argument(
            "--layer", default=None, action=_Once, help="the layer (required with --model)"
        )
        self.distributed = self._distributed()
        self.layout = _parent()
        self.layout.add_argument(
            "--layout",
            choices=("nhwc", "nchw"),
            default="nhwc",
            help="axis order of --features: (N, h, w, U) or (N, U, h, w) (default nhwc)",
        )

    def _probe(self) -> argparse.ArgumentParser:
        """A pass over a probe set: the dataset, where activations come from, and how the
        units' thresholds and counts run."""
        probe = _parent()
        probe.add_argument("--dataset", required=True, type=Path, help="Broden-format folder")
        source = probe.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--features",
            type=Path,
            help="activations .npy, one row per index.csv row, (N, h, w, U) unless --layout nchw",
        )
        source.add_argument(
            "--model",
            help="zoo:NAME (alexnet, vgg16, resnet18, resnet50, resnet20-cifar10, vit_b_16, "
            "vit_s_16) or package.module:factory (factory(weights) returns a "
            "jaxdissect.models.features.FeatureModel)",
        )
        probe.add_argument("--out", required=True, type=_nonempty_path, help="output folder")
        probe.add_argument(
            "--quantile",
            type=_fraction(True),
            default=0.005,
            help="fraction of activations above each unit's threshold (default 0.005)",
        )
        probe.add_argument(
            "--categories",
            type=_categories,
            default=None,
            help="comma-separated subset (default: all in category.csv)",
        )
        probe.add_argument(
            "--kernel",
            choices=KERNELS,
            default="auto",
            help="cpu: compiled sparse loops on the CPU cores; xla: jitted and sharded over all "
            "devices; auto (default): cpu when JAX runs on the CPU in one process",
        )
        probe.add_argument("--no-report", action="store_true", help="skip the HTML report")
        return probe

    def _distributed(self) -> argparse.ArgumentParser:
        """Joining a jax.distributed run: every process computes, process 0 writes."""
        distributed = _parent()
        group = distributed.add_argument_group(
            "several processes (jax.distributed): start one per host with the same arguments"
        )
        group.add_argument("--coordinator", default=None, help="host:port of process 0")
        group.add_argument("--num-processes", type=_positive_int, default=None)
        group.add_argument("--process-id", type=_non_negative_int, default=None)
        return distributed

    def pass_over_probe(self) -> list[argparse.ArgumentParser]:
        """A pass over the probe, in one process or several."""
        return [self.probe, self.batch, self.cache, self.progress, self.distributed]


def build_parser() -> argparse.ArgumentParser:
    from jaxdissect import __version__

    parser = argparse.ArgumentParser(prog="jaxdissect", description="Network Dissection in JAX.")
    parser.add_argument("--version", action="version", version=f"jaxdissect {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = _Parents()
    for add in (
        _add_dissect,
        _add_features,
        _add_report,
        _add_summarize,
        _add_synthetic,
        _add_formulas,
        _add_fetch,
        _add_precompile,
        _add_directions,
        _add_demo,
    ):
        add(commands, parents)
    return parser


def _add_dissect(commands, parents: _Parents) -> None:
    dissect = commands.add_parser(
        "dissect",
        parents=[*parents.pass_over_probe(), parents.layout, parents.iou_threshold],
        help="label every unit of a layer with the concept it detects",
        description="Dissect a layer's activations on a Broden-format probe set.",
    )
    dissect.add_argument(
        "--weights",
        type=Path,
        action="append",
        default=None,
        help="PyTorch checkpoint for --model (default: random init); repeat it to dissect "
        "several checkpoints of the model in one pass, each into OUT/<file name>/",
    )
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


def _add_features(commands, parents: _Parents) -> None:
    features = commands.add_parser(
        "features",
        parents=[parents.batch],
        help="write one layer's activations for an array of images",
        description="Run a model over uint8 RGB images (N, H, W, 3) and save a layer's "
        "activations (N, h, w, U), or the classifier output for --layer logits.",
    )
    features.add_argument("--model", required=True, help="as for dissect")
    features.add_argument("--weights", type=Path, default=None, action=_Once)
    features.add_argument("--layer", required=True, action=_Once)
    features.add_argument("--images", required=True, type=Path, help="uint8 (N, H, W, 3) .npy")
    features.add_argument("--out", required=True, type=_nonempty_path, help="output .npy")


def _add_report(commands, parents: _Parents) -> None:
    report = commands.add_parser(
        "report",
        parents=[parents.cache],
        help="(re)build the HTML report of a finished dissection",
        description="Rebuild OUT/report.html (and OUT/index.html for several layers) from "
        "OUT's results.json and counts.npz; the probe images come from the dataset named there.",
    )
    report.add_argument("out", type=_nonempty_path, help="a dissect --out folder")


def _add_summarize(commands, parents: _Parents) -> None:
    summarize = commands.add_parser(
        "summarize",
        parents=[parents.iou_threshold],
        help="detectors and unique detectors of a tally.csv",
        description="Count detectors and unique detectors (top-label and per-category rules).",
    )
    summarize.add_argument("tally", type=Path, help="a tally.csv in NetDissect's columns")
    summarize.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_synthetic(commands, parents: _Parents) -> None:
    synthetic = commands.add_parser(
        "synthetic",
        help="the embedded synthetic concept world",
        description="Write the synthetic world's probe set, or a picture of it.",
    )
    synthetic_commands = synthetic.add_subparsers(dest="synthetic_command", required=True)
    probe = synthetic_commands.add_parser(
        "probe", parents=[parents.seed, parents.progress], help="write a Broden-format probe folder"
    )
    probe.add_argument("--out", required=True, type=_nonempty_path, help="output folder")
    probe.add_argument("--images", required=True, type=_positive_int, help="number of images")
    probe.add_argument("--size", type=_positive_int, default=64, help="image size (square)")
    probe.add_argument(
        "--label-size",
        type=_positive_int,
        default=None,
        help="label-plane size (default: size // 2; must divide size)",
    )
    figure = synthetic_commands.add_parser(
        "figure", parents=[parents.seed], help="a PNG of images with their labels"
    )
    figure.add_argument(
        "--out",
        required=True,
        type=_nonempty_path,
        help="figure file (.png added without an extension)",
    )
    figure.add_argument("--rows", type=_positive_int, default=4)
    figure.add_argument("--size", type=_positive_int, default=128)


def _add_formulas(commands, parents: _Parents) -> None:
    formulas = commands.add_parser(
        "formulas",
        parents=[*parents.pass_over_probe(), parents.one_layer],
        help="the best logical formula of concepts (AND, OR, AND NOT) for every unit",
        description="Explain each unit of one layer by a formula of concepts (Mu & Andreas "
        "2020): beam search, or with --exact the proved optimum. Writes OUT/formulas.csv "
        "(unit,formula,iou,length,certified,bound), OUT/formulas.json and OUT/formulas.html.",
    )
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


def _add_fetch(commands, parents: _Parents) -> None:
    from jaxdissect.data.fetch import SOURCES, describe

    fetch = commands.add_parser(
        "fetch",
        parents=[parents.progress],
        help="download Broden or a model safely (resumable, verified, safe extraction)",
        description="Download NAME into DIR, as NetDissect-Lite's scripts do, resuming an "
        "interrupted transfer and checking size and SHA-256; a zip is extracted safely into "
        "DIR/NAME. Names:\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("name", choices=list(SOURCES), metavar="NAME")
    fetch.add_argument("--dir", required=True, type=_nonempty_path, help="where to put it")
    origin = fetch.add_mutually_exclusive_group()
    origin.add_argument("--url", default=None, help="another URL for the same file (a mirror)")
    origin.add_argument(
        "--from",
        dest="from_file",
        type=_nonempty_path,
        default=None,
        help="a file you already have, used instead of downloading (offline)",
    )
    fetch.add_argument(
        "--keep-archive", action="store_true", help="keep the downloaded zip after extracting"
    )
    fetch.add_argument(
        "--retries", type=_non_negative_int, default=5, help="retries of a broken transfer"
    )


def _add_precompile(commands, parents: _Parents) -> None:
    commands.add_parser(
        "precompile",
        help="compile and cache the CPU kernels now (for images and shared installs)",
        description="Compile the Numba CPU kernels a dissection uses and cache them, so that "
        "the first dissection does not (about 35 s on 2 cores).",
    )


def _add_directions(commands, parents: _Parents) -> None:
    directions = commands.add_parser(
        "directions",
        parents=[*parents.pass_over_probe(), parents.layout, parents.seed, parents.one_layer],
        help="per concept, a learned linear combination of the units (Net2Vec) against the "
        "best single unit",
        description="Train, for every concept with enough pixels, a direction in the space "
        "of one layer's units (weights and a bias, Net2Vec's class-balanced sigmoid loss, "
        "Adam) on the probe's train images, choose its threshold there, and score it on "
        "held-out images beside the best single unit at the dissection's threshold. Writes "
        "OUT/directions.csv (label,category,iou_direction,iou_best_unit,best_unit,...), "
        "OUT/directions.npz (the weights by label), OUT/directions.json and "
        "OUT/directions.html. --seed fixes the split and the data order.",
    )
    directions.add_argument(
        "--heldout",
        type=_fraction(True),
        default=0.3,
        help="share of the images held out for scoring (default 0.3)",
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


def _add_demo(commands, parents: _Parents) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[parents.seed, parents.progress],
        help="a quick look: dissect a layer of known units on the synthetic world (about 10 s)",
    )
    demo.add_argument("--out", type=_nonempty_path, default=Path("runs/demo"))
    demo.add_argument("--images", type=_positive_int, default=600)
