"""Fuzzing every command's arguments and every file reader (issue 27): whatever the input,
a command exits 0 or 2 (never a traceback), an error is one line, and no file outside OUT
is created, changed or removed."""

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from probe_fixture import dyadic_features

from jaxdissect.cli import main

SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a failure reproduces
)


@pytest.fixture(scope="module")
def sandbox(probe, tmp_path_factory):
    """Inputs of every kind, read-only for the commands: a features file, a dissection, a
    tally, images and forged files."""
    root = tmp_path_factory.mktemp("sandbox")
    num_images = len(probe.planes)
    np.save(root / "f.npy", dyadic_features(num_images, (4, 4, 3), seed=5))
    np.save(root / "images.npy", np.zeros((2, 32, 32, 3), np.uint8))
    args = ["dissect", "--dataset", str(probe.directory), "--features", str(root / "f.npy"),
            "--out", str(root / "done"), "--quantile", "0.05", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    shutil.rmtree(root / "done" / ".lock", ignore_errors=True)
    return root


def _snapshot(folder):
    """Every path below ``folder`` with its size and modification time."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            stat = os.lstat(path)
            found[path] = (stat.st_size, stat.st_mtime_ns, stat.st_mode)
    return found


def _run(argv, watched):
    """main(argv) with its exit status and stderr; asserts the promises."""
    before = {folder: _snapshot(folder) for folder in watched}
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse's refusals (2) and --help (0)
            code = exit_info.code
    assert code in (0, 2), (argv, err.getvalue())
    text = err.getvalue()
    assert "Traceback" not in text, (argv, text)
    if code == 2 and text.startswith("jaxdissect: error:"):
        assert len(text.strip().splitlines()) == 1, (argv, text)
    for folder in watched:
        assert _snapshot(folder) == before[folder], (argv, folder)
    return code, text


PATHS = ["f.npy", "images.npy", "done", "done/tally.csv", "done/results.json", "missing", ""]
VALUES = st.one_of(
    st.sampled_from(
        ["0", "1", "-1", "3", "0.5", "1e9", "nan", "inf", "", "x", "zoo:resnet1000", "a:b",
         "user_model:factory", "conv_b", "object,part", ",", "nchw", "paper", "lite", "cpu",
         "xla", "notaport", "h:0", "99999999999999999999"]
    ),
    st.sampled_from(PATHS),
    st.text(max_size=5),
)  # fmt: skip
FLAGS = {
    "dissect": ["--layer", "--union", "--quantile", "--iou-threshold", "--categories",
                "--layout", "--batch-size", "--kernel", "--top-images", "--checkpoint-every",
                "--weights", "--coordinator", "--num-processes", "--process-id", "--no-report"],
    "formulas": ["--layer", "--length", "--beam", "--exact", "--labels-per-unit", "--quantile",
                 "--categories", "--batch-size", "--kernel", "--weights", "--coordinator",
                 "--num-processes", "--process-id", "--no-report"],
    "directions": ["--layer", "--heldout", "--min-pixels", "--epochs", "--step-images",
                   "--learning-rate", "--seed", "--layout", "--quantile", "--categories",
                   "--batch-size", "--kernel", "--weights", "--coordinator", "--num-processes",
                   "--process-id", "--no-report"],
    "features": ["--layer", "--batch-size", "--weights", "--images", "--model"],
    "summarize": ["--iou-threshold", "--json"],
    "report": [],
    "synthetic figure": ["--seed", "--rows", "--size"],
    "synthetic probe": ["--images", "--seed", "--size", "--label-size"],
}  # fmt: skip
SWITCHES = {"--no-report", "--json", "--exact"}


def _base(command, probe, sandbox, out):
    dataset = ["--dataset", str(probe.directory)]
    return {
        "dissect": ["dissect", *dataset, "--features", str(sandbox / "f.npy"), "--out", str(out),
                    "--no-progress"],
        "formulas": ["formulas", *dataset, "--features", str(sandbox / "f.npy"), "--out",
                     str(out), "--no-progress", "--length", "2", "--labels-per-unit", "4"],
        "directions": ["directions", *dataset, "--features", str(sandbox / "f.npy"), "--out",
                       str(out), "--no-progress", "--epochs", "1"],
        "features": ["features", "--model", "user_model:factory", "--layer", "conv_b",
                     "--images", str(sandbox / "images.npy"), "--out", str(out / "f.npy")],
        "summarize": ["summarize", str(sandbox / "done" / "tally.csv")],
        "report": ["report", str(out)],
        "synthetic figure": ["synthetic", "figure", "--out", str(out / "f.png"), "--size", "16",
                             "--rows", "1"],
        "synthetic probe": ["synthetic", "probe", "--out", str(out / "p"), "--images", "2",
                            "--size", "16", "--no-progress"],
    }[command]  # fmt: skip


@settings(max_examples=150, **SETTINGS)
@given(
    command=st.sampled_from(sorted(FLAGS)),
    picks=st.lists(st.tuples(st.integers(0, 100), VALUES), max_size=3),
)
def test_every_command_exits_0_or_2_and_touches_only_out(
    probe, sandbox, tmp_path_factory, monkeypatch, command, picks
):
    work = tmp_path_factory.mktemp("work")
    out = work / "out"
    if command == "report":
        shutil.copytree(sandbox / "done", out)
    monkeypatch.chdir(work)  # relative paths land here, and are watched
    for path in PATHS[:-2]:
        target = work / path
        target.parent.mkdir(exist_ok=True)
        if (sandbox / path).is_file():
            shutil.copy(sandbox / path, target)
    argv = _base(command, probe, sandbox, out)
    for index, value in picks:
        flags = FLAGS[command]
        if not flags:
            break
        flag = flags[index % len(flags)]
        if flag in SWITCHES:
            argv += [flag]
        else:
            argv += [flag, value]
    watched = [sandbox, probe.directory]
    _run(argv, watched)
    # In the working folder only OUT may have changed.
    names = {p.name for p in work.iterdir()}
    assert names <= {"out", "f.npy", "images.npy", "done"}, names


def _npy_header(shape="(12, 4, 4, 3)", descr="'<f4'", order="False") -> bytes:
    return f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}".encode()


@settings(max_examples=40, **SETTINGS)
@given(
    header=st.one_of(
        st.binary(max_size=80),
        st.builds(
            _npy_header,
            shape=st.sampled_from(["(12, 4, 4, 3)", "((12,", "(12, -4, 4, 3)", "(10**30, 4, 4, 3)",
                                   "(12, 4, 4)", "()", "'a'", "(1.5,)", "(True, 4, 4, 3)"]),
            descr=st.sampled_from(["'<f4'", "'|O'", "'<U3'", "'zz'", "[('a', '<f4')]", "1"]),
            order=st.sampled_from(["False", "True", "0", "None"]),
        ),
    ),
    version=st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x09"]),
    length=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)  # fmt: skip
def test_forged_features_files_exit_2_in_one_line(probe, tmp_path_factory, header, version, length):
    folder = tmp_path_factory.mktemp("npy")
    size = 2 if version == b"\x01\x00" else 4
    length = len(header) if length is None else length % (256**size)
    data = dyadic_features(len(probe.planes), (4, 4, 3)).tobytes()
    path = folder / "f.npy"
    path.write_bytes(b"\x93NUMPY" + version + length.to_bytes(size, "little") + header + data)
    argv = ["dissect", "--dataset", str(probe.directory), "--features", str(path),
            "--out", str(folder / "out"), "--no-progress", "--no-report"]  # fmt: skip
    _run(argv, [probe.directory])


@settings(max_examples=30, **SETTINGS)
@given(lines=st.lists(st.text(alphabet='unit,categorylabscore-iou0.1\n"', max_size=40), max_size=4))
def test_forged_tallies_exit_0_or_2(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("tally")
    path = folder / "tally.csv"
    path.write_text("\n".join(lines))
    _run(["summarize", str(path)], [])


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(), st.text(max_size=6)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=40, **SETTINGS)
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=4), value=JSON_VALUES)
def test_forged_results_exit_0_or_2(sandbox, tmp_path_factory, path, value):
    """One field of a real results.json (reached by indices into its nested keys) replaced
    by any JSON value: report draws it or refuses it in one line."""
    folder = tmp_path_factory.mktemp("results") / "out"
    shutil.copytree(sandbox / "done", folder)
    results = json.loads((folder / "results.json").read_text())
    node = results
    for step in path[:-1]:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        child = node[keys[step % len(keys)]] if keys else None
        if not isinstance(child, (dict, list)) or not child:
            break
        node = child
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    node[keys[path[-1] % len(keys)]] = value
    (folder / "results.json").write_text(json.dumps(results))
    code, _ = _run(["report", str(folder)], [sandbox])
    if code == 0:
        page = (folder / "report.html").read_text()
        assert page.count("<script") == 1  # ours alone
