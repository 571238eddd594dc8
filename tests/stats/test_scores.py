from fractions import Fraction
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.report.results import TALLY_FIELDS as TALLY
from jaxdissect.report.results import unit_rows
from jaxdissect.stats import scores


def test_iou_matches_definition_and_skips_uncategorised():
    rng = np.random.default_rng(0)
    label_category = np.array([-1, 0, 0, 1, 1, 1, -1])
    G = rng.integers(1, 100, size=7)
    A = rng.integers(1, 100, size=(3, 2))
    I = np.minimum(rng.integers(0, 50, size=(3, 7)), np.minimum(G, 40))
    got = scores.iou(G, I, A, label_category, dtype=np.float64)
    single = scores.iou(G, I, A, label_category)
    assert got.dtype == np.float64 and single.dtype == np.float32
    for u in range(3):
        for label in range(7):
            c = label_category[label]
            expected = 0.0 if c < 0 else I[u, label] / (A[u, c] + G[label] - I[u, label])
            assert got[u, label] == expected
            # Counts below 2**24 are exact in float32: one correctly rounded division.
            union = 0 if c < 0 else int(A[u, c] + G[label] - I[u, label])
            want = np.float32(Fraction(int(I[u, label]), union)) if c >= 0 else 0.0
            assert single[u, label] == want


def test_empty_union_scores_zero():
    got = scores.iou(
        np.array([0, 0]), np.zeros((1, 2), int), np.zeros((1, 1), int), np.array([-1, 0])
    )
    assert got.tolist() == [[0.0, 0.0]]


def test_first_label_and_first_category_win_ties():
    label_category = np.array([-1, 0, 0, 1, 1])
    iou = np.array([[0.0, 0.2, 0.2, 0.2, 0.1], [0.0, 0.1, 0.3, 0.05, 0.3]])
    labels = scores.label_units(iou, label_category, 2)
    assert labels.category_label.tolist() == [[1, 3], [2, 4]]
    assert labels.label.tolist() == [1, 2]  # unit 0: color and object tie at 0.2, first wins
    assert labels.category.tolist() == [0, 0]
    assert labels.score.tolist() == [0.2, 0.3]


def test_summary_counting_rules():
    # 4 units; two detect "dog" (object), one detects "red" (color), one is below threshold.
    summary = scores.summarize(
        ["color", "object"],
        unit_category=["object", "object", "color", "object"],
        unit_label=["dog", "dog", "red", "cat"],
        score=np.array([0.3, 0.2, 0.05, 0.04]),
        category_label=[["red", "dog"], ["blue", "dog"], ["red", "cat"], ["red", "cat"]],
        category_iou=np.array([[0.05, 0.3], [0.06, 0.2], [0.05, 0.01], [0.01, 0.04]]),
    )
    assert summary["detectors"] == 3
    assert summary["detectors_per_category"] == {"color": 1, "object": 2}
    assert summary["unique_top_label"] == {"total": 2, "per_category": {"color": 1, "object": 1}}
    # Per-category rule: color has red (units 0, 2) and blue (unit 1); object has dog.
    assert summary["unique_per_category"] == {"total": 3, "per_category": {"color": 2, "object": 1}}


def test_all_zero_category_and_unit_get_no_label():
    # Unit 0: category 0 all zero, category 1 scores. Unit 1: every IoU is 0.
    label_category = np.array([-1, 0, 0, 1, 1])
    iou = np.array([[0.0, 0.0, 0.0, 0.0, 0.1], [0.0, 0.0, 0.0, 0.0, 0.0]])
    for given in (iou, jnp.asarray(iou, jnp.float32)):
        labels = scores.label_units(given, label_category, 2)
        assert np.asarray(labels.category_label).tolist() == [[-1, 4], [-1, -1]]
        assert np.asarray(labels.category_iou).tolist() == [[0.0, np.float32(0.1)], [0.0, 0.0]]
        assert np.asarray(labels.label).tolist() == [4, -1]
        assert np.asarray(labels.category).tolist() == [1, 0]


def test_no_label_rows_in_tally_csv():
    labels = scores.label_units(np.array([[0.0, 0.0, 0.3], [0.0, 0.0, 0.0]]), [-1, 0, 1], 2)
    dissection = SimpleNamespace(
        labels=labels,
        label_area=np.array([0, 5, 7]),
        intersection=np.array([[0, 0, 3], [0, 0, 0]]),
        unit_area=np.array([[4, 6], [0, 0]]),
    )
    dataset = SimpleNamespace(label_names=("-", "red", "dog"), categories=("color", "object"))
    rows = unit_rows(dissection, dataset)
    assert rows[1] == {
        "unit": 2,
        "category": "color",  # the first category; every IoU is 0
        "label": "",
        "score": 0.0,
        **{f"{c}-{f}": "" if f == "label" else 0 for c in ("color", "object") for f in TALLY},
    }
    assert (rows[0]["color-label"], rows[0]["color-truth"], rows[0]["color-iou"]) == ("", 0, 0.0)
    assert (rows[0]["label"], rows[0]["category"], rows[0]["object-intersect"]) == (
        "dog",
        "object",
        3,
    )


def test_jax_iou_is_the_rounded_float64_iou():
    rng = np.random.default_rng(1)
    label_category = np.array([-1, 0, 0, 1, 1, 1, -1])
    for high in (1000, 2**23, 2**31 - 1):  # unions below 2**24, then up to 2**32
        G = rng.integers(high // 2, high, size=7)
        A = rng.integers(high // 2, high, size=(4, 2))
        I = np.minimum(rng.integers(0, high, size=(4, 7)), np.minimum(G, A.min()))
        exact = scores.iou(G, I, A, label_category, dtype=np.float64)
        got = np.asarray(
            jax.jit(scores.iou)(jnp.asarray(G), jnp.asarray(I), jnp.asarray(A), label_category)
        )
        assert got.dtype == np.float32
        if high <= 2**23:  # I and the union exact in float32: only the quotient rounds
            for u, label in np.ndindex(got.shape):
                c = label_category[label]
                union = 0 if c < 0 else A[u, c] + G[label] - I[u, label]
                want = 0.0 if c < 0 else Fraction(int(I[u, label]), int(union))
                assert got[u, label] == np.float32(float(want))
        bound = 3 * 2.0**-24 * exact  # I, the union and the quotient each rounded once
        assert np.all(np.abs(got.astype(np.float64) - exact) <= bound)


def test_jitted_label_units_equal_host_on_the_same_scores():
    rng = np.random.default_rng(2)
    label_category = rng.integers(-1, 3, size=40)
    iou = (rng.integers(0, 5, size=(30, 40)) / 8).astype(np.float32)  # many ties and zeros
    host = scores.label_units(iou, label_category, 3)
    jitted = jax.jit(scores.label_units, static_argnums=2)(jnp.asarray(iou), label_category, 3)
    for name in host._fields:
        np.testing.assert_array_equal(np.asarray(getattr(jitted, name)), getattr(host, name))
    # The slow reference: first label of the category with the largest IoU.
    for u in range(30):
        for c in range(3):
            members = [label for label in range(40) if label_category[label] == c]
            best = max(members, key=lambda label: (iou[u, label], -label))
            assert host.category_label[u, c] == (best if iou[u, best] > 0 else -1)


def _slow_float32_iou(G, I, A, label_category):
    """The documented float32 IoU, one count at a time: the exact integer union, I and the
    union each rounded once to float32, one float32 division."""
    out = np.zeros(I.shape, np.float32)
    for u in range(I.shape[0]):
        for label in range(I.shape[1]):
            c = int(label_category[label])
            union = 0 if c < 0 else int(A[u, c]) + int(G[label]) - int(I[u, label])
            if union > 0:
                out[u, label] = np.float32(int(I[u, label])) / np.float32(union)
    return out


def test_iou_is_one_answer_on_host_jax_and_jit():
    rng = np.random.default_rng(3)
    label_category = np.array([-1, 0, 0, 1, 1, 1, -1, 2])
    for high in (1000, 2**23, 2**25, 2**31 - 1):
        G = rng.integers(high // 2, high, size=8)
        A = rng.integers(high // 2, high, size=(5, 3))
        I = np.minimum(rng.integers(0, high, size=(5, 8)), np.minimum(G, A.min()))
        host = scores.iou(G, I, A, label_category)
        eager = scores.iou(jnp.asarray(G), jnp.asarray(I), jnp.asarray(A), label_category)
        jitted = jax.jit(scores.iou)(jnp.asarray(G), jnp.asarray(I), jnp.asarray(A), label_category)
        host32 = scores.iou(
            G.astype(np.int32), I.astype(np.int32), A.astype(np.int32), label_category
        )
        for got in (host, eager, jitted, host32):
            assert np.asarray(got).dtype == np.float32
            np.testing.assert_array_equal(
                np.asarray(got).view(np.uint32),
                _slow_float32_iou(G, I, A, label_category).view(np.uint32),
            )
        exact = np.array(
            [
                [
                    float(Fraction(int(I[u, l]), max(1, int(A[u, c] + G[l] - I[u, l]))))
                    if c >= 0
                    else 0.0
                    for l, c in enumerate(label_category)
                ]
                for u in range(5)
            ]
        )
        assert np.all(np.abs(host.astype(np.float64) - exact) <= 3 * 2.0**-24 * exact)


def test_labels_do_not_change_on_near_ties_between_host_and_jit():
    """Two labels of one category whose exact IoUs differ by 2**-26 (relative): float32
    rounds both to 0.5, and host, jax and jit all pick the first; float64, asked for
    explicitly, tells them apart."""
    label_category = np.array([-1, 0, 0])
    G = np.array([0, 2**25, 2**25 + 1])
    I = np.array([[0, 2**25, 2**25 + 1]])
    A = np.array([[2**26]])  # G = I, so each union is A
    host = scores.label_units(scores.iou(G, I, A, label_category), label_category, 1)
    jitted = jax.jit(
        lambda g, i, a: scores.label_units(scores.iou(g, i, a, label_category), label_category, 1)
    )(jnp.asarray(G), jnp.asarray(I), jnp.asarray(A))
    assert host.label.tolist() == [1] and np.asarray(jitted.label).tolist() == [1]
    assert host.score.tolist() == [0.5] and np.asarray(jitted.score).tolist() == [0.5]
    wide = scores.label_units(
        scores.iou(G, I, A, label_category, dtype=np.float64), label_category, 1
    )
    assert wide.label.tolist() == [2]


def test_iou_refuses_float64_of_jax_counts_without_x64_and_other_dtypes():
    import pytest

    counts = (jnp.zeros(2, jnp.int32), jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 1), jnp.int32))
    with pytest.raises(ValueError, match="jax_enable_x64"):
        scores.iou(*counts, np.array([-1, 0]), dtype=np.float64)
    with pytest.raises(ValueError, match="float32 or float64"):
        scores.iou(*(np.asarray(c) for c in counts), np.array([-1, 0]), dtype=np.float16)


def test_label_units_refuses_a_category_index_out_of_range():
    # Issue 27, V8: a label whose category was >= num_categories (or below -1) matched no
    # category and was silently never chosen; iou read another category's areas for it.
    import pytest

    from jaxdissect.errors import DissectError

    iou = np.array([[0.1, 0.9, 0.2]], np.float32)
    for label_category, bad in (([0, 2, 1], 2), ([0, -2, 1], -2)):
        with pytest.raises(DissectError, match=rf"`label_category`\[1\] is {bad}: .*\[-1, 2\)"):
            scores.label_units(iou, np.array(label_category), 2)
        with pytest.raises(DissectError, match=rf"`label_category`\[1\] is {bad}"):
            scores.label_units(jnp.asarray(iou), jnp.asarray(label_category), 2)
        counts = (np.ones(3, int), np.ones((1, 3), int), np.ones((1, 2), int))
        with pytest.raises(DissectError, match=rf"`label_category`\[1\] is {bad}"):
            scores.iou(*counts, np.array(label_category))
    # -1 (no category) stays allowed.
    assert scores.label_units(iou, np.array([0, -1, 1]), 2).label.tolist() == [2]


def test_iou_refuses_impossible_counts_wherever_they_are_known():
    # Issue 27, V8: a negative count or an intersection above its label's area gave
    # meaningless IoUs (negative, or above 1). NumPy and eager jax counts are refused alike;
    # under jax.jit the values are unknown (documented), and the answer keeps its dtype.
    import pytest

    from jaxdissect.errors import DissectError

    G, I, A = np.array([3, 4]), np.array([[1, 2]]), np.array([[5]])
    label_category = np.array([0, 0])
    cases = (
        ((G, np.array([[1, -2]]), A), r"`intersection`\[0, 1\] is -2: counts cannot be negative"),
        ((np.array([3, -1]), I, A), r"`label_area`\[1\] is -1: counts cannot be negative"),
        ((G, I, np.array([[-5]])), r"`unit_area`\[0, 0\] is -5: counts cannot be negative"),
        ((G, np.array([[1, 5]]), A), r"`intersection`\[0, 1\] is 5: .*`label_area`\[1\] is 4"),
    )
    for counts, message in cases:
        with pytest.raises(DissectError, match=message):
            scores.iou(*counts, label_category)
        with pytest.raises(DissectError, match=message):
            scores.iou(*(jnp.asarray(c) for c in counts), label_category)
        jitted = jax.jit(scores.iou)(*(jnp.asarray(c) for c in counts), label_category)
        assert jitted.dtype == np.float32
    assert scores.iou(G, I, A, label_category).tolist() == [[np.float32(1 / 7), np.float32(2 / 7)]]


def test_iou_refuses_fractional_counts_and_counts_its_integers_cannot_hold():
    # Issue 27: float counts were truncated to integers silently (3.5 counted as 3), and a
    # count above int32 wrapped when jax computed in int32. Whole float counts still work.
    import pytest

    from jaxdissect.errors import DissectError

    G, I, A, category = np.array([3, 4]), np.array([[1, 2]]), np.array([[5]]), np.array([0, 0])
    with pytest.raises(DissectError, match=r"`label_area`\[1\] is 4.5: counts are whole"):
        scores.iou(np.array([3, 4.5]), I, A, category)
    with pytest.raises(DissectError, match=r"`unit_area`\[0, 0\] is 1e\+30: .*do not fit int64"):
        scores.iou(G, I, np.array([[1e30]]), category)
    big = np.array([[2**40]])
    with pytest.raises(DissectError, match=r"`unit_area`\[0, 0\] is 1099511627776: .*int32"):
        scores.iou(jnp.asarray(G), I, big, category)
    assert scores.iou(G, I, big, category)[0, 0] == np.float32(1 / (2**40 + 2))
    whole = scores.iou(G.astype(float), I.astype(float), A.astype(float), category)
    assert whole.tolist() == scores.iou(G, I, A, category).tolist()
