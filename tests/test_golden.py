"""Outputs stay as they were: tally.csv and results.json byte for byte equal to the golden
runs in tests/fixtures/golden/ (see tests/golden_runs.py for how they were made)."""

import json

import pytest
from golden_runs import GOLDEN, RUNS, dissect_args, make_inputs, normalised_results

from jaxdissect.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", ["fixture", "synthetic"])
@pytest.mark.parametrize(("union", "kernel"), RUNS)
def test_outputs_equal_the_golden_run(inputs, name, union, kernel, tmp_path):
    dataset, features = inputs[name]
    assert main(dissect_args(dataset, features, tmp_path, union, kernel)) == 0
    golden = GOLDEN / f"{name}-{union}-{kernel}"
    assert (tmp_path / "tally.csv").read_bytes() == (golden / "tally.csv").read_bytes()
    expected = json.loads((golden / "results.json").read_text())
    assert normalised_results(tmp_path / "results.json") == expected
