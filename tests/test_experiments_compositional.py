"""Smoke test of the compositional-explanations study at its tiny config."""

import json


def test_compositional_smoke(tmp_path, monkeypatch):
    from experiments import compositional

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    workdir = tmp_path / "compositional"
    assert (
        compositional.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"]) == 0
    )
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["bases"]) == {"units", "rotated"}
    for values in results["bases"].values():
        ious = values["iou_by_length"]
        assert len(ious) == 3
        # The exact optimum over formulas of length <= n cannot fall as n grows.
        assert ious[0] <= ious[1] <= ious[2]
        assert values["certified"] == 1.0
        units = values["units"]
        assert len(units) == results["units"]
        assert all(u["beam_iou"] <= u["iou"] for u in units)
        below = sum(u["beam_iou"] < u["iou"] - 1e-12 for u in units) / len(units)
        assert values["beam_below_optimum"] == below
        margin = results["config"]["margin"]
        beats = sum(u["iou"] >= u["single_iou"] + margin for u in units) / len(units)
        assert values["beats_single_label"] == beats
        operators = sum(values["operators"].values())
        words = sum(u["formula"].count(" AND ") + u["formula"].count(" OR ") for u in units)
        assert operators == words
        assert sum(values["categories"].values()) == operators + len(units)
    for name in ("units/formulas.csv", "units/formulas.html", "rotated/formulas.csv"):
        assert (workdir / name).stat().st_size > 100
    assert (workdir / "compositional.png").stat().st_size > 1000
