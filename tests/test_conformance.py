"""Summarising the NetDissect release files reproduces the published table
(../shared/reference/netdissect-release/README.md). The three AlexNet files are vendored
under tests/fixtures (MIT licence beside them); the ResNet-152 ones (1.5 MB) are read from
../shared when it exists."""

from pathlib import Path

import pytest

from jaxdissect.cli import main
from jaxdissect.report.results import summarize_tally_csv

VENDORED = Path(__file__).parent / "fixtures" / "netdissect-release"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference" / "netdissect-release"

# file: (units, detectors, unique top-label, unique per-category)
TABLE = {
    "caffe_reference_imagenet.csv": (256, 97, 50, 61),
    "caffe_reference_places205.csv": (256, 107, 60, 79),
    "caffe_reference_places365.csv": (256, 118, 72, 91),
    "ResNet-152-model_imagenet.csv": (2048, 1325, 197, 242),
    "ResNet-152-model_places365.csv": (2048, 1452, 278, 347),
}


def _path(name):
    if (VENDORED / name).is_file():
        return VENDORED / name
    if not (SHARED / name).is_file():
        pytest.skip(
            f"{name} is not vendored and {SHARED} does not exist (only CI and "
            "development checkouts have ../shared)"
        )
    return SHARED / name


@pytest.mark.parametrize("name", sorted(TABLE))
def test_release_table(name):
    summary = summarize_tally_csv(_path(name))
    units, detectors, top_label, per_category = TABLE[name]
    assert summary["units"] == units
    assert summary["detectors"] == detectors
    assert summary["unique_top_label"]["total"] == top_label
    assert summary["unique_per_category"]["total"] == per_category


def test_per_category_breakdowns():
    alexnet = summarize_tally_csv(_path("caffe_reference_places365.csv"))
    assert alexnet["unique_per_category"]["per_category"] == {
        "object": 40,
        "color": 2,
        "material": 2,
        "scene": 13,
        "texture": 25,
        "part": 9,
    }
    resnet = summarize_tally_csv(_path("ResNet-152-model_places365.csv"))
    assert resnet["unique_per_category"]["per_category"] == {
        "object": 84,
        "color": 2,
        "material": 5,
        "scene": 188,
        "texture": 42,
        "part": 26,
    }


def test_summarize_cli(capsys):
    assert main(["summarize", str(_path("caffe_reference_imagenet.csv"))]) == 0
    out = capsys.readouterr().out
    assert "detectors (IoU > 0.04): 97" in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split() == ["total", "97", "50", "61"]


def test_summarize_rejects_other_csv(tmp_path, capsys):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    assert main(["summarize", str(path)]) == 2
    assert "other.csv: not a tally" in capsys.readouterr().err
