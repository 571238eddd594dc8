"""Copying a PyTorch state dict into an NNX model: names renamed by a network's rules,
kernels transposed, and every missing, unexpected or mis-shaped tensor reported."""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import nnx

from jaxdissect.errors import DissectError

_LEAF = {"weight": None, "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _rename(name: str, rules) -> tuple[str, str | None]:
    """``name`` renamed by the first rule that matches, and the naming scheme of that rule
    (None when none matched, or ``rules`` is one scheme's tuple of (pattern, replacement));
    ``rules``: such a tuple, or {scheme: tuple}."""
    schemes = rules.items() if isinstance(rules, dict) else [(None, rules)]
    for scheme, scheme_rules in schemes:
        for pattern, replacement in scheme_rules:
            renamed, count = re.subn(pattern, replacement, name)
            if count:
                return renamed, scheme
    return name, None


def _torch_shape(shape: tuple, kind: str | None) -> tuple:
    """The PyTorch shape of a tensor that becomes a parameter of ``shape``."""
    if kind != "kernel":
        return tuple(shape)
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape[::-1])


def load_torch_weights(
    model: nnx.Module, state_dict: dict[str, np.ndarray], rules, source: str
) -> None:
    """Copies a PyTorch state dict into ``model`` in place (kernels transposed to HWIO, linear
    weights to (in, out), BatchNorm and LayerNorm weight/bias/running stats to
    scale/bias/mean/var; a name that renames to a parameter's path, such as a ViT's
    ``class_token``, as it is).

    Raises:
      DissectError: naming missing, unexpected or mis-shaped tensors (weights of another
        model).
    """
    targets = {}
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Variable):
            targets[".".join(map(str, path))] = variable
    assigned, problems, schemes = set(), [], {}
    for name, tensor in state_dict.items():
        if name.endswith("num_batches_tracked"):  # an int64 count, not a weight
            continue
        if not np.issubdtype(tensor.dtype, np.floating):
            problems.append(f"{name}: dtype {tensor.dtype} cannot be a float weight")
            continue
        renamed, scheme = _rename(name, rules)
        if scheme is not None:
            schemes.setdefault(scheme, name)
        prefix, _, leaf = renamed.rpartition(".")
        key, kind = renamed, None
        if renamed not in targets and leaf in _LEAF:
            kind = _LEAF[leaf]
            if leaf == "weight":
                kind = "kernel" if f"{prefix}.kernel" in targets else "scale"
            key = f"{prefix}.{kind}"
        if key not in targets:
            problems.append(f"unexpected tensor {name}")
            continue
        if key in assigned:  # two naming schemes mixed in one file
            problems.append(f"{name}: a second tensor for {key}")
            continue
        value = np.asarray(tensor, np.float32)
        if kind == "kernel":
            value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
        if value.shape != targets[key].get_value().shape:
            wanted = _torch_shape(targets[key].get_value().shape, kind)
            problems.append(
                f"{name}: shape {tuple(tensor.shape)} does not fit {key}, which takes "
                f"{wanted} (in PyTorch's layout)"
            )
            continue
        if not np.isfinite(value).all():
            problems.append(f"{name}: holds NaN or inf")
            continue
        # device_put, not jnp.asarray: JAX 0.10's asarray compiles a copy per shape.
        targets[key].set_value(jax.device_put(value))
        assigned.add(key)
    missing = [
        k
        for k, v in targets.items()
        if k not in assigned and isinstance(v, (nnx.Param, nnx.BatchStat))
    ]
    problems += [f"missing tensor for {k}" for k in missing]
    if len(schemes) > 1:
        mixed = " and ".join(f"{scheme}'s ({first}, ...)" for scheme, first in schemes.items())
        problems.insert(0, f"two naming schemes mixed in one file: {mixed}")
    if problems:
        shown = "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else "")
        raise DissectError(f"{source}: these weights do not fit the model: {shown}")
