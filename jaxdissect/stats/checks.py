"""Checks shared by the statistics' public functions: each refusal is a DissectError naming
the argument, raised before any array is allocated or traced."""

from __future__ import annotations

import numpy as np

from jaxdissect import runtime
from jaxdissect.errors import DissectError

# A state (the arrays ``init`` allocates) above this many bytes is refused before allocating:
# 16 GiB, above any one accelerator's share a dissection needs, and far below a mistyped size.
MAX_STATE_BYTES = 2**34


def _scalar(value, name: str, what: str, kinds: str, expected: str):
    """``value`` as a 0-d NumPy array of a dtype kind in ``kinds``, else a DissectError."""
    prefix = f"{what}: " if what else ""
    if runtime.is_tracer(value):
        raise DissectError(
            f"{prefix}`{name}` must be a Python {expected} (static), got a traced value",
            arguments=(name,),
        )
    if isinstance(value, (str, bytes, bool, np.bool_)) or value is None:
        array = None
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError):
            array = None
    if array is None or array.ndim != 0 or array.dtype.kind not in kinds:
        raise DissectError(f"{prefix}`{name}` must be {expected}, got {value!r}", arguments=(name,))
    return array


def check_count(value, name: str, *, minimum: int = 1, what: str = "") -> int:
    """``value`` as a Python int >= ``minimum``; a DissectError naming ``name`` for a float,
    a string, a bool or anything below ``minimum``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        count = int(value)  # a Python int of any size (np.asarray would make it an object)
    else:
        count = int(_scalar(value, name, what, "iu", "an integer"))
    if count < minimum:
        prefix = f"{what}: " if what else ""
        raise DissectError(
            f"{prefix}`{name}` must be >= {minimum}, got {value!r}", arguments=(name,)
        )
    return count


def check_real(value, name: str, *, what: str = "") -> float:
    """``value`` as a Python float; a DissectError naming ``name`` for a string, a bool,
    a complex or an array."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return float(_scalar(value, name, what, "iuf", "a real number"))


def check_state_bytes(nbytes: int, what: str, names: tuple[str, ...]) -> None:
    """A DissectError naming ``names`` when a state of ``nbytes`` bytes exceeds
    ``MAX_STATE_BYTES``."""
    if nbytes > MAX_STATE_BYTES:
        spelt = ", ".join(f"`{n}`" for n in names)
        raise DissectError(
            f"{what}: the state would take {nbytes} bytes, above the bound of "
            f"{MAX_STATE_BYTES} bytes (2**34, jaxdissect.stats.checks.MAX_STATE_BYTES); "
            f"lower {spelt}",
            arguments=names,
        )
