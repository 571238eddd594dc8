"""The formulas and the directions run through the pipeline's machinery (``driver``): their
files equal what main wrote before they did (tests/fixtures/compositional-main, made by
main's CLI at 6f4d34f with the arguments below), a rerun of the same inputs reads the
finished outputs back without computing, OUT is locked, and the outputs appear as a set."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from probe_fixture import dyadic_features

from jaxdissect import outdir
from jaxdissect.cli import main
from jaxdissect.compositional import direction_fit, explain
from jaxdissect.config import DissectConfig
from jaxdissect.outdir import locked

MAIN = Path(__file__).parent.parent / "fixtures" / "compositional-main"
FORMULAS = ["--exact", "--labels-per-unit", "8", "--no-report"]
DIRECTIONS = ["--min-pixels", "8", "--epochs", "3", "--step-images", "4", "--heldout", "0.4",
              "--seed", "1", "--no-report"]  # fmt: skip
# What differs between two runs of the same inputs: the wall times and the paths given.
VARYING = ("seconds", "dataset", "features")


@pytest.fixture()
def features(tmp_path):
    path = tmp_path / "feats.npy"
    np.save(path, dyadic_features(12, (4, 4, 5)))
    return path


def _args(command, probe, features, out, extra):
    return [command, "--dataset", str(probe.directory), "--features", str(features),
            "--quantile", "0.05", "--no-progress", "--out", str(out), *extra]  # fmt: skip


def _view(out: Path) -> dict:
    """Every output file under OUT's names, through the set's links."""
    return {
        path.name: path.read_bytes()
        for path in sorted(out.iterdir())
        if path.name not in (outdir.STORE, ".lock")
    }


def _without_varying(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in VARYING}


@pytest.mark.parametrize(
    "command,extra,csv_name,json_name",
    [
        ("formulas", FORMULAS, "formulas.csv", "formulas.json"),
        ("directions", DIRECTIONS, "directions.csv", "directions.json"),
    ],
)
def test_outputs_equal_mains(
    probe, features, tmp_path, capsys, command, extra, csv_name, json_name
):
    out = tmp_path / "out"
    assert main(_args(command, probe, features, out, extra)) == 0, capsys.readouterr().err
    assert (out / csv_name).read_bytes() == (MAIN / csv_name).read_bytes()
    assert _without_varying(out / json_name) == _without_varying(MAIN / json_name)
    got, want = (
        json.loads((out / json_name).read_text()),
        json.loads((MAIN / json_name).read_text()),
    )
    assert list(got) == list(want) and list(got["seconds"]) == list(want["seconds"])


def test_formulas_rerun_reads_the_finished_outputs(probe, features, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    first = explain.explain(
        probe.directory, features, out=out, exact=True, shorter=True, labels_per_unit=8,
        report=False, progress=False, config=DissectConfig(quantile=0.05),
    )  # fmt: skip
    files = _view(out)
    assert sorted(files) == [
        "formulas.csv", "formulas.fingerprint.json", "formulas.json", "formulas.npz"
    ]  # fmt: skip
    for name in ("compute_thresholds", "build_problem", "beam_search", "exact_search"):
        monkeypatch.setattr(explain, name, lambda *a, n=name, **k: pytest.fail(f"{n} ran"))
    again = explain.explain(
        probe.directory, features, out=out, exact=True, shorter=True, labels_per_unit=8,
        report=False, progress=False, config=DissectConfig(quantile=0.05),
    )  # fmt: skip
    assert _view(out) == files
    assert again.problem is None and again.layer == first.layer == "feats"
    for got, want in [
        (again.beam, first.beam), (again.exact, first.exact), (again.result, first.exact),
        *zip(again.shorter, first.shorter, strict=True),
    ]:  # fmt: skip
        for field in got._fields:
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
    assert len(again.shorter) == 2 and again.seconds == first.seconds
    np.testing.assert_array_equal(again.concept_labels, first.concept_labels)
    np.testing.assert_array_equal(again.candidates.rows, first.candidates.rows)
    # Other settings, or other activations, are another run: computed anew.
    monkeypatch.undo()
    other = explain.explain(
        probe.directory, features, out=out, exact=True, labels_per_unit=8, report=False,
        progress=False, config=DissectConfig(quantile=0.05), beam=3,
    )  # fmt: skip
    assert other.problem is not None and other.shorter == ()
    assert _view(out)["formulas.fingerprint.json"] != files["formulas.fingerprint.json"]
    assert json.loads(_view(out)["formulas.fingerprint.json"])["settings"]["beam"] == 3


def test_directions_rerun_reads_the_finished_outputs(
    probe, features, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    assert main(_args("directions", probe, features, out, DIRECTIONS)) == 0
    files = _view(out)
    first = capsys.readouterr().out
    monkeypatch.setattr(direction_fit, "train_directions", lambda *a, **k: pytest.fail("ran"))
    assert main(_args("directions", probe, features, out, DIRECTIONS)) == 0
    assert capsys.readouterr().out == first  # the same summary, from the files
    assert _view(out) == files
    # 7 train images in steps of 4: one step per epoch, 3 epochs; the fixture's 19 concepts.
    assert np.load(out / "directions.npz")["losses"].shape == (3, 19)


@pytest.mark.parametrize("command,extra", [("formulas", FORMULAS), ("directions", DIRECTIONS)])
def test_a_second_run_on_the_same_out_is_refused(probe, features, tmp_path, capsys, command, extra):
    out = tmp_path / "out"
    with locked(out):
        assert main(_args(command, probe, features, out, extra)) == 2
    assert f"in use by a running dissection (pid {os.getpid()})" in capsys.readouterr().err
    assert not (out / outdir.STORE).exists()  # refused before anything was written


def test_a_failed_write_leaves_the_previous_set_whole(probe, features, tmp_path, monkeypatch):
    from jaxdissect.report import formulas as report

    out = tmp_path / "out"
    assert main(_args("formulas", probe, features, out, ["--length", "2"])) == 0
    before = _view(out)
    store = sorted(p.name for p in (out / outdir.STORE).iterdir())

    def broken(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_html", broken)
    assert main(_args("formulas", probe, features, out, ["--length", "3"])) == 2
    assert _view(out) == before
    assert sorted(p.name for p in (out / outdir.STORE).iterdir()) == store
    # The set's files are links into one complete set, with its manifest.
    current = outdir.current_set(out, "formulas")
    manifest = json.loads((current / outdir.MANIFEST).read_text())["files"]
    assert sorted(manifest) == sorted(before)
    for name in before:
        assert os.readlink(out / name) == f"{outdir.STORE}/formulas/{name}"


TWO_PROCESSES = """
import sys
import jax
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
from jaxdissect.compositional.directions import DirectionConfig, directions
from jaxdissect.compositional.explain import explain
from jaxdissect.config import DissectConfig
config = DissectConfig(quantile=0.05, batch_size=4, kernel="xla")
out, dataset, features = sys.argv[3:6]
explain(dataset, features, config, out + "/formulas", exact=True, labels_per_unit=8,
        report=False, progress=False)
settings = DirectionConfig(min_pixels=8, epochs=3, batch_size=4, heldout=0.4, seed=1)
directions(dataset, features, config, out + "/directions", settings=settings, report=False,
           progress=False)
"""


def test_two_processes_write_what_one_writes(probe, features, tmp_path):
    """jax.distributed on localhost: both processes compute (the thresholds' pass reads
    each process's rows), process 0 alone locks OUT and publishes, the same files as main's."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    inputs = [str(tmp_path), str(probe.directory), str(features)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESSES, f"127.0.0.1:{port}", str(i), *inputs],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    for name in ("formulas", "directions"):
        written = (tmp_path / name / f"{name}.csv").read_bytes()
        assert written == (MAIN / f"{name}.csv").read_bytes()
