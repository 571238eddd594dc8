"""Regression tests for the adversarial findings J4-J16: every bad argument of the
statistics' public functions is a DissectError naming it, raised before allocating."""

import re

import numpy as np
import pytest

import jaxdissect as jd
from jaxdissect.errors import DissectError
from jaxdissect.stats import checks


def _refused(call, *names):
    with pytest.raises(DissectError) as caught:
        call()
    for name in names:
        assert name in caught.value.arguments, (caught.value.arguments, str(caught.value))
        assert f"`{name}`" in str(caught.value)
    return caught.value


ACTS = np.arange(2 * 3 * 3 * 4, dtype=np.float32).reshape(2, 3, 3, 4)


@pytest.mark.parametrize(
    ("call", "names"),
    [
        # J4/J5: non-real q, non-integer counts
        (lambda: jd.quantile_statistic("0.1", 100), ("q",)),
        (lambda: jd.quantile_statistic(0.1 + 0j, 100), ("q",)),
        (lambda: jd.quantile_statistic(True, 100), ("q",)),
        (lambda: jd.quantile_statistic(0.1, 1.5), ("positions",)),
        (lambda: jd.quantile_statistic(0.1, "100"), ("positions",)),
        (lambda: jd.quantile_statistic(0.1, 100).init("4"), ("units",)),
        (lambda: jd.quantile_statistic(0.1, 18).init(2.5), ("units",)),
        (lambda: jd.quantile_init(2.0, 0.1, 18), ("units",)),
        (lambda: jd.top_images_statistic(1.5), ("k",)),
        (lambda: jd.top_images_statistic("3"), ("k",)),
        (lambda: jd.tally_init(4, 3.0, 2), ("num_labels",)),
        (lambda: jd.tally_init(4, 3, 2.5), ("num_categories",)),
        # J7: buffer_size
        (lambda: jd.quantile_statistic(0.005, 18, buffer_size=-1), ("buffer_size",)),
        (lambda: jd.quantile_statistic(0.005, 18, buffer_size=0), ("buffer_size",)),
        (lambda: jd.quantile_statistic(0.005, 18, buffer_size=2.0), ("buffer_size",)),
        # J11/J12: tally settings
        (lambda: jd.tally_statistic(3, [-1, 0.5, 1]), ("label_category",)),
        (lambda: jd.tally_statistic(3, ["a", "b", "c"]), ("label_category",)),
        (lambda: jd.tally_statistic(3, [-2, 0, 1]), ("label_category",)),
        (lambda: jd.tally_statistic(3, [-1, 0, 1], num_categories=1), ("label_category",)),
        (lambda: jd.tally_statistic(0, []), ("num_labels",)),
        (lambda: jd.tally_statistic(3, [-1, 0, 1], num_slots=0), ("num_slots",)),
        (lambda: jd.tally_statistic(3, [-1, 0, 1], max_active=0), ("max_active",)),
        (lambda: jd.tally_statistic(3, [-1, 0, 1], max_active=-2), ("max_active",)),
        (lambda: jd.tally_statistic(3, [-1, 0, 1], num_categories=0), ("num_categories",)),
        # J13: a zero map size
        (lambda: jd.top_images_statistic(3).init(4, 0, 3), ("height",)),
        (lambda: jd.top_images_statistic(3).init(4, 3, 0), ("width",)),
        (lambda: jd.top_images_statistic(3).init(0, 3, 3), ("units",)),
    ],
)
def test_bad_settings_are_refused_naming_the_argument(call, names):
    _refused(call, *names)


@pytest.mark.parametrize(
    ("call", "names"),
    [
        (lambda: jd.quantile_statistic(0.005, 100).init(10**9), ("units",)),
        (lambda: jd.quantile_init(10**9, 0.005, 100), ("units",)),
        (lambda: jd.tally_statistic(3, [-1, 0, 1]).init(10**9), ("units",)),
        (lambda: jd.tally_init(4, 10**9, 2), ("num_labels",)),
        (lambda: jd.top_images_statistic(5).init(10**9, 7, 7), ("units",)),
    ],
)
def test_states_beyond_the_bound_are_refused_before_allocating(call, names):
    error = _refused(call, *names)
    assert str(checks.MAX_STATE_BYTES) in str(error)


@pytest.mark.parametrize("xp", ["numpy", "jax"])
@pytest.mark.parametrize(
    ("acts", "valid", "names"),
    [
        (ACTS[0], None, ("acts",)),  # 3-D
        (ACTS.tolist(), None, ("acts",)),  # a list
        (ACTS, np.array([True, True, False]), ("valid",)),  # wrong length
        (ACTS, np.array([1.0, 0.5], np.float32), ("valid",)),  # not bool
        (np.where(ACTS == 5, np.nan, ACTS), None, ("acts",)),
        (np.where(ACTS == 5, np.inf, ACTS), None, ("acts",)),
        (np.where(ACTS == 5, -np.inf, ACTS), None, ("acts",)),
    ],
)
def test_quantile_update_refuses_malformed_batches(xp, acts, valid, names):
    from jaxdissect.runtime import jnp

    if xp == "jax" and isinstance(acts, np.ndarray):
        acts = jnp.asarray(acts)
        valid = None if valid is None else jnp.asarray(valid)
    statistic = jd.quantile_statistic(0.1, 2 * 3 * 3)
    _refused(lambda: statistic.update(statistic.init(4), acts, valid), *names)
    _refused(lambda: jd.quantile_update(jd.quantile_init(4, 0.1, 18), acts, valid), *names)


def test_quantile_update_refuses_more_values_than_positions():
    statistic = jd.quantile_statistic(0.1, 2 * 3 * 3)
    state = statistic.update(statistic.init(4), ACTS)
    _refused(lambda: statistic.update(state, ACTS), "positions")


def test_valid_inputs_keep_their_answer():
    statistic = jd.quantile_statistic(np.float64(0.1), np.int64(18), buffer_size=np.int32(8))
    state = statistic.update(statistic.init(np.int64(4)), ACTS, np.array([True, True]))
    expected = np.quantile(ACTS.reshape(-1, 4), 0.9, axis=0).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(statistic.result(state)), expected)
    assert statistic.result(state).dtype == np.float32


def test_top_images_update_refuses_indices_of_the_wrong_length():
    statistic = jd.top_images_statistic(2)
    state = statistic.init(4, 3, 3)
    _refused(lambda: statistic.update(state, ACTS, np.arange(3)), "indices")
    _refused(lambda: statistic.update(state, ACTS, np.arange(2), np.ones(3, bool)), "valid")


COUNTS = {
    "label_area": np.array([10, 10, 10]),
    "intersection": np.array([[1, 2, 3], [0, 0, 1]]),
    "unit_area": np.array([[5, 5], [5, 5]]),
    "label_category": np.array([-1, 0, 1]),
}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("label_area", np.array([10.0, np.nan, 10.0])),
        ("label_area", np.array([10.0, np.inf, 10.0])),
        ("label_area", np.array(["10", "10", "10"])),
        ("unit_area", np.array([[5.0, np.inf], [5.0, 5.0]])),
        ("intersection", np.array([[1.0, np.nan, 3.0], [0.0, 0.0, 1.0]])),
        ("label_category", np.array([-1.0, 0.0, 1.0])),
        ("label_category", np.array(["a", "b", "c"])),
    ],
)
def test_iou_refuses_bad_counts(name, value):
    counts = {**COUNTS, name: value}
    _refused(
        lambda: jd.iou(
            counts["label_area"],
            counts["intersection"],
            counts["unit_area"],
            counts["label_category"],
        ),
        name,
    )


@pytest.mark.parametrize("num_categories", [0, -1, 1.5, "2", 10**12, 4])
def test_label_units_refuses_bad_num_categories(num_categories):
    scores = np.array([[0.1, 0.2, 0.3]], np.float32)
    _refused(lambda: jd.label_units(scores, np.array([-1, 0, 1]), num_categories), "num_categories")


def test_label_units_keeps_valid_answers():
    scores = np.array([[0.1, 0.2, 0.3]], np.float32)
    labels = jd.label_units(scores, np.array([-1, 0, 1]), 2)
    assert labels.label.tolist() == [2] and labels.category.tolist() == [1]
    labels = jd.label_units(scores, np.array([-1, 0, 1]), 3)  # an empty category is fine
    assert labels.category_label.shape == (1, 3)


def _tally_batch(**changes):
    """One small valid batch for ``tally_update`` (3 units, 5 labels, 2 categories), with
    ``changes`` applied."""
    from jaxdissect.stats.upsample import bilinear_matrix

    batch = dict(
        acts=np.zeros((2, 4, 4, 3), np.float32),
        thresholds=np.zeros(3, np.float32),
        label_planes=np.ones((2, 1, 8, 8), np.int32),
        image_labels=np.zeros((2, 1), np.int32),
        label_category=np.array([-1, 0, 0, 1, 1]),
        row_matrix=bilinear_matrix(8, 4),
        col_matrix=bilinear_matrix(8, 4),
    )
    return {**batch, **changes}


@pytest.mark.parametrize(
    ("changes", "name", "message"),
    [
        # Issue 27: a batch that disagreed with the state was broadcast, clamped or dropped
        # by jax (or failed deep inside it), and counted the wrong pixels or none.
        ({"acts": np.zeros((2, 4, 4, 4), np.float32)}, "acts", "U is 4, but 3 in the state"),
        ({"thresholds": np.zeros((3, 1), np.float32)}, "thresholds", "it needs 1 axes"),
        ({"label_planes": np.ones((3, 1, 8, 8), np.int32)}, "label_planes", "B is 3, but 2"),
        ({"label_planes": np.ones((2, 1, 8, 8), np.float32)}, "label_planes", "integer label"),
        ({"label_planes": np.full((2, 1, 8, 8), 5)}, "label_planes", r"holds 5: .*\[0, 5\)"),
        ({"image_labels": np.full((2, 1), -1)}, "image_labels", "holds -1"),
        ({"label_category": np.array([0, 1])}, "label_category", "L is 2, but 5 in the state"),
        ({"row_matrix": np.eye(4, dtype=np.float32)}, "row_matrix", "sh is 4, but 8"),
        ({"valid": np.ones(3, bool)}, "valid", "B is 3, but 2"),
    ],
)
def test_tally_update_refuses_a_batch_that_disagrees_with_its_state(changes, name, message):
    state = jd.tally_init(3, 5, 2)
    error = _refused(lambda: jd.tally_update(state, **_tally_batch(**changes)), name)
    assert re.search(message, str(error)), str(error)


def test_tally_update_counts_a_valid_batch():
    state = jd.tally_update(jd.tally_init(3, 5, 2), **_tally_batch())
    # Every pixel is label 1 and every activation 0 > no threshold of 0: nothing is active.
    assert state.label_area.tolist() == [0, 2 * 64, 0, 0, 0]
    assert int(np.sum(state.intersection)) == 0
