"""Shape checks for one batch of ``tally_update``: every array must agree with the state and
with each other, or jax would broadcast, clamp or drop entries and count the wrong pixels.

Shapes are static, so the checks cost nothing per batch under ``jax.jit`` (they run once,
at tracing).
"""

from __future__ import annotations

import numpy as np

from jaxdissect.errors import DissectError

# Each argument's axes by name: one name means one length across all arguments and the
# state (U units, L labels, B images, h x w activations, sh x sw label planes).
AXES = {
    "acts": ("B", "h", "w", "U"),
    "thresholds": ("U",),
    "label_planes": ("B", "P", "sh", "sw"),
    "slot_planes": ("B", "P", "sh", "sw"),
    "slot_labels": ("B", "S"),
    "image_labels": ("B", "M"),
    "label_category": ("L",),
    "row_matrix": ("sh", "h"),
    "col_matrix": ("sw", "w"),
    "valid": ("B",),
}
# Integer arguments, and the axis whose length bounds their values: label numbers lie in
# [0, L), slot indices in [0, S).
INTEGER_ARGUMENTS = {
    "label_planes": "L",
    "slot_planes": "S",
    "slot_labels": "L",
    "image_labels": "L",
}


def check_batch_shapes(state, **arrays) -> None:
    """A DissectError naming the first argument whose shape disagrees with the state's
    (U units, L labels) or with the arguments before it; label arrays must hold integers.
    ``valid=None`` is skipped."""
    lengths = {"U": state.intersection.shape[0], "L": state.intersection.shape[1]}
    seen = {"U": "the state", "L": "the state"}
    for name, value in arrays.items():
        if value is None:
            continue
        shape, axes = np.shape(value), AXES[name]
        described = f"`{name}` has shape {shape}, ({', '.join(axes)})"
        if len(shape) != len(axes):
            raise DissectError(f"{described}: it needs {len(axes)} axes", arguments=(name,))
        for axis, length in zip(axes, shape, strict=True):
            if lengths.setdefault(axis, length) != length:
                raise DissectError(
                    f"{described}: {axis} is {length}, but {lengths[axis]} in {seen[axis]}",
                    arguments=(name,),
                )
            seen.setdefault(axis, f"`{name}`")
    for name, bound in INTEGER_ARGUMENTS.items():
        if name in arrays:
            _check_label_numbers(name, arrays[name], lengths[bound])


def _check_label_numbers(name: str, value, num_labels: int) -> None:
    """Integer label numbers (or slot indices) in [0, ``num_labels``); values are checked
    for NumPy arrays only (reading a device array's would wait for it), where jax would
    drop an out-of-range number's counts."""
    dtype = np.dtype(value.dtype) if hasattr(value, "dtype") else np.asarray(value).dtype
    if dtype.kind not in "iu":
        raise DissectError(
            f"`{name}` must hold integer label numbers, got {dtype} values", arguments=(name,)
        )
    if isinstance(value, np.ndarray) and value.size:
        low, high = value.min(), value.max()
        if low < 0 or high >= num_labels:
            raise DissectError(
                f"`{name}` holds {low if low < 0 else high}: its values lie in "
                f"[0, {num_labels}), 0 meaning none",
                arguments=(name,),
            )
