import csv
import json

import numpy as np
import pytest
from probe_fixture import dyadic_features, reference_tally

from jaxdissect.cli import main

CATS = ("color", "object", "part", "material", "scene", "texture")


def _reference_rows(features, probe, q, union):
    thresholds = np.quantile(features.reshape(-1, features.shape[-1]), 1 - q, axis=0).astype(
        np.float32
    )
    G, I, A = reference_tally(features, thresholds, probe, union)
    rows = {}
    for u in range(features.shape[-1]):
        best = {}
        for c, name in enumerate(CATS):
            top_label, top_iou = None, -1.0
            for label in range(probe.num_labels):
                if probe.label_category[label] != c:
                    continue
                denominator = A[u, c] + G[label] - I[u, label]
                value = I[u, label] / denominator if denominator else 0.0
                if value > top_iou:
                    top_label, top_iou = label, value
            best[name] = (top_label, top_iou)
        category = max(CATS, key=lambda name: (best[name][1], -CATS.index(name)))
        rows[u + 1] = (category, best)
    return rows


@pytest.mark.parametrize("union", ["paper", "lite"])
def test_dissect_end_to_end(probe, tmp_path, union, capsys):
    features = dyadic_features(12, (4, 4, 6))
    np.save(tmp_path / "feats.npy", features)
    out = tmp_path / "out"
    code = main(
        [
            "dissect",
            "--dataset",
            str(probe.directory),
            "--features",
            str(tmp_path / "feats.npy"),
            "--out",
            str(out),
            "--union",
            union,
            "--quantile",
            "0.05",
            "--batch-size",
            "5",
            "--no-progress",
        ]
    )
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    with open(out / "tally.csv") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        rows = list(reader)
    assert header[:4] == ["unit", "category", "label", "score"]
    assert header[4:9] == [
        "color-label",
        "color-truth",
        "color-activation",
        "color-intersect",
        "color-iou",
    ]
    assert len(rows) == 6 and sorted(int(r["unit"]) for r in rows) == list(range(1, 7))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    expected = _reference_rows(features, probe, 0.05, union)
    for row in rows:
        category, best = expected[int(row["unit"])]
        assert row["category"] == category
        for name in CATS:
            label, value = best[name]
            # A category whose IoUs are all 0 has no label (NetDissect-Lite reports none).
            assert row[f"{name}-label"] == (f"label-{label}" if value > 0 else "")
            assert float(row[f"{name}-iou"]) == pytest.approx(value, abs=1e-12)
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["union"] == union
    assert len(results["thresholds"]) == 6
    assert results["summary"]["units"] == 6


def test_categories_subset(probe, tmp_path):
    np.save(tmp_path / "f.npy", dyadic_features(12, (4, 4, 3)))
    assert (
        main(
            [
                "dissect",
                "--dataset",
                str(probe.directory),
                "--features",
                str(tmp_path / "f.npy"),
                "--out",
                str(tmp_path / "o"),
                "--categories",
                "object,part",
                "--no-progress",
            ]
        )
        == 0
    )
    header = (tmp_path / "o" / "tally.csv").read_text().splitlines()[0]
    assert "object-iou" in header and "part-iou" in header and "color-iou" not in header


def _dissect(probe, tmp_path, features, *extra):
    np.save(tmp_path / "f.npy", features)
    return main(
        [
            "dissect",
            "--dataset",
            str(probe.directory),
            "--features",
            str(tmp_path / "f.npy"),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            *extra,
        ]
    )


def test_wrong_number_of_images(probe, tmp_path, capsys):
    assert _dissect(probe, tmp_path, np.zeros((11, 4, 4, 3), np.float32)) == 2
    assert "11 rows of activations but" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_nan_names_layer_and_image(probe, tmp_path, capsys):
    features = dyadic_features(12, (4, 4, 3))
    features[7, 1, 2, 0] = np.nan
    assert _dissect(probe, tmp_path, features, "--layer", "conv5") == 2
    assert "layer 'conv5': NaN or inf activation in image 7" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.json").exists()


def test_failure_keeps_previous_results(probe, tmp_path, capsys):
    assert _dissect(probe, tmp_path, dyadic_features(12, (4, 4, 3))) == 0
    before = (tmp_path / "out" / "tally.csv").read_bytes()
    features = dyadic_features(12, (4, 4, 3))
    features[0, 0, 0, 0] = np.inf
    assert _dissect(probe, tmp_path, features) == 2
    assert (tmp_path / "out" / "tally.csv").read_bytes() == before
    assert not list((tmp_path / "out").glob("*.partial"))


def test_wrong_rank_and_layout(probe, tmp_path, capsys):
    assert _dissect(probe, tmp_path, np.zeros((12, 4, 4), np.float32)) == 2
    assert "4 dimensions" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--quantile", "0"),
        ("--quantile", "1.5"),
        ("--quantile", "abc"),
        ("--iou-threshold", "-0.1"),
        ("--batch-size", "0"),
        ("--union", "both"),
    ],
)
def test_bad_values_exit_nonzero(probe, tmp_path, flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _dissect(probe, tmp_path, np.zeros((12, 4, 4, 3), np.float32), flag, value)
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


def test_missing_features_file(probe, tmp_path, capsys):
    code = main(
        [
            "dissect",
            "--dataset",
            str(probe.directory),
            "--features",
            str(tmp_path / "nope.npy"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "nope.npy: features file not found" in capsys.readouterr().err


def test_not_a_dataset(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.zeros((1, 1, 1, 1), np.float32))
    code = main(
        [
            "dissect",
            "--dataset",
            str(tmp_path / "none"),
            "--features",
            str(tmp_path / "f.npy"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "not a directory" in capsys.readouterr().err


def test_cpu_kernel_under_several_processes_is_a_one_line_error(
    probe, tmp_path, capsys, monkeypatch
):
    """``--kernel cpu --coordinator ...`` (several processes): exit 2 and one line naming
    the flag, not a traceback. The second process is faked: start_processes joins nothing
    and the runtime reports two processes."""
    import jaxdissect.cli.dissect as cli
    from jaxdissect import runtime

    monkeypatch.setattr(cli, "start_processes", lambda args: True)
    monkeypatch.setattr(runtime, "process_count", lambda: 2)
    np.save(tmp_path / "f.npy", np.zeros((12, 4, 4, 3), np.float32))
    code = main(
        ["dissect", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
         "--out", str(tmp_path / "o"), "--kernel", "cpu", "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "jaxdissect: error: --kernel 'cpu' runs in one process: use --kernel 'xla' (or 'auto') "
        "under jax.distributed"
    ]


def test_library_errors_name_python_arguments_and_the_cli_names_flags(monkeypatch, capsys):
    from jaxdissect import runtime
    from jaxdissect.config import DissectConfig
    from jaxdissect.errors import DissectError
    from jaxdissect.kernels import kernel_name
    from jaxdissect.sources import load_model

    monkeypatch.setattr(runtime, "process_count", lambda: 2)
    with pytest.raises(DissectError) as raised:
        kernel_name(DissectConfig(kernel="cpu"))
    assert "--" not in str(raised.value) and "`kernel` 'cpu'" in str(raised.value)
    with pytest.raises(DissectError) as raised:
        load_model("no_such_module_here:factory")
    assert str(raised.value).startswith("`model` 'no_such_module_here:factory': cannot import")
    assert raised.value.for_cli().startswith("--model 'no_such_module_here:factory'")
    error = DissectError(
        "`length`, `beam` and `labels_per_unit` must be >= 1",
        arguments=("length", "beam", "labels_per_unit"),
    )
    assert error.for_cli() == "--length, --beam and --labels-per-unit must be >= 1"
    assert error.for_cli({"beam": "--beam-width"}).startswith("--length, --beam-width and")
    from jaxdissect.compositional.explain import explain

    with pytest.raises(DissectError) as raised:
        explain(None, None, length=0)
    assert str(raised.value) == "`length`, `beam` and `labels_per_unit` must be >= 1"
    assert raised.value.for_cli() == "--length, --beam and --labels-per-unit must be >= 1"


def test_version_matches_the_package_metadata(capsys):
    """``jaxdissect --version`` and ``python -m jaxdissect --version`` print the version that
    pyproject.toml declares."""
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    root = Path(__file__).parent.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"jaxdissect {declared}\n"
    done = subprocess.run(
        [sys.executable, "-m", "jaxdissect", "--version"], cwd=root, capture_output=True, text=True
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"jaxdissect {declared}\n", "")


def test_no_command_prints_the_help_and_exits_2():
    """``python -m jaxdissect`` alone lists the commands on stdout; the status is a usage
    error's, so that a script that forgot its command fails."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "jaxdissect"], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr == ""
    assert done.stdout.startswith("usage: jaxdissect [-h] [--version] COMMAND ...")
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ")}
    assert {"dissect", "features", "formulas", "directions", "report", "summarize",
            "synthetic", "demo", "fetch", "precompile"} <= listed  # fmt: skip


def test_shared_options_have_one_default():
    """An option several commands take is one declaration: its default is the same in each
    (--batch-size was 64 for features and formulas, 32 for dissect and directions)."""
    import argparse

    from jaxdissect.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    defaults: dict[str, set] = {}
    for parser in commands.choices.values():
        for action in parser._actions:
            for flag in action.option_strings:
                defaults.setdefault(flag, set()).add(repr(action.default))
    assert defaults["--batch-size"] == {"32"}
    assert defaults["--quantile"] == {"0.005"}
    assert defaults["--kernel"] == {"'auto'"}
    assert defaults["--seed"] == {"0"}
    # The only flags whose defaults differ mean different things: a file or a folder; an
    # image array or a number of images.
    differ = {flag for flag, values in defaults.items() if len(values) > 1}
    assert differ == {"--out", "--images"}


def _empty_path_commands(tmp):
    """Every command line that takes an output path (--out, --cache, report's OUT, --dir),
    with that path empty."""
    pass_over = ["--dataset", f"{tmp}/probe", "--features", f"{tmp}/f.npy"]
    for command in ("dissect", "formulas", "directions"):
        yield "--out", [command, *pass_over, "--out", ""]
        yield "--cache", [command, *pass_over, "--out", f"{tmp}/o", "--cache", ""]
    model = ["--model", "user_model:factory", "--layer", "conv_b"]
    yield "--out", ["features", *model, "--images", f"{tmp}/i.npy", "--out", ""]
    yield "out", ["report", ""]
    yield "--cache", ["report", f"{tmp}/o", "--cache", ""]
    yield "--out", ["synthetic", "probe", "--out", "", "--images", "2"]
    yield "--out", ["synthetic", "figure", "--out", ""]
    yield "--out", ["demo", "--out", ""]
    yield "--dir", ["fetch", "broden1_224", "--dir", ""]
    yield "--from", ["fetch", "broden1_224", "--dir", f"{tmp}/d", "--from", ""]


def test_an_empty_output_path_is_refused_for_every_command(tmp_path, monkeypatch, capsys):
    # Issue 27, V8: --out '' (or --cache '') was Path(''), the current folder, and a command
    # wrote there.
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    for flag, argv in _empty_path_commands(tmp_path):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2, argv
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"argument {flag}: an empty path (it would mean the current folder)" in error, argv
    assert list(work.iterdir()) == []


def test_the_library_refuses_empty_paths_naming_its_arguments(probe, tmp_path, monkeypatch):
    # The Python counterparts name their argument (`out`, `cache`, `cache_root`), not a flag.
    from jaxdissect.compositional.directions import directions
    from jaxdissect.compositional.explain import explain
    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_image_array, load_label_arrays
    from jaxdissect.errors import DissectError
    from jaxdissect.pipeline import dissect
    from jaxdissect.report.results import write_dissection

    monkeypatch.chdir(tmp_path)
    features = dyadic_features(len(probe.planes), (4, 4, 3))
    dataset = open_broden(probe.directory)
    calls = {
        "out": [
            lambda: dissect(dataset, features, out=""),
            lambda: explain(dataset, features, out=""),
            lambda: directions(dataset, features, out=""),
            lambda: write_dissection("", None, dataset, None),
        ],
        "cache": [
            lambda: dissect(dataset, features, out="o", cache=""),
            lambda: explain(dataset, features, out="o", cache=""),
            lambda: directions(dataset, features, cache=""),
        ],
        "cache_root": [
            lambda: load_label_arrays(dataset, ""),
            lambda: load_image_array(dataset, ""),
        ],
    }
    for name, functions in calls.items():
        for call in functions:
            with pytest.raises(DissectError) as raised:
                call()
            assert str(raised.value).startswith(f"`{name}` is an empty path"), raised.value
            assert raised.value.arguments == (name,)
    assert list(tmp_path.iterdir()) == []
