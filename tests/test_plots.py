"""The studies' plot helpers: ticks at every scale, bands inside the possible range, and
captions whose statements come from the computed claims."""

from experiments.plots import band, iteration_ticks, pyplot, verdicts_sentence


def test_iteration_ticks_label_every_scale():
    assert iteration_ticks(6) == [0, 1, 2, 6]  # 5 and 6 too close to read both
    assert iteration_ticks(9) == [0, 1, 2, 5, 9]
    assert iteration_ticks(600) == [0, 1, 2, 5, 10, 20, 50, 100, 200, 600]
    assert iteration_ticks(500) == [0, 1, 2, 5, 10, 20, 50, 100, 200, 500]
    assert iteration_ticks(300_000)[-3:] == [100_000, 200_000, 300_000]
    assert iteration_ticks(0) == [0]


def test_band_is_clipped_to_the_possible_range():
    plt = pyplot()
    figure, axis = plt.subplots()
    stats = [{"mean": 0.5, "ci95": [-1.5, 2.5]}, {"mean": 0.9, "ci95": [0.2, 1.6]}]
    band(axis, [0, 1], stats, "C0", low=0, high=1)
    vertices = axis.collections[0].get_paths()[0].vertices
    assert vertices[:, 1].min() == 0 and vertices[:, 1].max() == 1
    plt.close(figure)


def test_caption_statements_come_from_the_claims():
    claims = [
        {"claim": "no_dropout: unique detectors emerge", "verdict": "contradicted", "seeds": [0, 1]}
    ]
    sentence = verdicts_sentence(claims)
    assert "no_dropout: unique detectors emerge: contradicted (2 seeds)" in sentence
    assert verdicts_sentence([]) == ""
