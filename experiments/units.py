"""Unit-level analyses: how individual units' concepts change between two dissections of
the same layer (consecutive training snapshots; a network before and after fine-tuning).

A unit is labelled when its top label's IoU is above the threshold (a detector); between
two dissections it keeps its label, switches to another label of the same or of another
category, gains a label or loses one.
"""

from __future__ import annotations

import itertools
import typing

from experiments.claims import interval

TRANSITIONS = ("keep", "switch_same_category", "switch_other_category", "gain", "lose")
NONE = "none"


def unit_labels(results: dict, threshold: float) -> list[tuple[str, str] | None]:
    """Per unit (in unit order), its (category, label) if it is a detector, else None."""
    rows = sorted(results["units"], key=lambda row: row["unit"])
    return [(row["category"], row["label"]) if row["score"] > threshold else None for row in rows]


def _check_same_units(before: list, after: list) -> None:
    if len(before) != len(after):
        raise ValueError(f"unit transitions: {len(before)} units before, {len(after)} after")


def transitions(before: list, after: list) -> dict[str, int]:
    """How many units keep, switch (same or other category), gain or lose a label between
    two labellings of the same units (``unit_labels``)."""
    _check_same_units(before, after)
    counts = dict.fromkeys(TRANSITIONS, 0)
    for old, new in zip(before, after, strict=True):
        if old is None and new is None:
            continue
        if old is None:
            counts["gain"] += 1
        elif new is None:
            counts["lose"] += 1
        elif old == new:
            counts["keep"] += 1
        elif old[0] == new[0]:
            counts["switch_same_category"] += 1
        else:
            counts["switch_other_category"] += 1
    return counts


def category_flow(before: list, after: list) -> dict[str, int]:
    """Counts of "<category before> -> <category after>" ("none" for no label) over the
    units labelled in at least one of the two; a unit keeping its category but changing
    its label counts under that category's pair too."""
    _check_same_units(before, after)
    flow: dict[str, int] = {}
    for old, new in zip(before, after, strict=True):
        if old is None and new is None:
            continue
        key = f"{old[0] if old else NONE} -> {new[0] if new else NONE}"
        flow[key] = flow.get(key, 0) + 1
    return dict(sorted(flow.items()))


def across_seeds(per_seed: typing.Sequence[dict[str, int]]) -> dict[str, dict]:
    """Each key's per-seed counts (0 where a seed lacks it) as an ``interval``."""
    keys = sorted({key for counts in per_seed for key in counts})
    return {key: interval([counts.get(key, 0) for counts in per_seed]) for key in keys}


def switches(sequence: typing.Sequence[tuple[str, str] | None]) -> int:
    """How many times a unit's label changes between consecutive snapshots where it is
    labelled in both."""
    return sum(
        1
        for old, new in itertools.pairwise(sequence)
        if old is not None and new is not None and old != new
    )


def most_switching(
    labellings: dict[int, list[list]], steps: typing.Sequence[int], top: int = 10
) -> list[dict]:
    """The ``top`` units that switch label most often over training.

    Args:
      labellings: {seed: [one ``unit_labels`` list per snapshot, in step order]}.
      steps: the snapshots' steps.
    Returns:
      [{"seed", "unit" (1-based), "switches", "labels": {step: label or ""}}], most
      switches first (ties: by seed, then unit); units that never switch are left out.
    """
    found = []
    for seed, snapshots in labellings.items():
        for unit in range(len(snapshots[0])):
            sequence = [snapshot[unit] for snapshot in snapshots]
            count = switches(sequence)
            if count:
                found.append(
                    {
                        "seed": seed,
                        "unit": unit + 1,
                        "switches": count,
                        "labels": dict(
                            zip(
                                map(str, steps),
                                [label[1] if label else "" for label in sequence],
                                strict=True,
                            )
                        ),
                    }
                )
    found.sort(key=lambda item: (-item["switches"], item["seed"], item["unit"]))
    return found[:top]
