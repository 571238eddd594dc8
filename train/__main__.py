"""``python -m train --config smoke|default|full --workdir DIR [key=value ...]``.

Trains (or resumes) a run; prints its final evaluation accuracy and its checkpoints. See
train.config.TrainConfig for every key.
"""

import argparse
import sys
import warnings

from jaxdissect.errors import one_line
from jaxdissect.float_pin import pin_floats
from train.checkpoints import list_checkpoints
from train.config import PRESETS, make_config
from train.loop import TrainingError, train
from train.overrides import repeated_keys


def _step(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a step number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="default", choices=sorted(PRESETS))
    parser.add_argument("--workdir", required=True)
    parser.add_argument(
        "--stop-after",
        type=_step,
        default=None,
        help="stop at this step (a later run resumes)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. dropout=false width=0.5")
    args = parser.parse_args(argv)
    if repeated := repeated_keys(args.overrides):
        parser.error(f"overrides set {', '.join(repeated)} more than once")
    # The same floats on every machine of an architecture (see jaxdissect.float_pin);
    # set before JAX starts its backend.
    pin_floats()
    try:
        with warnings.catch_warnings():
            # A warning is one line naming the file, as errors are (not Python's two lines).
            warnings.showwarning = lambda message, *_, **__: print(
                f"train: warning: {one_line(str(message))}", file=sys.stderr
            )
            config = make_config(args.config, args.overrides)
            result = train(
                config, args.workdir, progress=not args.no_progress, stop_after=args.stop_after
            )
    except (ValueError, TrainingError) as error:
        print(f"train: error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a read-only folder
        where = f"{error.filename}: " if error.filename else ""
        print(f"train: error: {one_line(where + str(error.strerror or error))}", file=sys.stderr)
        return 2
    print(
        f"step {result['step']} of {config.steps}; evaluation accuracy "
        f"{result['eval_accuracy']}; checkpoints at {list_checkpoints(args.workdir)} in "
        f"{args.workdir}/checkpoints"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
