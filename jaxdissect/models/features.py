"""Activations of named layers from any model: Flax NNX, Flax Linen, or a plain function.

Every adapter returns a ``FeatureModel``: the names of the layers it can capture, and a
jittable ``apply(images, layers) -> {layer: (B, h, w, U)}`` that takes uint8 RGB images
(B, H, W, 3) and applies the model's own preprocessing (``Preprocess``) once, at its entry.
Several layers come from one forward pass. The name ``logits`` means the model's output.

NNX modules are captured by module path (``layer1``, ``layer1.blocks.0``, ...) without
changing them (a vision transformer's tokens become maps through ``patch_token_maps``): inside the traced function the model is rebuilt from its state and each
requested submodule's class is swapped, on that copy only, for a subclass that records
what ``__call__`` returns.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import DissectError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OUTPUT = "logits"


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """uint8 RGB (B, H, W, 3) -> the float input a model was trained on.

    Attributes:
      mean, std: per channel, applied to values scaled to [0, 1] (in ``channel_order``).
      size: (H, W) to resize to (half-pixel bilinear), or None to keep the size.
      channel_order: "rgb" or "bgr".
      scale: divide raw values by this first (255 for [0, 1]; 1 to keep 0..255, as Caffe).
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    size: tuple[int, int] | None = None
    channel_order: str = "rgb"
    scale: float = 255.0

    def __call__(self, images: jax.Array) -> jax.Array:
        x = jnp.asarray(images).astype(jnp.float32) / self.scale
        if self.size is not None and tuple(x.shape[1:3]) != tuple(self.size):
            x = jax.image.resize(x, (x.shape[0], *self.size, x.shape[3]), "linear")
        if self.channel_order == "bgr":
            x = x[..., ::-1]
        return (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)


@dataclasses.dataclass(frozen=True)
class FeatureModel:
    """A model ready for dissection.

    Attributes:
      name: for messages and outputs.
      layer_names: every capturable layer, plus ``logits``.
      apply: ``apply(images, layers)``: uint8 (B, H, W, 3) -> {layer: activations}; jitted,
        ``layers`` a static tuple.
      function, params: ``apply`` as a pure function of its parameters,
        ``function(params, images, layers)``, unjitted (None where the model does not
        expose them). Models of one architecture then run as one forward pass over their
        stacked parameters (``jaxdissect.many``).
    """

    name: str
    layer_names: tuple[str, ...]
    apply: Callable[[jax.Array, tuple[str, ...]], dict[str, jax.Array]]
    function: Callable | None = None
    params: Any = None

    def check_layers(self, layers: Sequence[str]) -> tuple[str, ...]:
        """The layers, or a DissectError listing the model's layer names."""
        unknown = [layer for layer in layers if layer not in self.layer_names]
        if unknown:
            raise DissectError(
                f"model {self.name!r} has no layer {', '.join(map(repr, unknown))}; its layers "
                f"are: {', '.join(self.layer_names)}"
            )
        if not layers:
            raise DissectError(f"name at least one layer of model {self.name!r}")
        return tuple(layers)

    def __call__(self, images, layers: Sequence[str]) -> dict[str, jax.Array]:
        return self.apply(images, self.check_layers(layers))


def _iter_modules(module):
    from flax import nnx

    if hasattr(nnx, "iter_modules"):
        return nnx.iter_modules(module)
    return module.iter_modules()


# A subclass that records its output, swapped onto a module of the copy that nnx.merge
# builds inside the traced function (never the user's modules or classes). Flax 0.12's
# ``nnx.capture(..., method_outputs=nnx.Intermediate)`` would capture every module's output
# by path, but it wraps methods by setattr on the user's classes for the call, and only
# those in a class's own __dict__: a module whose __call__ is inherited (``class
# MyConv(nnx.Conv): pass``) is not captured unless a plain instance of its base is in the
# model too; ``Module.sow`` needs the user's modules to call it.
@functools.cache
def _recording_class(cls):
    def __call__(self, *args, **kwargs):
        out = cls.__call__(self, *args, **kwargs)
        self._jaxdissect_sink[self._jaxdissect_name] = out
        return out

    return type(f"Recording{cls.__name__}", (cls,), {"__call__": __call__})


def patch_token_maps(patch: int, prefix_tokens: int = 1) -> Callable:
    """``from_nnx``'s ``convert`` for a vision transformer: a layer's tokens
    (B, prefix_tokens + h * w, U), h and w being the model input's sides over ``patch``,
    become the patch tokens' (B, h, w, U) map. The prefix (class) tokens are left out: they
    are no location in the image, so they have no mask to score against a segmentation."""

    def convert(layer: str, tokens: jax.Array, input_shape: tuple[int, ...]) -> jax.Array:
        height, width = input_shape[1] // patch, input_shape[2] // patch
        if tokens.ndim != 3 or tokens.shape[1] != prefix_tokens + height * width:
            raise DissectError(
                f"layer {layer!r} gives shape {tuple(tokens.shape)}; expected (B, "
                f"{prefix_tokens} + {height} * {width}, U) tokens for a "
                f"{input_shape[1]}x{input_shape[2]} input in {patch} px patches"
            )
        return tokens[:, prefix_tokens:].reshape(tokens.shape[0], height, width, -1)

    return convert


def from_nnx(
    module,
    preprocess: Preprocess | None = None,
    name: str | None = None,
    *,
    layer_names: Sequence[str] | None = None,
    convert: Callable[[str, jax.Array, tuple[int, ...]], jax.Array] | None = None,
) -> FeatureModel:
    """A FeatureModel over a Flax NNX module (put it in eval mode first if it has BatchNorm
    or Dropout). Layers are module paths joined with dots.

    Args:
      module: the model; ``module(inputs)`` gives the logits.
      preprocess: uint8 images -> the module's inputs.
      name: for messages and outputs.
      layer_names: the module paths offered (default: all of them).
      convert: ``convert(layer, output, input_shape)`` turns a captured output into
        (B, h, w, U) inside the compiled function (e.g. ``patch_token_maps``); not applied
        to ``logits``.
    """
    from flax import nnx

    preprocess = preprocess or Preprocess()
    paths = {".".join(map(str, path)): path for path, _ in _iter_modules(module) if path}
    if layer_names is not None:
        missing = [layer for layer in layer_names if layer not in paths]
        if missing:
            raise DissectError(f"{name or type(module).__name__} has no module {missing[0]!r}")
        paths = {layer: paths[layer] for layer in layer_names}
    graphdef, state = nnx.split(module)

    def function(state, images, layers):
        model = nnx.merge(graphdef, state)
        sink = {}
        for layer in layers:
            if layer == OUTPUT:
                continue
            submodule = model
            for part in paths[layer]:
                submodule = submodule[part] if isinstance(part, int) else getattr(submodule, part)
            object.__setattr__(submodule, "_jaxdissect_sink", sink)
            object.__setattr__(submodule, "_jaxdissect_name", layer)
            submodule.__class__ = _recording_class(type(submodule))
        inputs = preprocess(images)
        sink[OUTPUT] = model(inputs)
        if convert is None:
            return {layer: sink[layer] for layer in layers}
        return {
            layer: sink[layer] if layer == OUTPUT else convert(layer, sink[layer], inputs.shape)
            for layer in layers
        }

    return _jitted_model(name or type(module).__name__, (*paths, OUTPUT), function, state)


def from_linen(
    module,
    variables,
    preprocess: Preprocess | None = None,
    name: str | None = None,
    layer_names: Sequence[str] | None = None,
) -> FeatureModel:
    """A FeatureModel over a Flax Linen module and its variables, via
    ``capture_intermediates``. Layers are submodule scope paths joined with dots; pass
    ``layer_names`` to skip discovering them with a trial call."""
    preprocess = preprocess or Preprocess()

    def flatten(tree, prefix=()):
        for key, value in tree.items():
            if key == "__call__":
                yield ".".join(prefix), value[0]
            elif isinstance(value, Mapping):
                yield from flatten(value, (*prefix, key))

    def function(variables, images, layers):
        wanted = set(layers)
        out, state = module.apply(
            variables,
            preprocess(images),
            capture_intermediates=lambda mdl, method: ".".join(mdl.scope.path) in wanted,
            mutable=["intermediates"],
        )
        captured = dict(flatten(state.get("intermediates", {})))
        captured[OUTPUT] = out
        return {layer: captured[layer] for layer in layers}

    if layer_names is None:
        probe = jnp.zeros((1, 32, 32, 3), jnp.uint8)
        _, state = module.apply(
            variables, preprocess(probe), capture_intermediates=True, mutable=["intermediates"]
        )
        layer_names = [n for n, _ in flatten(state["intermediates"]) if n]
    return _jitted_model(name or type(module).__name__, (*layer_names, OUTPUT), function, variables)


def from_function(
    fn: Callable,
    params,
    layer_names: Sequence[str],
    preprocess: Preprocess | None = None,
    name: str = "function",
) -> FeatureModel:
    """A FeatureModel over ``fn(params, inputs) -> {layer: activations}`` (``inputs`` being the
    preprocessed images)."""
    preprocess = preprocess or Preprocess()

    def function(params, images, layers):
        out = fn(params, preprocess(images))
        return {layer: out[layer] for layer in layers}

    return _jitted_model(name, layer_names, function, params)


def _jitted_model(name: str, layer_names: Sequence[str], function: Callable, params):
    """A FeatureModel over the pure ``function(params, images, layers)``: ``apply`` is it
    jitted (``layers`` static) and bound to ``params``."""
    apply = jax.jit(function, static_argnames="layers")
    return FeatureModel(
        name,
        tuple(layer_names),
        lambda images, layers: apply(params, images, layers),
        function=function,
        params=params,
    )


def model_activations(
    model: FeatureModel, images: np.ndarray, layers: Sequence[str], batch_size: int
):
    """An ActivationSource over a uint8 image array: batches are padded to ``batch_size`` so
    the model compiles once."""
    layers = model.check_layers(layers)

    def activations(start: int, stop: int) -> dict[str, jax.Array]:
        batch = np.asarray(images[start:stop])
        if len(batch) < batch_size:
            batch = np.concatenate(
                [batch, np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)]
            )
        out = model.apply(jnp.asarray(batch), layers)
        for layer, value in out.items():
            if value.ndim != 4:
                raise DissectError(
                    f"layer {layer!r} of {model.name!r} gives shape {tuple(value.shape)}; "
                    "dissection needs (B, h, w, U) maps"
                )
        return {layer: value[: stop - start] for layer, value in out.items()}

    return activations
