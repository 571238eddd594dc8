"""Training configurations: one frozen dataclass, three presets, key=value overrides."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

from jaxdissect.errors import DissectError
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


# Upper bounds of the sizes (see TrainConfig.__post_init__).
MAX_WIDTH = 16.0
MAX_IMAGE_SIZE = 1024
MAX_STEPS = 10**8  # the step counter and the schedule's steps are int32 on the device
MAX_IMAGES = 10**7  # the full preset's Places365 has 1.8 million
MAX_SEED = 2**32 - 1  # NumPy's and JAX's seeds: non-negative, at most 64 bits
# The fewest channels ``width`` (with ``last_width`` and ``mlp_ratio``) may give a layer: a
# tiny width (1e-9) trained 1-channel layers, a model with nothing to dissect.
MIN_CHANNELS = 4
ALEXNET_CHANNELS = (64, 192, 384, 256, 256)  # conv1..conv5 at width 1
RESNET_CHANNELS = (16, 32, 64)  # layer1..layer3 at width 1, doubled (the stem has layer1's)
VIT_CHANNELS = 256  # a ViT's channels at width 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on.

    Model: ``family`` "alexnet" (conv1..conv{depth} + fc6, fc7, classifier), "resnet"
    (conv1 stem, layer1..layer3 of ``depth`` basic blocks) or "vit" (a vision transformer:
    ``patch`` px patches, ``depth`` blocks of ``heads`` heads, 256 * ``width`` channels
    rounded to a multiple of ``heads``, MLPs ``mlp_ratio`` times wider; dropout rate 0.1);
    ``width`` multiplies every layer's channels and ``last_width`` the last conv layer's
    again (the paper's conv5 256 -> 768 is 3.0), and no layer may end up with fewer than
    ``MIN_CHANNELS`` (``channels()``); ``dropout`` and ``batch_norm`` switch
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
        vit = self.family == "vit"
        # name: (whether its value is allowed, the rule to print when not). The upper bounds keep a typo (width=100000) from
        # building a model of petabytes: far beyond any run these presets scale to.
        checks = {
            "family": (self.family in ("alexnet", "resnet", "vit"), "one of alexnet, resnet, vit"),
            "width": (0 < self.width <= MAX_WIDTH, f"must lie in (0, {MAX_WIDTH:g}]"),
            "depth": (
                (3 <= self.depth <= 10) if self.family == "alexnet" else 1 <= self.depth <= 64,
                "must lie in [3, 10] for alexnet"
                if self.family == "alexnet"
                else "must lie in [1, 64]",
            ),
            "init": (self.init in INITIALIZERS, f"one of {', '.join(INITIALIZERS)}"),
            "objective": (
                self.objective in ("supervised", "rotation"),
                "one of supervised, rotation",
            ),
            "data": (
                self.data == "synthetic"
                or (self.data.startswith("tfds:") and self.data != "tfds:"),
                "synthetic or tfds:NAME",
            ),
            "image_size": (
                16 <= self.image_size <= MAX_IMAGE_SIZE,
                f"must lie in [16, {MAX_IMAGE_SIZE}]",
            ),
            "patch": (
                1 <= self.patch <= self.image_size and self.image_size % self.patch == 0
                if vit
                else self.patch == _DEFAULT_PATCH,
                "must divide image_size" if vit else "a ViT-only field",
            ),
            # A ViT has no batch norm and no last conv layer to widen: refused, not ignored.
            "batch_norm": (not (vit and self.batch_norm), "a ViT has no batch norm"),
            "last_width": (
                0 < self.last_width <= MAX_WIDTH and (not vit or self.last_width == 1),
                "a CNN-only field" if vit else f"must lie in (0, {MAX_WIDTH:g}]",
            ),
            # A CNN has no patches, heads or MLPs: a value other than the default is refused,
            # not ignored (config.json leaves them out, so a resume would not see it either).
            "heads": (
                1 <= self.heads <= 64 and (vit or self.heads == _DEFAULT_HEADS),
                "must lie in [1, 64]" if vit else "a ViT-only field",
            ),
            "mlp_ratio": (
                0 < self.mlp_ratio <= 16 and (vit or self.mlp_ratio == _DEFAULT_MLP_RATIO),
                "must lie in (0, 16]" if vit else "a ViT-only field",
            ),
            "steps": (1 <= self.steps <= MAX_STEPS, f"must lie in [1, {MAX_STEPS}]"),
            "train_images": (
                1 <= self.train_images <= MAX_IMAGES,
                f"must lie in [1, {MAX_IMAGES:,}]",
            ),
            "eval_images": (
                1 <= self.eval_images <= MAX_IMAGES,
                f"must lie in [1, {MAX_IMAGES:,}]",
            ),
            "batch_size": (
                1 <= self.batch_size <= self.train_images,
                f"must lie in [1, train_images={self.train_images}]",
            ),
            "learning_rate": (0 < self.learning_rate < math.inf, "must be finite and > 0"),
            "momentum": (0 <= self.momentum < 1, "must lie in [0, 1)"),
            "weight_decay": (0 <= self.weight_decay < math.inf, "must be finite and >= 0"),
            "log_every": (self.log_every >= 1, "must be at least 1"),
            **{
                name: (0 <= getattr(self, name) <= MAX_SEED, f"must lie in [0, {MAX_SEED}]")
                for name in ("seed", "init_seed", "world_seed")
            },
            # Read only for data="tfds:...": refused, not ignored, for the synthetic world.
            "data_dir": (not self.data_dir or self.data != "synthetic", "only for data=tfds:NAME"),
            "checkpoint_steps": (
                all(0 <= s <= self.steps for s in self.checkpoint_steps),
                f"each must lie in [0, steps={self.steps}]",
            ),
        }
        bad = [name for name, (ok, _) in checks.items() if not ok]
        if bad:
            values = ", ".join(
                f"{name}={getattr(self, name)!r}"
                + (f" ({checks[name][1]})" if checks[name][1] else "")
                for name in bad
            )
            raise DissectError(f"invalid training config: {values}")
        self._check_channels()

    def channels(self) -> dict[str, int]:
        """The channels of each layer the widths scale, by name, as the models build them:
        AlexNet's conv1..conv{depth} and a ResNet's layer1..layer3 (its stem, conv1, has
        layer1's), the last times ``last_width``; a ViT's ``tokens`` (a multiple of
        ``heads``) and its MLPs' hidden ``mlp``."""
        if self.family == "vit":
            tokens = self.heads * round(VIT_CHANNELS * self.width / self.heads)
            return {"tokens": tokens, "mlp": round(tokens * self.mlp_ratio)}
        if self.family == "resnet":
            names = ["layer1", "layer2", "layer3"]
            counts = [round(w * self.width * 2) for w in RESNET_CHANNELS]
        else:
            # Layers beyond conv2 take conv3..conv5's widths; extra ones repeat conv4's.
            middle = ALEXNET_CHANNELS[2:]
            base = [*ALEXNET_CHANNELS[:2]]
            for index in range(self.depth - 2):
                base.append(middle[min(index, len(middle) - 1)] if index < self.depth - 3 else 256)
            names = [f"conv{index}" for index in range(1, self.depth + 1)]
            counts = [round(w * self.width) for w in base]
        counts[-1] = round(counts[-1] * self.last_width)
        return dict(zip(names, counts, strict=True))

    def _check_channels(self) -> None:
        """Refuses widths that give a layer fewer than MIN_CHANNELS, naming the field."""
        narrow = [(name, n) for name, n in self.channels().items() if n < MIN_CHANNELS]
        if not narrow:
            return
        layer, count = narrow[0]
        field = "mlp_ratio" if layer == "mlp" else "width"
        if len(narrow) == 1 and layer != "mlp" and self.last_width != 1:
            field = "last_width"  # only the last layer, which last_width narrows further
        raise DissectError(
            f"invalid training config: {field}={getattr(self, field)!r} (gives {layer} "
            f"{count} channel{'' if count == 1 else 's'}; every layer needs at least "
            f"{MIN_CHANNELS})"
        )

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
_DEFAULT_PATCH, _DEFAULT_HEADS, _DEFAULT_MLP_RATIO = (
    TrainConfig.__dataclass_fields__[name].default for name in VIT_FIELDS
)
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
