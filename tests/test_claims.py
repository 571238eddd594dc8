"""Intervals across seeds and claim verdicts, against values computed by hand."""

import pytest

from experiments.claims import claim, interval, slope, t_quantile, verdict


@pytest.mark.parametrize(
    "dof, expected",
    # Two-sided 95 % critical values of Student's t (standard tables, 6 decimals).
    [(1, 12.706205), (2, 4.302653), (3, 3.182446), (4, 2.776445), (9, 2.262157), (30, 2.042272)],
)
def test_t_quantile_matches_the_tables(dof, expected):
    assert t_quantile(dof) == pytest.approx(expected, abs=5e-7)


def test_t_quantile_refuses_bad_dof():
    with pytest.raises(ValueError, match="dof >= 1"):
        t_quantile(0)


def test_interval_three_seeds_by_hand():
    # mean 2, sd 1, half width t(2) * 1 / sqrt(3) = 4.302653 * 0.5773503 = 2.484138
    found = interval([1, 2, 3])
    assert found["per_seed"] == [1, 2, 3]
    assert found["mean"] == 2
    assert found["ci95"] == pytest.approx([-0.484138, 4.484138], abs=2e-6)


def test_interval_five_seeds_by_hand():
    # mean 6, sd sqrt(2.5), half width 2.776445 * sqrt(2.5 / 5) = 1.963243
    assert interval([4, 8, 6, 5, 7])["ci95"] == pytest.approx([4.036757, 7.963243], abs=2e-6)


def test_one_seed_has_no_interval_and_no_verdict():
    assert interval([7]) == {"per_seed": [7], "mean": 7, "ci95": None}
    found = claim("a beats b", ("a", "b"), [7], [4], [0])
    assert found["ci95"] is None and found["verdict"] == "inconclusive"


def test_claim_pairs_differences_by_seed():
    # Differences 3, 2, 4: mean 3, sd 1, half width 2.484138: [0.515862, 5.484138].
    found = claim("units beat rotation", ("units", "rotated"), [7, 10, 5], [4, 8, 1], [0, 1, 2])
    assert found["per_seed"] == [[7, 4], [10, 8], [5, 1]]
    assert found["seeds"] == [0, 1, 2]
    assert found["mean_difference"] == 3
    assert found["ci95"] == pytest.approx([0.515862, 5.484138], abs=2e-6)
    assert found["verdict"] == "replicated"
    # The same numbers against a paper that says the difference is negative.
    assert claim("x", ("a", "b"), [7, 10, 5], [4, 8, 1], [0, 1, 2], -1)["verdict"] == (
        "contradicted"
    )


@pytest.mark.parametrize(
    "ci95, sign, expected",
    [
        ([0.5, 2.0], 1, "replicated"),
        ([-2.0, -0.5], 1, "contradicted"),
        ([-0.5, 2.0], 1, "inconclusive"),
        ([0.0, 2.0], 1, "inconclusive"),  # touching 0 is not on one side
        ([-2.0, -0.5], -1, "replicated"),
        ([0.5, 2.0], -1, "contradicted"),
        (None, 1, "inconclusive"),
    ],
)
def test_verdict(ci95, sign, expected):
    assert verdict(ci95, sign) == expected


def test_claim_refuses_unpaired_values():
    with pytest.raises(ValueError, match="2, 3 values, 2 seeds"):
        claim("x", ("a", "b"), [1, 2], [1, 2, 3], [0, 1])


def test_slope_by_hand():
    # y = 10 - 4x exactly, and a symmetric wobble that leaves the slope unchanged.
    assert slope([0, 0.5, 1], [10, 8, 6]) == pytest.approx(-4)
    assert slope([0, 0.5, 1], [10, 9, 6]) == pytest.approx(-4)


def test_seeds_needed_by_hand():
    from experiments.claims import seeds_needed

    # mean 1, sd 1: t(n-1)/sqrt(n) < 1 first at n = 7 (2.446912/2.645751 = 0.925; at n = 6,
    # 2.570582/2.449490 = 1.049).
    values = [0, 1, 2, 0, 1, 2]
    mean = sum(values) / 6
    sd = (sum((v - mean) ** 2 for v in values) / 5) ** 0.5
    scaled = [(v - mean) / sd + 1 for v in values]
    assert seeds_needed(scaled) == 7
    assert seeds_needed([1.0, -1.0]) is None  # no effect
    assert seeds_needed([2.0]) is None  # no spread to estimate
    assert seeds_needed([3.0, 3.0, 3.0]) == 2  # no spread: any two seeds decide
    assert seeds_needed([0.01, -0.009], limit=100) is None


def test_claim_records_seeds_needed_only_when_undecided():
    undecided = claim("s", ("a", "b"), [2, 3, 1], [1, 1, 2], [0, 1, 2])
    assert undecided["verdict"] == "inconclusive"
    assert undecided["seeds_needed"] is not None and undecided["seeds_needed"] > 3
    decided = claim("s", ("a", "b"), [5, 6, 7], [1, 1, 1], [0, 1, 2])
    assert decided["verdict"] == "replicated" and decided["seeds_needed"] is None
