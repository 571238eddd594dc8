"""Every public entry point refuses a bad argument with a DissectError naming it (issue 24):
each function in ``jaxdissect.__all__`` from Python (the argument in backticks, as the
library spells it), and each CLI command with exit status 2 and one line naming the flag."""

import inspect

import numpy as np
import pytest
from probe_fixture import dyadic_features

import jaxdissect as jd
from jaxdissect.cli import main


@pytest.fixture(scope="module")
def world(probe, tmp_path_factory):
    """An opened probe set, its labels and a features file of 3 units."""
    root = tmp_path_factory.mktemp("errors")
    dataset = jd.open_broden(probe.directory)
    np.save(root / "f.npy", dyadic_features(dataset.num_images, (4, 4, 3)))
    labels = jd.load_label_arrays(dataset, root / "cache", progress=False)
    return dataset, labels, root


def _thresholds_pass(world):
    root = world[2]
    acts = jd.features_activations(root / "f.npy")
    return jd.compute_thresholds(acts.read, 0, acts.shapes, jd.DissectConfig(), progress=False)


def _tally_pass(world):
    dataset, labels, root = world
    acts = jd.features_activations(root / "f.npy")
    config = jd.DissectConfig()
    return jd.compute_tally(acts.read, labels, dataset, {}, acts.shapes, config, progress=False)


def _activations_dissection(world):
    dataset, labels, root = world
    acts = jd.features_activations(root / "f.npy")
    return jd.dissect_activations(acts.read, 5, acts.shapes, dataset, labels, progress=False)


def _tally_update(world):
    """One image of 2 x 2 pixels, 3 units and 4 labels, counted under no known union."""
    state, resize = jd.tally_init(3, 4, 1), jd.bilinear_matrix(2, 2)
    acts, planes = np.zeros((1, 2, 2, 3), np.float32), np.zeros((1, 1, 2, 2), np.int32)
    return jd.tally_update(
        state, acts, np.zeros(3), planes, np.zeros((1, 1), np.int32), np.zeros(4, np.int32),
        resize, resize, union="both",
    )  # fmt: skip


# Per public function: a call with one bad argument, and the argument(s) its message names.
CALLS = {
    "bilinear_matrix": (lambda w: jd.bilinear_matrix(0, 4), ["out_size"]),
    "compute_thresholds": (_thresholds_pass, ["num_images"]),
    "compute_tally": (_tally_pass, ["thresholds"]),
    "dissect": (
        lambda w: jd.dissect(w[0], w[2] / "f.npy", layers=["a", "b"], progress=False),
        ["layers"],
    ),
    "dissect_activations": (_activations_dissection, ["num_images"]),
    "features_activations": (lambda w: jd.features_activations(w[2] / "f.npy", "hwc"), ["layout"]),
    "features_source": (lambda w: jd.features_source(w[2] / "f.npy"), ["features"]),
    "iou": (
        lambda w: jd.iou(np.ones(3), np.ones((2, 4)), np.ones((2, 1)), np.zeros(4)),
        ["label_area"],
    ),
    "label_units": (lambda w: jd.label_units(np.ones((2, 3)), np.zeros(4), 1), ["scores"]),
    "load_image_array": (lambda w: jd.load_image_array(str(w[0].directory)), ["dataset"]),
    "load_label_arrays": (lambda w: jd.load_label_arrays(str(w[0].directory)), ["dataset"]),
    "load_model": (lambda w: jd.load_model("no_colon_here"), ["model"]),
    "open_broden": (lambda w: jd.open_broden(w[0].directory, ["no_such"]), ["'no_such'"]),
    "quantile_init": (lambda w: jd.quantile_init(4, 1.5, 10), ["q"]),
    "quantile_merge": (
        lambda w: jd.quantile_merge(jd.quantile_init(4, 0.1, 10), jd.quantile_init(5, 0.1, 10)),
        ["a", "b"],
    ),
    "quantile_result": (lambda w: jd.quantile_result(jd.quantile_init(4, 0.1, 10)), ["state"]),
    "quantile_statistic": (lambda w: jd.quantile_statistic(0.0, 10), ["q"]),
    "quantile_update": (
        lambda w: jd.quantile_update(jd.quantile_init(4, 0.1, 10), np.ones((1, 2, 2, 5))),
        ["acts"],
    ),
    "summarize": (
        lambda w: jd.summarize(["c"], ["c"], ["x"], [0.5], [["x"]], [[0.5]], iou_threshold=1.5),
        ["iou_threshold"],
    ),
    "tally_init": (lambda w: jd.tally_init(0, 3, 1), ["units"]),
    "tally_merge": (
        lambda w: jd.tally_merge(jd.tally_init(2, 3, 1), jd.tally_init(3, 3, 1)),
        ["a", "b"],
    ),
    "tally_statistic": (lambda w: jd.tally_statistic(3, np.zeros(3), "both"), ["union"]),
    "tally_update": (_tally_update, ["union"]),
    "top_images_statistic": (lambda w: jd.top_images_statistic(0), ["k"]),
    "write_dissection": (
        lambda w: jd.write_dissection(w[2] / "out", {}, w[0], jd.DissectConfig()),
        ["dissection"],
    ),
}


def test_every_public_function_has_a_bad_call():
    functions = {n for n in jd.__all__ if inspect.isfunction(getattr(jd, n))}
    assert functions == set(CALLS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_bad_argument_is_a_dissect_error_naming_it(name, world):
    call, named = CALLS[name]
    with pytest.raises(jd.DissectError) as raised:
        call(world)
    message = str(raised.value)
    assert "\n" not in message
    for argument in named:
        assert argument in message if argument.startswith("'") else f"`{argument}`" in message


@pytest.mark.parametrize(
    "field, value", [("quantile", 1.0), ("iou_threshold", -0.1), ("union", "both"),
                     ("batch_size", 0), ("top_images", -1), ("kernel", "gpu")]
)  # fmt: skip
def test_a_bad_config_field_is_a_dissect_error_naming_it(field, value):
    with pytest.raises(jd.DissectError) as raised:
        jd.DissectConfig(**{field: value})
    assert str(raised.value).startswith(f"`{field}` ") and raised.value.arguments == (field,)
    assert raised.value.for_cli().startswith(f"--{field.replace('_', '-')} ")


def _cli_cases(probe, root):
    dataset, features = str(probe.directory), str(root / "f.npy")
    out = str(root / "out")
    (root / "a-file").write_text("")
    pass_args = ["--dataset", dataset, "--features", features, "--out", out, "--no-progress"]
    return {
        "dissect": (["dissect", *pass_args, "--layer", "a", "--layer", "b"], "--layer"),
        "dissect several processes": (
            [
                "dissect",
                *pass_args,
                "--kernel",
                "cpu",
                "--coordinator",
                "localhost:1234",
                "--num-processes",
                "2",
                "--process-id",
                "0",
            ],
            "--kernel 'cpu' runs in one process",
        ),
        "features": (
            [
                "features",
                "--model",
                "no_colon_here",
                "--layer",
                "x",
                "--images",
                features,
                "--out",
                str(root / "o.npy"),
            ],
            "--images",
        ),
        "formulas": (["formulas", *pass_args, "--weights", features], "--weights"),
        "directions": (["directions", *pass_args, "--weights", features], "--weights"),
        "report": (["report", str(root)], str(root)),
        "summarize": (["summarize", str(root / "no.csv")], str(root / "no.csv")),
        "synthetic": (
            [
                "synthetic",
                "probe",
                "--out",
                out,
                "--images",
                "2",
                "--size",
                "8",
                "--label-size",
                "3",
            ],
            "--label-size",
        ),
        "demo": (["demo", "--out", str(root / "a-file"), "--images", "20"], "a-file"),
        "fetch": (
            ["fetch", "broden1_224", "--dir", str(root / "d"), "--from", str(root / "no.zip")],
            "--from",
        ),
    }


def test_every_cli_command_refuses_a_bad_argument_in_one_line(probe, world, capsys):
    """Exit status 2 and one stderr line naming the flag (or the file given to it)."""
    from jaxdissect.cli import RUNNERS

    cases = _cli_cases(probe, world[2])
    assert {name.split()[0] for name in cases} == set(RUNNERS) - {"precompile"}
    for name, (argv, named) in cases.items():
        code = main(argv)
        err = capsys.readouterr().err.splitlines()
        assert (name, code, len(err)) == (name, 2, 1), err
        assert err[0].startswith("jaxdissect: error: ") and named in err[0], (name, err)


def test_argparse_refusals_exit_2_naming_the_argument(capsys):
    """``precompile`` takes no arguments; argparse's own refusals (usage, then one error
    line) exit 2 too."""
    with pytest.raises(SystemExit) as exit_info:
        main(["precompile", "--jobs", "4"])
    err = capsys.readouterr().err.splitlines()
    assert exit_info.value.code == 2
    assert err[-1] == "jaxdissect: error: unrecognized arguments: --jobs 4"


@pytest.mark.parametrize("config", ["paper", {"quantile": 0.01}])
def test_a_config_that_is_not_a_dissect_config_is_named(world, config):
    """A union rule's name (or a dict) where the DissectConfig goes: a DissectError naming
    `config`, with the fix for the likely slip, not an AttributeError deep in a pass."""
    with pytest.raises(jd.DissectError, match="`config` must be a DissectConfig") as caught:
        jd.dissect(world[0], world[2] / "f.npy", config, progress=False)
    assert caught.value.arguments == ("config",)
    if config == "paper":
        assert "DissectConfig(union='paper')" in str(caught.value)
