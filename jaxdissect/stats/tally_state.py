"""The tally's state: integer counts G, I, A, summed in int32 without ever wrapping.

A count that would pass 2**31 - 1 stops there and raises the state's ``saturated`` flag
instead of wrapping to a negative number; ``tally_merge`` adds two states that way.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Int

from jaxdissect.errors import DissectError
from jaxdissect.stats.checks import check_count, check_state_bytes

INT32_MAX = 2**31 - 1


class TallyState(NamedTuple):
    """Integer counts summed over the images seen so far.

    Attributes:
      label_area: (L,) int32, G[l]: pixels of label l over all planes (image-level labels
        cover the whole image). Column 0 (unlabelled) is kept at zero.
      intersection: (U, L) int32, I[u, l].
      unit_area: (U, C) int32, A[u, c] under the state's union rule.
      overflow: () int32, images with more distinct pixel labels than slots, or more
        active units than ``max_active`` (must stay 0).
      saturated: () int32, nonzero once a count would have passed 2**31 - 1 (int32): such
        counts stop at 2**31 - 1 (a lower bound) instead of wrapping. Must stay 0 for
        exact counts; move the counts into int64 on the host before that (the driver does).
      settings: None, or in a state made by ``tally_statistic`` a leafless ``Settings``
        node (its static settings; no array leaf).
    """

    label_area: Int[Array, " labels"]
    intersection: Int[Array, "units labels"]
    unit_area: Int[Array, "units categories"]
    overflow: Int[Array, ""]
    saturated: Int[Array, ""] | None = None
    settings: Any = None


def tally_init(units: int, num_labels: int, num_categories: int) -> TallyState:
    """Zero counts for ``units`` units, labels numbered 0..num_labels-1, and categories."""
    units = check_count(units, "units")
    num_labels = check_count(num_labels, "num_labels")
    num_categories = check_count(num_categories, "num_categories", minimum=0)
    check_state_bytes(
        4 * (num_labels + units * (num_labels + num_categories) + 2),
        "tally init",
        ("units", "num_labels", "num_categories"),
    )
    return TallyState(
        label_area=jnp.zeros((num_labels,), jnp.int32),
        intersection=jnp.zeros((units, num_labels), jnp.int32),
        unit_area=jnp.zeros((units, num_categories), jnp.int32),
        overflow=jnp.zeros((), jnp.int32),
        saturated=jnp.zeros((), jnp.int32),
    )


def _saturate(old, new):
    """``new`` where the int32 addition of non-negative increments did not wrap, else
    2**31 - 1; and how many entries wrapped. (With old >= 0 and an increment in
    [0, 2**31), the sum wrapped exactly when it came out below ``old``.)"""
    wrapped = new < old
    return jnp.where(wrapped, INT32_MAX, new), jnp.sum(wrapped, dtype=jnp.int32)


def _saturated(state: TallyState):
    return jnp.zeros((), jnp.int32) if state.saturated is None else state.saturated


def with_counts(state: TallyState, label_area, intersection, unit_area, overflow) -> TallyState:
    """The state with new counts, any that wrapped held at 2**31 - 1 and flagged."""
    wrapped = _saturated(state)
    new = []
    for old, value in (
        (state.label_area, label_area),
        (state.intersection, intersection),
        (state.unit_area, unit_area),
    ):
        value, count = _saturate(old, value)
        new.append(value)
        wrapped = wrapped + count
    return TallyState(*new, overflow, jnp.minimum(wrapped, 1), state.settings)


def tally_merge(a: TallyState, b: TallyState) -> TallyState:
    """Combine the tallies of two disjoint parts of the data (associative, commutative).

    Counts whose sum would pass 2**31 - 1 stop there and set ``saturated``.

    Raises:
      DissectError: the states hold counts of different shapes, or were made by
        ``tally_statistic`` with different settings.
    """
    shapes = [(x.shape, y.shape) for x, y in zip(a[:3], b[:3], strict=True)]
    if any(x != y for x, y in shapes):
        raise DissectError(
            f"tally_merge: the states `a` and `b` hold counts of different shapes {shapes}: "
            "made for different units, labels or categories",
            arguments=("a", "b"),
        )
    if a.settings != b.settings:
        raise DissectError(
            f"tally_merge: the states `a` and `b` were made with different settings ({a.settings!r} "
            f"and {b.settings!r})",
            arguments=("a", "b"),
        )
    a = a._replace(saturated=jnp.maximum(_saturated(a), _saturated(b)))
    return with_counts(
        a,
        a.label_area + b.label_area,
        a.intersection + b.intersection,
        a.unit_area + b.unit_area,
        a.overflow + b.overflow,
    )
