"""Listing a training run's checkpoints and loading any of them, ready for dissection."""

from __future__ import annotations

import json
from pathlib import Path

from flax import nnx

from jaxdissect.errors import DissectError
from jaxdissect.models.features import FeatureModel
from train.config import TrainConfig
from train.models import build_model, to_feature_model
from train.state import checkpoint_manager, damage, make_optimizer, restore, split


def read_config(workdir: str | Path) -> TrainConfig:
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise DissectError(f"{workdir}: not a training workdir (no config.json)")
    values = json.loads(path.read_text())
    values["checkpoint_steps"] = tuple(values.get("checkpoint_steps", ()))
    return TrainConfig(**values)


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
    run = json.loads((workdir / "run.json").read_text())
    model = build_model(config, run["num_classes"])
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
