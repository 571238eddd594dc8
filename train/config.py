"""Training configurations: one frozen dataclass, three presets, key=value overrides."""

from __future__ import annotations

import dataclasses
import json
import typing

from train.overrides import apply_overrides

# The paper's snapshot iterations (AlexNet on Places), extended by the same ~2.24x ratio.
PAPER_SCHEDULE = (
    1,
    2,
    4,
    9,
    20,
    44,
    99,
    223,
    492,
    1108,
    2446,
    5509,
    12395,
    27889,
    62750,
    141188,
    317673,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on.

    Model: ``family`` "alexnet" (conv1..conv{depth} + fc6, fc7, classifier), "resnet"
    (conv1 stem, layer1..layer3 of ``depth`` basic blocks) or "vit" (a vision transformer:
    ``patch`` px patches, ``depth`` blocks of ``heads`` heads, 256 * ``width`` channels
    rounded to a multiple of ``heads``, MLPs ``mlp_ratio`` times wider; dropout rate 0.1);
    ``width`` multiplies every layer's channels and ``last_width`` the last conv layer's
    again (the paper's conv5 256 -> 768 is 3.0); ``dropout`` and ``batch_norm`` switch
    regularisers (batch norm: CNNs only); ``init`` is
    he_normal, lecun_normal, glorot_uniform or orthogonal, drawn from ``init_seed``;
    ``init_from`` names another run's workdir whose final weights (all but the classifier)
    start this one (fine-tuning).

    Data: ``data`` "synthetic" (the embedded world's scenes, ``train_images`` of them at
    ``image_size``) or "tfds:NAME" (a TFDS image-classification dataset prepared in
    ``data_dir``). ``objective`` "supervised" (classes) or "rotation" (self-supervised:
    predict which of four quarter turns was applied).

    Loop: SGD with momentum and weight decay, cosine-decayed ``learning_rate``, ``seed``
    for data order, augmentation and dropout; checkpoints at ``checkpoint_steps`` (default:
    step 0, the paper's log-spaced iterations below ``steps``, and the final step).
    """

    family: str = "alexnet"
    width: float = 1.0
    patch: int = 8
    heads: int = 4
    mlp_ratio: float = 4.0
    last_width: float = 1.0
    depth: int = 5
    dropout: bool = True
    batch_norm: bool = False
    init: str = "he_normal"
    init_seed: int = 0
    init_from: str = ""
    data: str = "synthetic"
    data_dir: str = ""
    image_size: int = 64
    train_images: int = 8000
    eval_images: int = 800
    world_seed: int = 0
    objective: str = "supervised"
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    checkpoint_steps: tuple[int, ...] = ()
    log_every: int = 25

    def __post_init__(self):
        checks = {
            "family": self.family in ("alexnet", "resnet", "vit"),
            "width": self.width > 0,
            "depth": (3 <= self.depth <= 10) if self.family == "alexnet" else self.depth >= 1,
            "init": self.init in INITIALIZERS,
            "objective": self.objective in ("supervised", "rotation"),
            "data": self.data == "synthetic" or self.data.startswith("tfds:"),
            "image_size": self.image_size >= 16,
            "patch": self.patch >= 1
            and (self.family != "vit" or self.image_size % self.patch == 0),
            # A ViT has no batch norm and no last conv layer to widen: refused, not ignored.
            "batch_norm": not (self.family == "vit" and self.batch_norm),
            "last_width": self.last_width > 0 and (self.family != "vit" or self.last_width == 1),
            "heads": self.heads >= 1,
            "mlp_ratio": self.mlp_ratio > 0,
            "steps": self.steps >= 1,
            "batch_size": 1 <= self.batch_size <= self.train_images,
            "learning_rate": self.learning_rate > 0,
            "log_every": self.log_every >= 1,
            "checkpoint_steps": all(0 <= s <= self.steps for s in self.checkpoint_steps),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ValueError(f"invalid training config: {values}")

    def schedule(self) -> tuple[int, ...]:
        """The steps at which checkpoints are written (0 is the initialisation)."""
        if self.checkpoint_steps:
            steps = set(self.checkpoint_steps)
        else:
            steps = {0, *(s for s in PAPER_SCHEDULE if s < self.steps)}
        return tuple(sorted(steps | {self.steps}))

    def to_json(self) -> str:
        """The config as JSON; a CNN's without the ViT-only fields, so that the workdirs of
        CNN runs made before ViTs existed still resume."""
        values = dataclasses.asdict(self)
        if self.family != "vit":
            for name in VIT_FIELDS:
                del values[name]
        return json.dumps(values, indent=1, sort_keys=True)


VIT_FIELDS = ("patch", "heads", "mlp_ratio")
INITIALIZERS = ("he_normal", "lecun_normal", "glorot_uniform", "orthogonal")

PRESETS = {
    # Seconds: for tests.
    "smoke": dict(
        width=0.25,
        image_size=32,
        train_images=96,
        eval_images=32,
        steps=6,
        batch_size=16,
        log_every=2,
    ),
    # Minutes on 2 CPU cores; clearly better than chance (docs/guide/training.md).
    "default": dict(
        width=0.25, image_size=64, train_images=8000, eval_images=800, steps=1500, batch_size=64
    ),
    # GPU/TPU scale on a real dataset (Places365 at 128 px, AlexNet's width).
    "full": dict(
        width=1.0,
        image_size=128,
        data="tfds:places365_small",
        train_images=1_803_460,
        eval_images=36_500,
        steps=300_000,
        batch_size=256,
        learning_rate=0.01,
    ),
}


def make_config(
    preset: str = "default", overrides: typing.Sequence[str] = (), **kwargs
) -> TrainConfig:
    """A preset, then ``key=value`` overrides, then keyword overrides."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    values = apply_overrides(TrainConfig, PRESETS[preset], overrides)
    values.update(kwargs)
    return TrainConfig(**values)
