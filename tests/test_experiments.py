"""Smoke tests of the experiments at tiny configs, and the rotation they rely on."""

import json

import jax
import numpy as np
import pytest

from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import open_broden
from jaxdissect.rotation import fractional_rotation, random_rotation


def dissection(folder):
    return json.loads((folder / "results.json").read_text())


def unique_detectors(results, threshold=0.04):
    """Distinct (category, top label) among the units scoring above ``threshold``, recounted
    from a dissection's per-unit rows."""
    return len({(r["category"], r["label"]) for r in results["units"] if r["score"] > threshold})


def detectors(results, threshold=0.04):
    return sum(r["score"] > threshold for r in results["units"])


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
        metrics = [
            json.loads(line)
            for line in (workdir / "runs" / variation / "metrics.jsonl").read_text().splitlines()
        ]
        evaluated = {m["step"]: m["eval_accuracy"] for m in metrics if "eval_accuracy" in m}
        for point in points:
            folder = workdir / "dissections" / variation / str(point["step"])
            units, rotated = dissection(folder / "conv5"), dissection(folder / "conv5@rotated")
            assert point["units"]["total"] == unique_detectors(units)
            assert point["units"]["detectors"] == detectors(units)
            assert point["rotated"]["total"] == unique_detectors(rotated)
            assert point["num_units"] == len(units["units"]) == len(rotated["units"])
            assert point["eval_accuracy"] == evaluated[point["step"]]
            assert (folder / "conv5" / "report.html").is_file()
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
    # Each mean recounted from the dissections it summarizes.
    for threshold, rows in results["by_iou_threshold"].items():
        for alpha, row in zip(["0", "0.5", "1"], rows, strict=True):
            names = ["conv5"] if alpha == "0" else [f"conv5@alpha{alpha}-r{i}" for i in (0, 1)]
            found = [dissection(workdir / "dissections" / name) for name in names]
            unique = [unique_detectors(r, float(threshold)) for r in found]
            assert row["unique_mean"] == pytest.approx(np.mean(unique), abs=1e-12)
            assert row["detectors_mean"] == pytest.approx(
                np.mean([detectors(r, float(threshold)) for r in found]), abs=1e-12
            )
    # Chance IoU: a mask of the unit's area A placed at random over P labelled positions
    # meets the G positions of its label in E = A * G / P of them; IoU = E / (A + G - E).
    label_positions = int(np.prod(open_broden(workdir / "probe").label_size))
    for name, chance in results["chance_iou"].items():
        found = dissection(workdir / "dissections" / name)
        ious = []
        for row in found["units"]:
            area = row[row["category"] + "-activation"]
            truth = row[row["category"] + "-truth"]
            expected = area * truth / (found["images"] * label_positions)
            union = area + truth - expected
            ious.append(expected / union if union else 0.0)
        assert chance == pytest.approx(sum(ious) / len(ious), rel=1e-12)
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
        "architectures": [
            "alexnet_style",
            "vgg_style",
            "resnet_style",
            "vit_style",
            *(f"vit_style_block{i}" for i in range(3)),
        ],
    }[name]
    assert [r["variant"] for r in results["rows"]] == expected
    for row in results["rows"]:
        folder = workdir / "dissections" / row["variant"]
        units, rotated = (
            dissection(folder / row["layer"]),
            dissection(folder / (row["layer"] + "@rotated")),
        )
        assert row["unique"]["total"] == unique_detectors(units)
        assert row["unique"]["detectors"] == detectors(units)
        assert row["unique_rotated"]["total"] == unique_detectors(rotated)
        assert row["units"] == len(units["units"])
        # The linear probe's accuracy is a count of the 16 smoke test images.
        correct = row["linear_probe"] * 16
        assert correct == pytest.approx(round(correct), abs=1e-9)
        assert (folder / row["layer"] / "report.html").is_file()
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
    units = dissection(workdir / "dissection" / "layer3")
    assert results["units"] == len(units["units"])
    assert results["interpreted_units"] == detectors(units)
    row_of = {row["unit"]: row for row in units["units"]}
    assert len(results["explanations"]) == 2
    flags = []
    for item in results["explanations"]:
        contributions = [u["contribution"] for u in item["units"]]
        assert contributions == sorted(contributions, reverse=True) and len(contributions) == 3
        for unit in item["units"]:
            row = row_of[unit["unit"]]
            assert (unit["label"], unit["category"], unit["iou"]) == (
                row["label"],
                row["category"],
                row["score"],
            )
            flags.append(unit["concept_in_image"])
    assert results["top_unit_concepts_in_image"] == pytest.approx(np.mean(flags), abs=1e-12)
    # Pixel accuracy is a count of the pixels that carry a label of the category.
    from jaxdissect.data.cache import load_label_arrays

    dataset = open_broden(workdir / "probe")
    planes = load_label_arrays(dataset).label_planes(0, dataset.num_images)
    for category, scores in results["segmentation"].items():
        in_category = dataset.label_category[planes] == dataset.categories.index(category)
        labelled = int(np.sum(np.any((planes > 0) & in_category, axis=1)))
        correct = scores["pixel_accuracy"] * labelled
        assert correct == pytest.approx(round(correct), abs=1e-6)
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


def test_nested_overrides_reach_the_dissection(tmp_path, monkeypatch):
    """``dissect.KEY=VALUE`` and ``probe.KEY=VALUE`` set the study's nested configs: the
    DissectConfig handed to the pipeline and the probe set drawn, recorded nested in
    config.json."""
    from experiments import common, rotation

    class Dissected(Exception):
        pass

    used = []

    def record(dataset, source, config, out, **kwargs):
        used.append((dataset.num_images, config))
        raise Dissected

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(common, "dissect", record)
    workdir = tmp_path / "rot"
    overrides = ["dissect.union=lite", "dissect.kernel=xla", "probe.images=12", "steps=1"]
    with pytest.raises(Dissected):
        rotation.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress", *overrides])
    assert used == [(12, DissectConfig(union="lite", kernel="xla", batch_size=20))]
    recorded = json.loads((workdir / "config.json").read_text())
    assert recorded["dissect"]["union"] == "lite" and recorded["dissect"]["kernel"] == "xla"
    assert recorded["probe"] == {"directory": None, "images": 12, "image_size": 32, "seed": 1}


@pytest.mark.parametrize(
    "override, message",
    [
        ("dissect.unions=lite", "'dissect.unions=lite': expected key=value with key a field of"),
        ("dissect.union=lit", "union must be one of ('paper', 'lite'), got 'lit'"),
        ("probe.images=many", "'probe.images=many': invalid literal for int()"),
        ("dissect.skip_inactive=ture", "expected true or false, got 'ture'"),
        ("probes.images=1", "'probes' is not a section; sections: dissect, probe"),
        ("dissect=lite", "dissect is a section; set its fields as dissect.KEY=VALUE"),
    ],
)
def test_bad_overrides_are_refused(capsys, override, message):
    from experiments import training_dynamics

    with pytest.raises(SystemExit) as exit:
        training_dynamics.main(["--config", "smoke", override])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error
    if override == "dissect.unions=lite":
        assert error.endswith("top_images, union")
