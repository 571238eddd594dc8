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


def test_a_figure_names_its_command_commit_and_machine(tmp_path):
    from experiments.plots import provenance_line, save_figure

    provenance = {
        "command": "python -m experiments.rotation seeds=10",
        "git_commit": "0123456789abcdef",
        "git_dirty": False,
        "machine": {"cpu_model": "Xeon", "cpus": 2, "devices": ["cpu"], "xla_cpu_max_isa": "AVX2"},
    }
    line = provenance_line(provenance)
    assert line == (
        "python -m experiments.rotation seeds=10 | commit 0123456789 | Xeon, 2 CPUs, devices "
        "cpu, XLA CPU ISA AVX2"
    )
    assert "with uncommitted changes" in provenance_line({**provenance, "git_dirty": True})
    assert provenance_line(None) == "command not recorded | commit unknown"
    plt = pyplot()
    figure, _axis = plt.subplots()
    save_figure(figure, tmp_path / "f.png", provenance)
    assert (tmp_path / "f.png").stat().st_size > 0
    assert not plt.get_fignums()  # closed


def test_study_provenance_records_the_command():
    from experiments.common import provenance

    assert provenance()["command"].startswith("python ")
