"""Fuzzing the Broden reader and the CLI: nothing but the documented errors may escape."""

import shutil

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxdissect import BrodenFormatError, open_broden
from jaxdissect.cli import main

FILES = ("index.csv", "label.csv", "category.csv", "c_object.csv", "c_scene.csv")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(FILES),
    line=st.integers(0, 12),
    field=st.integers(0, 12),
    value=st.one_of(
        st.text(max_size=12),
        st.integers(-5, 100_000).map(str),
        st.just(""),
        st.just("a;b;;3"),
        st.just('"'),
    ),
)
def test_reader_raises_only_format_errors(probe, tmp_path_factory, name, line, field, value):
    folder = tmp_path_factory.mktemp("fuzz") / "broden"
    shutil.copytree(probe.directory, folder, ignore=shutil.ignore_patterns("*.jpg", "*.png"))
    lines = (folder / name).read_text().splitlines()
    line %= len(lines)
    fields = lines[line].split(",")
    fields[field % len(fields)] = value
    lines[line] = ",".join(fields)
    (folder / name).write_text("\n".join(lines) + "\n")
    try:
        dataset = open_broden(folder)
    except BrodenFormatError as error:
        assert str(error)  # a message naming the culprit
        return
    assert dataset.num_images >= 1


FLAGS = [
    "--union",
    "--quantile",
    "--iou-threshold",
    "--categories",
    "--layout",
    "--batch-size",
    "--layer",
    "--weights",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            "paper",
            "lite",
            "nchw",
            "nhwc",
            "0",
            "1",
            "0.5",
            "-1",
            "object,part",
            "nope",
            "",
            "1e9",
            "nan",
        ]
    ),
    st.text(max_size=6),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pairs=st.lists(st.tuples(st.sampled_from(FLAGS), VALUES), max_size=3))
def test_cli_exits_cleanly(probe, tmp_path_factory, pairs):
    folder = tmp_path_factory.mktemp("cli")
    np.save(folder / "f.npy", np.zeros((12, 2, 2, 2), np.float32))
    argv = [
        "dissect",
        "--dataset",
        str(probe.directory),
        "--features",
        str(folder / "f.npy"),
        "--out",
        str(folder / "out"),
        "--no-progress",
        "--no-report",
    ]
    for flag, value in pairs:
        argv += [flag, value]
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own refusals
        assert exit_info.code == 2
        return
    assert code in (0, 2)
    if code == 2:
        assert not (folder / "out" / "results.json").exists()
