"""Listing a training run's checkpoints and loading any of them, ready for dissection."""

from __future__ import annotations

import json
from pathlib import Path

from flax import nnx

from jaxdissect.errors import DissectError, check_regular_file
from jaxdissect.models.features import FeatureModel
from train.config import TrainConfig
from train.models import build_model, to_feature_model
from train.state import checkpoint_manager, damage, make_optimizer, restore, split


def read_config(workdir: str | Path) -> TrainConfig:
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise DissectError(f"{workdir}: not a training workdir (no config.json)")
    values = _read_record(path, "a training config")
    values["checkpoint_steps"] = tuple(values.get("checkpoint_steps", ()))
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as error:  # a field it lacks or has too many of
        raise DissectError(f"{path}: not a training config ({error})") from None


def _read_record(path: Path, what: str) -> dict:
    """The JSON object in ``path``, or a DissectError naming it: the file is the user's to
    edit, and a forged one must not end in a traceback."""
    check_regular_file(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as error:  # not UTF-8, not JSON, too deep
        raise DissectError(f"{path}: unreadable ({error})") from None
    if not isinstance(value, dict):
        raise DissectError(f"{path}: not {what}")
    return value


def list_checkpoints(workdir: str | Path) -> list[int]:
    """The steps with a complete checkpoint, ascending."""
    folder = Path(workdir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(checkpoint_manager(Path(workdir), read_only=True).all_steps())


def load_run(workdir: str | Path, step: int | None = None) -> tuple[nnx.Module, TrainConfig]:
    """The model of ``workdir`` at checkpoint ``step`` (default: the last), in eval mode."""
    workdir = Path(workdir)
    config = read_config(workdir)
    steps = list_checkpoints(workdir)
    if not steps:
        raise DissectError(f"{workdir}: no checkpoints yet")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise DissectError(f"{workdir}: no checkpoint at step {step}; there are: {steps}")
    classes = _read_record(workdir / "run.json", "a run's record").get("num_classes")
    if not isinstance(classes, int) or isinstance(classes, bool) or not 0 < classes <= 10**6:
        raise DissectError(f"{workdir / 'run.json'}: num_classes {classes!r} is not a count")
    model = build_model(config, classes)
    graphdef, params, rest = split(model)
    opt_state = make_optimizer(config).init(params)
    problem = damage(workdir, step)
    if problem is not None:
        raise DissectError(f"{workdir}/checkpoints/{step}: {problem}")
    try:
        params, rest, _ = restore(
            checkpoint_manager(workdir, read_only=True), step, params, rest, opt_state
        )
    except Exception as error:  # Orbax and TensorStore raise many types for a bad file
        first = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise DissectError(f"{workdir}/checkpoints/{step}: unreadable ({first})") from None
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    return model, config


def feature_model(workdir: str | Path, step: int | None = None) -> FeatureModel:
    """A checkpoint as a FeatureModel (its layers: conv1.., layer1.., fc6, ..., logits; a
    ViT's block0.., block0.attn.., block0.mlp.., logits)."""
    model, _ = load_run(workdir, step)
    return to_feature_model(model, f"{Path(workdir).name}@{step if step is not None else 'last'}")
