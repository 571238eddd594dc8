"""A study's command line: ``--config``, ``--workdir``, ``--no-progress`` and key=value
overrides, checked before anything runs, and the ``main`` every study shares."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from jaxdissect.errors import DissectError
from jaxdissect.float_pin import pin_floats
from train.overrides import OverrideError, apply_overrides, repeated_keys


def experiment_main(name: str, doc: str, presets: dict, config_type, run, argv=None) -> int:
    """The ``main`` of every experiment: flags, ``run(config, workdir, progress)``, and the
    summary's path."""
    args, config = parse_args(doc, presets, config_type, argv)
    pin_floats()  # before JAX starts its backend: see jaxdissect.float_pin
    workdir = Path(args.workdir or f"runs/{name}-{args.config}")
    from train.loop import TrainingError  # flax: imported when a study runs, not on import

    try:
        run(config, workdir, progress=not args.no_progress)
    except (DissectError, TrainingError, OverrideError) as error:
        # TrainingError: a rerun whose training settings differ from its runs/ folders'.
        print(f"experiments.{name}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a read-only folder
        where = f"{error.filename}: " if error.filename else ""
        print(f"experiments.{name}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    print(f"summary: {workdir / 'summary.html'}")
    return 0


def _field_defaults(config_type) -> dict:
    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(config_type)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }


def parse_args(doc: str, presets: dict, config_type, argv=None):
    """``--config``, ``--workdir``, ``--no-progress`` and key=value overrides; a key names a
    field of ``config_type`` or, as ``field.key``, a field of a nested config dataclass
    (``dissect.union=lite``, ``probe.images=200``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--config", default="default", choices=sorted(presets))
    parser.add_argument("--workdir", default=None, help="default: runs/<experiment>-<config>")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value or section.key=value")
    args = parser.parse_args(argv)
    if repeated := repeated_keys(args.overrides):
        parser.error(f"overrides set {', '.join(repeated)} more than once")
    values = {**_field_defaults(config_type), **presets[args.config]}
    try:
        config = config_type(**apply_overrides(config_type, values, args.overrides))
    except OverrideError as error:
        parser.error(str(error))
    except ValueError as error:  # the config's own checks
        parser.error(f"overrides {' '.join(args.overrides)!r}: {error}")
    for name, value in _counts(config):
        bound = COUNT_BOUNDS.get(name.rpartition(".")[2])
        if value < 1:
            parser.error(f"{name}={value}: must be at least 1")
        if bound is not None and value > bound:
            parser.error(f"{name}={value}: must be at most {bound:,}")
    # With run=WORKDIR nothing is trained: training settings given with it are refused, not
    # ignored.
    training_keys = ("steps", "train_preset", "train_overrides")
    ignored = [o for o in args.overrides if o.partition("=")[0] in training_keys]
    if getattr(config, "run", "") and ignored:
        parser.error(
            f"{' '.join(ignored)}: run={config.run} names a trained run, and nothing is "
            "trained: leave out the training settings"
        )
    # The training settings every run of the study shares, checked before the workdir is
    # claimed: a bad one (steps=10**9, train_overrides=colour=red) was found at the first
    # run, after config.json and the probe were written, or as a traceback.
    if hasattr(config, "train_preset") and not getattr(config, "run", ""):
        from train.config import make_config

        last_seed = getattr(config, "seeds", 1) - 1
        overrides = [
            f"steps={config.steps}",
            f"image_size={config.probe.image_size}",
            f"init_seed={last_seed}",
            f"seed={last_seed}",
            *getattr(config, "train_overrides", ()),  # explain has none
        ]
        try:
            make_config(config.train_preset, overrides)
        except ValueError as error:
            parser.error(f"the training runs' settings: {error}")
    return args, config


# Integer fields that count something a study needs at least one of.
COUNT_FIELDS = (
    *("seeds", "rotations", "steps", "images", "image_size", "length"),
    *("probe_train_images", "probe_test_images"),  # the comparison studies' linear probe
)
# Their upper bounds, far beyond any run the presets scale to: seeds=10**9 built a list of
# a billion seeds and was killed for its memory; probe.images=10**7 draws for days.
COUNT_BOUNDS = {
    "seeds": 1000,
    "rotations": 1000,
    "steps": 10**8,  # train.config.MAX_STEPS
    "images": 10**6,
    "image_size": 1024,  # train.config.MAX_IMAGE_SIZE
    # Scenes drawn into memory at once (10**9 of them: terabytes).
    "probe_train_images": 10**5,
    "probe_test_images": 10**5,
}


def _counts(config, prefix: str = ""):
    """(dotted name, value) of ``config``'s COUNT_FIELDS, nested sections included."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            yield from _counts(value, f"{prefix}{field.name}.")
        elif field.name == "images" and getattr(config, "directory", None):
            continue  # a probe read from a Broden folder: no images are drawn
        elif field.name in COUNT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            yield f"{prefix}{field.name}", value
