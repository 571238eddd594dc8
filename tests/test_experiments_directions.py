"""Smoke test of the concept-directions study at its tiny config (2 seeds)."""

import csv
import json
import math

import numpy as np

# The 0.975 quantile of Student's t with 1 degree of freedom (tan(0.475 pi)), from tables.
T_1 = 12.706204736


def check_interval(stat, values):
    """``stat`` is the per-seed values, their mean and the two-seed t-interval."""
    assert np.allclose(stat["per_seed"], values, rtol=1e-12, atol=1e-15)
    mean = sum(values) / len(values)
    assert math.isclose(stat["mean"], mean, rel_tol=1e-12, abs_tol=1e-15)
    half = T_1 * abs(values[0] - values[1]) / 2  # sd / sqrt(2) with n = 2
    assert np.allclose(stat["ci95"], [mean - half, mean + half], rtol=1e-9, atol=1e-12)


def test_directions_smoke(tmp_path, monkeypatch):
    from experiments import directions

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    workdir = tmp_path / "directions"
    assert directions.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"]) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert results["study"] == "directions" and results["seeds"] == [0, 1]
    margin = results["config"]["margin"]
    means = {}
    for basis in ("units", "rotated"):
        values = results["bases"][basis]
        per_seed = {key: [] for key in ("beats", "direction", "unit", "chance")}
        for seed in ("0", "1"):
            # The rows the study summarised are the CSV the seed's run wrote.
            path = workdir / "directions" / f"seed{seed}" / basis / "directions.csv"
            with open(path, newline="") as f:
                table = list(csv.DictReader(f))
            rows = values["rows_by_seed"][seed]
            assert [r["label"] for r in rows] == [r["label"] for r in table]
            assert len(rows) == values["concepts"] > 0
            for row, written in zip(rows, table, strict=True):
                assert row["iou_direction"] == float(written["iou_direction"])
                assert 0 <= row["iou_direction"] <= 1 and 0 <= row["iou_best_unit"] <= 1
            per_seed["beats"].append(
                sum(r["iou_direction"] >= r["iou_best_unit"] + margin for r in rows) / len(rows)
            )
            per_seed["direction"].append(sum(r["iou_direction"] for r in rows) / len(rows))
            per_seed["unit"].append(sum(r["iou_best_unit"] for r in rows) / len(rows))
            per_seed["chance"].append(sum(r["iou_chance"] for r in rows) / len(rows))
        check_interval(values["beats_best_unit"], per_seed["beats"])
        check_interval(values["iou_direction"], per_seed["direction"])
        check_interval(values["iou_best_unit"], per_seed["unit"])
        check_interval(values["iou_chance"], per_seed["chance"])
        check_interval(
            values["gain"],
            [d - u for d, u in zip(per_seed["direction"], per_seed["unit"], strict=True)],
        )
        means[basis] = per_seed
    check_interval(
        results["direction_iou_units_minus_rotated"],
        [
            u - r
            for u, r in zip(means["units"]["direction"], means["rotated"]["direction"], strict=True)
        ],
    )
    claims = results["claims"]
    assert len(claims) == 3
    first = claims[0]
    expected = [
        [100 * d, 100 * u]
        for d, u in zip(means["units"]["direction"], means["units"]["unit"], strict=True)
    ]
    assert np.allclose(first["per_seed"], expected, rtol=1e-12, atol=0)
    for found in claims:
        assert found["verdict"] in ("replicated", "contradicted", "inconclusive")
        assert found["seeds"] == [0, 1]
    page = (workdir / "summary.html").read_text()
    assert "directions.png" in page and "seed1/rotated/directions.html" in page
    assert (workdir / "directions.png").stat().st_size > 0
    assert json.loads((workdir / "config.json").read_text())["directions"]["epochs"] == 2
