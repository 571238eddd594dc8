"""How to dissect: the one configuration the CLI, the studies and Python users share."""

from __future__ import annotations

import dataclasses
import numbers
import os
from pathlib import Path

from jaxdissect.errors import DissectError
from jaxdissect.outdir import STORE

# The rules for A[u, c], the area a unit is compared with for a category c (DESIGN.md):
# "paper" (original NetDissect): the images that carry any label of primary category c;
# "lite" (NetDissect-Lite): the images where an active pixel hits a category-c label, or
# that carry an image-level label of category c. Both kernels implement both.
UNIONS = ("paper", "lite")
KERNELS = ("auto", "cpu", "xla")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DissectConfig:
    """How to dissect.

    Attributes:
      quantile: upper-tail fraction q of each unit's activations above its threshold.
      iou_threshold: a unit is a detector when its best IoU is strictly above this.
      union: "paper" (original NetDissect) or "lite" (NetDissect-Lite) rule for A[u, c].
      batch_size: images per step (rounded up to a multiple of the device count).
      skip_inactive: upsample only the units whose map rises above their threshold (exact;
        off, every unit of every image is upsampled).
      top_images: per unit, keep this many most activating images and their maps (for the
        report), gathered during the threshold pass; 0 keeps none.
      kernel: how both passes run: "cpu" (compiled loops over the CPU cores,
        ``cpu_quantile`` and ``cpu_tally``), "xla" (jitted, sharded over all devices,
        ``quantile`` and ``tally``) or "auto": "cpu" when JAX runs on the CPU in one
        process and Numba is installed, else "xla". Thresholds are identical; counts too
        wherever float32 upsampling is exact (see ``cpu_tally`` for the rare pixels at a
        threshold).
    """

    quantile: float = 0.005
    iou_threshold: float = 0.04
    union: str = "paper"
    batch_size: int = 32
    skip_inactive: bool = True
    top_images: int = 8
    kernel: str = "auto"

    def __post_init__(self):
        # Types first: "0.1" met `<` in a TypeError, and a batch size of 2.5 passed here.
        for name, kind, what in (
            ("quantile", numbers.Real, "a number"),
            ("iou_threshold", numbers.Real, "a number"),
            ("batch_size", numbers.Integral, "an integer"),
            ("top_images", numbers.Integral, "an integer"),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise DissectError(
                    f"`{name}` must be {what}, got {type(value).__name__} {value!r}",
                    arguments=(name,),
                )
        if not 0.0 < self.quantile < 1.0:
            raise DissectError(
                f"`quantile` must lie in (0, 1), got {self.quantile}", arguments=("quantile",)
            )
        if not 0.0 <= self.iou_threshold < 1.0:
            raise DissectError(
                f"`iou_threshold` must lie in [0, 1), got {self.iou_threshold}",
                arguments=("iou_threshold",),
            )
        if self.union not in UNIONS:
            raise DissectError(
                f"`union` must be one of {UNIONS}, got {self.union!r}", arguments=("union",)
            )
        if self.batch_size < 1:
            raise DissectError(
                f"`batch_size` must be >= 1, got {self.batch_size}", arguments=("batch_size",)
            )
        if self.top_images < 0:
            raise DissectError(
                f"`top_images` must be >= 0, got {self.top_images}", arguments=("top_images",)
            )
        if self.kernel not in KERNELS:
            raise DissectError(
                f"`kernel` must be one of {KERNELS}, got {self.kernel!r}", arguments=("kernel",)
            )


def fit_to_images(config: DissectConfig, num_images: int) -> DissectConfig:
    """``config`` with ``top_images`` at most ``num_images``: a unit has no more top images
    than the probe has images. (``batch_size`` is kept, as the fingerprint records it; the
    model runs clamp their padded batches instead.)"""
    return dataclasses.replace(config, top_images=min(config.top_images, num_images))


def check_paths(**paths) -> None:
    """Refuses a path argument given as the empty string, which Python's paths read as the
    current folder, or as something not a path (``5``, bytes: pathlib's TypeError): a
    DissectError naming the argument (``check_paths(out=out)``); None passes."""
    for name, path in paths.items():
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise DissectError(
                f"`{name}` must be a path (str or os.PathLike), got {type(path).__name__} {path!r}"[
                    :200
                ],
                arguments=(name,),
            )
        if isinstance(path, str) and not path:
            raise DissectError(
                f"`{name}` is an empty path (it would mean the current folder); give '.' for that",
                arguments=(name,),
            )


def check_out_apart(out, dataset) -> None:
    """Refuses an ``out`` that is the dataset's own folder (``dataset``: a BrodenDataset or
    its folder): the outputs would be written among the probe's files; and one inside
    another OUT's store of sets (``.jaxdissect``, also through a link such as OUT/report):
    its files would displace that OUT's published set; and a study's workdir holding its
    published results."""
    if out is not None and STORE in Path(os.path.realpath(out)).parts:
        raise DissectError(
            f"`out` {out} is inside an output folder's {STORE}/ (where it keeps its sets): "
            "choose a folder outside it",
            arguments=("out",),
        )
    if out is not None and os.path.islink(Path(out, STORE, "study")):
        # A study's results.json is at OUT's name: refused here, not after the passes.
        raise DissectError(
            f"`out` {out} holds a study's published results (a study's workdir): choose "
            "another folder",
            arguments=("out",),
        )
    folder = getattr(dataset, "directory", dataset)
    if out is None or not isinstance(folder, (str, os.PathLike)):
        return
    if os.path.isdir(out) and os.path.isdir(folder):
        if os.path.samefile(out, folder):
            raise DissectError(
                f"`out` {out} is the dataset folder: the outputs would be written among its "
                "files; choose another",
                arguments=("out",),
            )


def check_config(config) -> DissectConfig:
    """``config`` itself, when it is a DissectConfig; otherwise a DissectError saying what to
    pass (a union rule's name given as the config is the likely slip)."""
    if isinstance(config, DissectConfig):
        return config
    hint = (
        f" (for the union rule: DissectConfig(union={config!r}))"
        if isinstance(config, str) and config in UNIONS
        else ""
    )
    raise DissectError(
        f"`config` must be a DissectConfig, got {type(config).__name__} {config!r:.80}{hint}",
        arguments=("config",),
    )
