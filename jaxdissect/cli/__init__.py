"""Command line: ``python -m jaxdissect {dissect,features,formulas,directions,report,summarize,
synthetic,demo,fetch,precompile} ...`` (also ``jaxdissect``). Argument parsing and printing
only: the work is the library's (``pipeline.dissect`` for ``dissect``). The grammar is in
``parser``; each command's runner in the module of its name."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jaxdissect.cli.compositional import run_directions, run_formulas
from jaxdissect.cli.dissect import run_dissect
from jaxdissect.cli.parser import build_parser as build_parser
from jaxdissect.cli.report import run_report
from jaxdissect.cli.small import (
    run_demo,
    run_features,
    run_fetch,
    run_precompile,
    run_summarize,
    run_synthetic,
)
from jaxdissect.errors import DissectError, one_line

# The library's argument names that are not their flag with dashes for underscores.
FLAGS = {"layers": "--layer", "cache_root": "--cache"}

RUNNERS = {
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


def _compilation_cache(args: argparse.Namespace) -> None:
    """JAX's persistent compilation cache under the project's cache folder, so that a second
    run of the same model compiles nothing; set before JAX is imported (it reads the
    variable then), unless the user's environment names a folder already."""
    from jaxdissect.data.cache import default_cache_root

    root = getattr(args, "cache", None) or default_cache_root()
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(root) / "xla"))
    # JAX writes only compilations that took a second or more; a small model's forward pass
    # and the kernels' steps take 0.1-0.3 s each on 2 cores, and five of them were compiled
    # anew in every process.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.05")


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit status: 0, or 2 after a one-line error (argparse
    exits 2 itself for a malformed command line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # ``jaxdissect`` alone: what it can do, and a usage status
        parser.print_help()
        return 2
    _compilation_cache(args)
    try:
        return RUNNERS[args.command](args)
    except DissectError as error:
        _error(error.for_cli(FLAGS))
        return 2
    except RecursionError:  # json's, on a forged file nested 100,000 deep that no check caught
        _error(
            f"{args.command}: a JSON file it read is nested too deeply to be one jaxdissect "
            "wrote (was a file in OUT/.jaxdissect/ edited?)"
        )
        return 2
    except MemoryError:
        print(
            f"jaxdissect: error: {args.command}: out of memory (lower the sizes or batch size)",
            file=sys.stderr,
        )
        return 2
    except OSError as error:  # a full disk, a read-only folder, a file where a folder goes
        where = f"{error.filename}: " if error.filename else ""
        _error(f"{where}{error.strerror or error}")
        return 2


def _error(message: str) -> None:
    """The one line of an error on stderr: a line break in a name the user gave (a file
    named with one) is written as ``\\n``, so that the error stays one line."""
    print(f"jaxdissect: error: {one_line(message)}", file=sys.stderr)
