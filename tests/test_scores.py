import numpy as np

from jaxdissect import scores


def test_iou_matches_definition_and_skips_uncategorised():
    rng = np.random.default_rng(0)
    label_category = np.array([-1, 0, 0, 1, 1, 1, -1])
    G = rng.integers(1, 100, size=7)
    A = rng.integers(1, 100, size=(3, 2))
    I = np.minimum(rng.integers(0, 50, size=(3, 7)), np.minimum(G, 40))
    got = scores.iou(G, I, A, label_category)
    for u in range(3):
        for label in range(7):
            c = label_category[label]
            expected = 0.0 if c < 0 else I[u, label] / (A[u, c] + G[label] - I[u, label])
            assert got[u, label] == expected


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
