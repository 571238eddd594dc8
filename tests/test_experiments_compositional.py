"""Smoke test of the compositional-explanations study at its tiny config (2 seeds)."""

import json
import math
import re

import numpy as np

# The 0.975 quantile of Student's t with 1 degree of freedom (tan(0.475 pi)), from tables.
T_1 = 12.706204736


def check_interval(stat, values):
    """``stat`` is the per-seed values, their mean and the two-seed t-interval."""
    assert stat["per_seed"] == values
    mean = sum(values) / len(values)
    assert math.isclose(stat["mean"], mean, rel_tol=1e-12, abs_tol=1e-15)
    half = T_1 * abs(values[0] - values[1]) / 2  # sd / sqrt(2) with n = 2
    assert np.allclose(stat["ci95"], [mean - half, mean + half], rtol=1e-9, atol=1e-12)


def test_compositional_smoke(tmp_path, monkeypatch):
    from experiments import compositional

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    workdir = tmp_path / "compositional"
    assert (
        compositional.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"]) == 0
    )
    results = json.loads((workdir / "results.json").read_text())
    assert results["study"] == "compositional"
    assert results["seeds"] == [0, 1]
    assert set(results["bases"]) == {"units", "rotated"}
    margin = results["config"]["margin"]
    for values in results["bases"].values():
        by_seed = values["units_by_seed"]
        assert set(by_seed) == {"0", "1"}
        ious = values["iou_by_length"]
        assert len(ious) == 3
        for index in range(2):
            # The exact optimum over formulas of length <= n cannot fall as n grows.
            assert ious[0]["per_seed"][index] <= ious[1]["per_seed"][index]
            assert ious[1]["per_seed"][index] <= ious[2]["per_seed"][index]
        assert values["certified"]["per_seed"] == [1.0, 1.0]
        below, beats, operators, categories = [], [], [], []
        for seed in ("0", "1"):
            units = by_seed[seed]
            assert len(units) == results["units"]
            assert all(u["beam_iou"] <= u["iou"] for u in units)
            below.append(sum(u["beam_iou"] < u["iou"] - 1e-12 for u in units) / len(units))
            beats.append(sum(u["iou"] >= u["single_iou"] + margin for u in units) / len(units))
            words = sum(u["formula"].count(" AND ") + u["formula"].count(" OR ") for u in units)
            operators.append(words)
            categories.append(words + len(units))
            assert math.isclose(
                ious[2]["per_seed"][int(seed)], sum(u["iou"] for u in units) / len(units)
            )
        check_interval(values["beam_below_optimum"], below)
        check_interval(values["beats_single_label"], beats)
        for key, totals in (("operators", operators), ("categories", categories)):
            counted = [sum(s["per_seed"][i] for s in values[key].values()) for i in range(2)]
            assert counted == totals
    # A seed sets the network and the rotation: the two seeds' formulas differ.
    for values in results["bases"].values():
        assert values["units_by_seed"]["0"] != values["units_by_seed"]["1"]

    claims = {c["compares"][0]: c for c in results["claims"]}
    assert set(claims) == {"units length 3", "units"}
    units, rotated = results["bases"]["units"], results["bases"]["rotated"]
    for name, first, second in (
        ("units length 3", units["iou_by_length"][2], units["iou_by_length"][0]),
        ("units", units["iou_by_length"][2], rotated["iou_by_length"][2]),
    ):
        found = claims[name]
        # The claims give IoUs in percent.
        pairs = [
            (100 * a, 100 * b) for a, b in zip(first["per_seed"], second["per_seed"], strict=True)
        ]
        assert found["per_seed"] == [list(pair) for pair in pairs]
        assert found["seeds"] == [0, 1]
        differences = [a - b for a, b in pairs]
        check_interval({**found, "per_seed": differences, "mean": found["mean_difference"]},
                       differences)  # fmt: skip
        low, high = found["ci95"]
        expected = "replicated" if low > 0 else "contradicted" if high < 0 else "inconclusive"
        assert found["verdict"] == expected

    for seed in (0, 1):
        for basis in ("units", "rotated"):
            folder = workdir / "explanations" / f"seed{seed}" / basis
            for name in ("formulas.csv", "formulas.html"):
                assert (folder / name).stat().st_size > 100
    for name in ("compositional.png", "formula_mix.png"):
        assert (workdir / name).stat().st_size > 1000
    page = (workdir / "summary.html").read_text()
    assert page.index("The paper's claims") < page.index("<img")
    assert page.count("<figcaption>") == 2


def test_with_rotations_matches_numpy():
    """The rotated layer is acts @ R for every batch, next to the unrotated layers."""
    import jax

    from experiments.common import with_rotations
    from jaxdissect.sources import Activations

    rng = np.random.default_rng(0)
    acts = rng.normal(size=(5, 3, 2, 4)).astype(np.float32)
    rotation = np.linalg.qr(rng.normal(size=(4, 4)))[0]
    source = Activations(
        lambda start, stop: {"conv": jax.numpy.asarray(acts[start:stop])},
        {"conv": (3, 2, 4)},
        5,
        {"model": "m"},
        {"model": "m"},
    )
    rotated = with_rotations(source, {"conv@r": ("conv", rotation)}, {"weights": {"step": 1}})
    assert rotated.shapes == {"conv": (3, 2, 4), "conv@r": (3, 2, 4)}
    batch = rotated.read(1, 4)
    np.testing.assert_array_equal(np.asarray(batch["conv"]), acts[1:4])
    expected = np.einsum("bhwu,uv->bhwv", acts[1:4].astype(np.float64), rotation)
    # float32 products of 4 terms of magnitude ~3: a few ulps of the sum.
    np.testing.assert_allclose(np.asarray(batch["conv@r"]), expected, rtol=0, atol=1e-5)
    assert list(rotated.identity) == ["model", "weights", "rotations"]
    assert rotated.identity["rotations"]["conv@r"][0] == "conv"
    assert rotated.provenance == {"model": "m"}


def test_a_formula_longer_than_the_labels_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """Issue 27: length=1000000 trained every seed's network (minutes at the default
    config) before the explanation refused it."""
    from experiments import compositional

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))

    def trains(*args, **kwargs):
        raise AssertionError("trained before the length was checked")

    monkeypatch.setattr(compositional, "train", trains)
    args = ["--config", "smoke", "--workdir", str(tmp_path / "w"), "--no-progress"]
    assert compositional.main([*args, "length=1000000", "labels_per_unit=5"]) == 2
    assert re.fullmatch(
        r"experiments\.compositional: error: length=1000000: longer than the 5 labels a "
        r"formula may draw on \(labels_per_unit=5; the probe has \d+ labels\)\n",
        capsys.readouterr().err,
    )
    assert not (tmp_path / "w" / "runs").exists()
