"""A run's training state and its Orbax checkpoints, shared by the loop and the loaders.

The state is a model split into its graph definition, its parameters and the rest (batch
statistics, RNG counts), plus the optimiser's state. A checkpoint holds the three arrays'
pure dicts under ``checkpoints/<step>/``.

Orbax does not notice every damaged file (a flipped byte inside an array restores as a
different number), so ``save`` records a SHA-256 of each of a checkpoint's files in
``checkpoints.sha256.json`` beside the folder, and ``damage`` compares them. A record that
cannot be read as one vouches for nothing: it is refused in one line, naming it (the run's
checkpoints cannot be verified; the user decides). A checkpoint the record lacks (the run was
killed between writing it and recording it) is treated as damaged. Only a workdir with no
record at all, from before digests were recorded, has its checkpoints used unverified (resuming says so).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import optax
import orbax.checkpoint as ocp
from flax import nnx

from jaxdissect.errors import DissectError
from jaxdissect.outdir import replace_file
from train.config import TrainConfig


def split(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, parameters, rest): what the loop jits over and checkpoints."""
    return nnx.split(model, nnx.Param, ...)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """SGD with momentum and weight decay on a cosine-decayed learning rate."""
    schedule = optax.cosine_decay_schedule(config.learning_rate, config.steps)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum),
    )


def checkpoint_manager(workdir: Path, read_only: bool = False) -> ocp.CheckpointManager:
    """The manager of ``workdir/checkpoints`` (synchronous; every checkpoint kept)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,
        create=not read_only,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)


def _payload(params, rest, opt_state) -> dict:
    return {
        "params": nnx.to_pure_dict(params),
        "rest": nnx.to_pure_dict(rest),
        "opt_state": opt_state,
    }


DIGESTS = "checkpoints.sha256.json"


def _file_digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def read_digests(workdir: Path) -> dict[str, dict[str, str]] | None:
    """The digests ``save`` recorded, by step, then by file; None when ``workdir`` has no
    record (its checkpoints were saved before digests were recorded).

    Raises:
      DissectError: the record is not JSON, or not an object of steps whose values are
        objects of file names and SHA-256 strings; it then vouches for no checkpoint.
    """
    path = workdir / DIGESTS
    if not path.exists():
        return None
    try:
        if not path.is_file():  # a FIFO would block the read for ever
            raise ValueError("not a file")
        recorded = json.loads(path.read_text())
        why = "not a record of SHA-256 digests by step and file"
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: nested too deep
        recorded, why = None, f"unreadable ({error})"
    valid = isinstance(recorded, dict) and all(
        isinstance(files, dict) and all(isinstance(d, str) for d in files.values())
        for files in recorded.values()
    )
    if not valid:
        raise DissectError(
            f"{path}: {why}; the checkpoints cannot be verified: put back the file the run "
            "wrote, or move it away to use them unverified"
        )
    return recorded


def damage(workdir: Path, step: int) -> str | None:
    """What is wrong with checkpoint ``step``'s files, as a phrase ("damaged since it was
    saved (NAME is changed)", or "not verifiable" when the record lacks the step), or None
    when they are as saved (or ``workdir`` has no record: saved before digests were
    recorded). A record that cannot be read is refused (``read_digests``)."""
    digests = read_digests(workdir)
    if digests is None:
        return None
    recorded = digests.get(str(step))
    if recorded is None:
        return f"not verifiable (no digests of it in {DIGESTS})"
    found = _file_digests(workdir / "checkpoints" / str(step))
    for name in sorted(recorded.keys() | found.keys()):
        if recorded.get(name) != found.get(name):
            state = "missing" if name not in found else "changed" if name in recorded else "extra"
            return f"damaged since it was saved ({name} is {state})"
    return None


def save(manager: ocp.CheckpointManager, step: int, params, rest, opt_state) -> None:
    """Writes checkpoint ``step``, waits until it is complete on disk, and records its
    files' digests."""
    manager.save(step, args=ocp.args.StandardSave(_payload(params, rest, opt_state)))
    manager.wait_until_finished()
    workdir = Path(manager.directory).parent
    digests = read_digests(workdir) or {}
    digests[str(step)] = _file_digests(Path(manager.directory) / str(step))
    replace_file(workdir / DIGESTS, json.dumps(digests, indent=1))  # never through a link


def restore(manager: ocp.CheckpointManager, step: int, params, rest, opt_state):
    """Checkpoint ``step`` into the structures of ``params``, ``rest`` and ``opt_state``.

    Returns:
      (params, rest, opt_state) as saved.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _payload(params, rest, opt_state))
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    nnx.replace_by_pure_dict(params, restored["params"])
    nnx.replace_by_pure_dict(rest, restored["rest"])
    return params, rest, restored["opt_state"]
