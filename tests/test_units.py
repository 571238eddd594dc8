"""Unit-level transitions between two dissections, counted by hand."""

import pytest

from experiments.units import (
    across_seeds,
    category_flow,
    most_switching,
    switches,
    transitions,
    unit_labels,
)

RED, BLUE, SKY, GRASS = ("color", "red"), ("color", "blue"), ("scene", "sky"), ("object", "grass")


def test_unit_labels_take_detectors_only():
    results = {
        "units": [
            {"unit": 2, "category": "scene", "label": "sky", "score": 0.03},
            {"unit": 1, "category": "color", "label": "red", "score": 0.05},
        ]
    }
    assert unit_labels(results, 0.04) == [RED, None]


def test_transitions_by_hand():
    before = [RED, RED, RED, None, SKY, None]
    after = [RED, BLUE, SKY, GRASS, None, None]
    assert transitions(before, after) == {
        "keep": 1,
        "switch_same_category": 1,
        "switch_other_category": 1,
        "gain": 1,
        "lose": 1,
    }
    assert category_flow(before, after) == {
        "color -> color": 2,
        "color -> scene": 1,
        "none -> object": 1,
        "scene -> none": 1,
    }


def test_transitions_need_the_same_units():
    with pytest.raises(ValueError, match="2 units before, 1 after"):
        transitions([RED, None], [RED])


def test_across_seeds_fills_missing_keys_with_zero():
    found = across_seeds([{"keep": 2, "gain": 1}, {"keep": 4}])
    assert found["gain"]["per_seed"] == [1, 0]
    assert found["keep"]["mean"] == 3


def test_most_switching_by_hand():
    # Unit 1 switches twice (red -> blue; blue, a gap, blue -> sky); unit 2 never.
    assert switches([RED, BLUE, None, BLUE, SKY]) == 2
    seed_3 = [[RED, SKY], [BLUE, SKY], [None, None], [BLUE, SKY], [SKY, SKY]]
    seed_4 = [[SKY, RED], [GRASS, RED], [GRASS, RED], [GRASS, BLUE], [GRASS, BLUE]]
    found = most_switching({3: seed_3, 4: seed_4}, [0, 1, 2, 4, 9])
    assert found == [
        {
            "seed": 3,
            "unit": 1,
            "switches": 2,
            "labels": {"0": "red", "1": "blue", "2": "", "4": "blue", "9": "sky"},
        },
        {
            "seed": 4,
            "unit": 1,
            "switches": 1,
            "labels": {"0": "sky", "1": "grass", "2": "grass", "4": "grass", "9": "grass"},
        },
        {
            "seed": 4,
            "unit": 2,
            "switches": 1,
            "labels": {"0": "red", "1": "red", "2": "red", "4": "blue", "9": "blue"},
        },
    ]
    assert len(most_switching({3: seed_3, 4: seed_4}, [0, 1, 2, 4, 9], top=1)) == 1
