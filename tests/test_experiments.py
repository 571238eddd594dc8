"""Smoke tests of the experiments at tiny configs, and the rotation they rely on."""

import json

import jax
import numpy as np
import pytest

from jaxdissect.rotation import fractional_rotation, random_rotation


def test_random_rotation_is_a_rotation():
    r = random_rotation(jax.random.key(0), 12)
    np.testing.assert_allclose(r @ r.T, np.eye(12), atol=1e-10)
    assert np.linalg.det(r) == pytest.approx(1.0)


@pytest.mark.parametrize("size", [7, 12])
def test_fractional_rotation_interpolates(size):
    r = random_rotation(jax.random.key(1), size)
    np.testing.assert_allclose(fractional_rotation(r, 0.0), np.eye(size), atol=1e-12)
    np.testing.assert_allclose(fractional_rotation(r, 1.0), r, atol=1e-12)
    half = fractional_rotation(r, 0.5)
    np.testing.assert_allclose(half @ half.T, np.eye(size), atol=1e-8)
    np.testing.assert_allclose(half @ half, r, atol=1e-8)
    third = fractional_rotation(r, 1 / 3)
    np.testing.assert_allclose(third @ third @ third, r, atol=1e-8)


def test_training_dynamics_smoke(tmp_path, monkeypatch):
    from experiments import training_dynamics

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    workdir = tmp_path / "td"
    assert (
        training_dynamics.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"])
        == 0
    )
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["curves"]) == {"baseline", "no_dropout"}
    for variation, points in results["curves"].items():
        assert [p["step"] for p in points] == [0, 1, 2, 4, 6]
        for point in points:
            assert point["units"]["total"] >= 0 and point["rotated"]["total"] >= 0
            assert point["eval_accuracy"] is not None
            report = (
                workdir / "dissections" / variation / str(point["step"]) / "conv5" / "report.html"
            )
            assert report.is_file()
    for name in ("unique_detectors.png", "per_category.png", "accuracy.png", "summary.html"):
        assert (workdir / name).stat().st_size > 1000
    # A rerun reuses every checkpoint and dissection.
    before = (workdir / "dissections" / "baseline" / "6" / "conv5" / "tally.csv").stat().st_mtime_ns
    training_dynamics.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"])
    after = (workdir / "dissections" / "baseline" / "6" / "conv5" / "tally.csv").stat().st_mtime_ns
    assert before == after


def test_rotation_smoke(tmp_path, monkeypatch):
    from experiments import rotation

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    workdir = tmp_path / "rot"
    assert rotation.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"]) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["by_iou_threshold"]) == {"0.04", "0.06", "0.08", "0.1"}
    for rows in results["by_iou_threshold"].values():
        assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
        assert rows[0]["unique_std"] == 0.0  # alpha 0: the units themselves
    # Unique detectors can only fall as the threshold rises.
    at = lambda t: [r["unique_mean"] for r in results["by_iou_threshold"][t]]  # noqa: E731
    assert all(a >= b for a, b in zip(at("0.04"), at("0.1"), strict=True))
    assert 0 <= min(results["chance_iou"].values()) < 0.5
    assert (workdir / "rotation.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["width_depth", "supervision", "architectures"])
def test_comparison_smoke(tmp_path, monkeypatch, name):
    import importlib

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    module = importlib.import_module(f"experiments.{name}")
    workdir = tmp_path / name
    assert module.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"]) == 0
    results = json.loads((workdir / "results.json").read_text())
    expected = {
        "width_depth": ["width_x1", "width_x2", "depth_4"],
        "supervision": ["supervised", "untrained", "self_supervised", "fine_tuned"],
        "architectures": ["alexnet_style", "vgg_style", "resnet_style"],
    }[name]
    assert [r["variant"] for r in results["rows"]] == expected
    for row in results["rows"]:
        assert 0.0 <= row["linear_probe"] <= 1.0
        assert (workdir / "dissections" / row["variant"] / row["layer"] / "report.html").is_file()
    if name == "width_depth":
        units = {r["variant"]: r["units"] for r in results["rows"]}
        assert units["width_x2"] == 2 * units["width_x1"]
    assert (workdir / "comparison.png").stat().st_size > 1000


def test_explain_smoke(tmp_path, monkeypatch):
    from experiments import explain

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    workdir = tmp_path / "explain"
    assert explain.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"]) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert len(results["explanations"]) == 2
    for item in results["explanations"]:
        contributions = [u["contribution"] for u in item["units"]]
        assert contributions == sorted(contributions, reverse=True) and len(contributions) == 3
    for scores in results["segmentation"].values():
        assert 0 <= scores["pixel_accuracy"] <= 1 and 0 <= scores["mean_iou"] <= 1
    assert (workdir / "explain.png").stat().st_size > 1000


def test_segmentation_scores_by_hand():
    from experiments.explain import segment, segmentation_scores

    ratio = np.zeros((1, 2, 2, 2))
    ratio[0, 0, 0] = [2.0, 3.0]  # unit 1 wins
    ratio[0, 1, 1] = [1.5, 0.5]  # unit 0 wins
    prediction = segment(ratio, np.array([7, 9]), np.array([True, True]))
    assert prediction.tolist() == [[[9, 0], [0, 7]]]
    truth = np.array([[[9, 9], [0, 5]]])
    scores = segmentation_scores(prediction, truth)
    assert scores["pixel_accuracy"] == pytest.approx(1 / 3)
    assert scores["mean_iou"] == pytest.approx((1 / 2 + 0) / 2)
