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


def _huge_quantile_batch(w):
    """B * h * w = 2**32 positions per unit, traced only (never allocated)."""
    import jax

    state = jd.quantile_init(2, 1e-5, 2**33)
    acts = jax.ShapeDtypeStruct((2**16, 2**8, 2**8, 2), np.float32)
    return jax.eval_shape(jd.quantile_update, state, acts)


def _quantile_result_under_jit(w):
    import jax

    return jax.jit(jd.quantile_result)(jd.quantile_init(2, 0.1, 10))


def _quantile_overfull(w):
    """A state told of 4 positions, fed 16: the quantile needs more than it kept."""
    state = jd.quantile_init(2, 0.25, 4)
    return jd.quantile_result(jd.quantile_update(state, np.arange(32.0).reshape(1, 4, 4, 2)))


def _iou_float64_without_x64(w):
    import jax.numpy as jnp

    counts = (jnp.ones(4, jnp.int32), jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 1), jnp.int32))
    return jd.iou(*counts, np.zeros(4, np.int32), dtype=np.float64)


def _top_images_update(w):
    statistic = jd.top_images_statistic(2)
    return statistic.update(statistic.init(3, 4, 4), np.ones((1, 2, 2, 3)), np.zeros(1))


def _checkpoint_every(w):
    return jd.dissect(w[0], w[2] / "f.npy", out=w[2] / "ck", checkpoint_every=0, progress=False)


def _write_broden_big_label(w):
    from jaxdissect.data.broden_writer import ProbeImage, write_broden

    image = ProbeImage(
        "x", np.zeros((4, 4, 3), np.uint8), {"object": [np.full((2, 2), 70000, np.int32)]}
    )
    return write_broden(w[2] / "big", ["object"], ["-", "a"], {"object": [1]}, [image])


def _synthetic():
    from jaxdissect.data.synthetic import figure, world

    return world, figure


def _loader():
    from jaxdissect.data import loader

    return loader


def _activations_of(w, shapes, read=None):
    """dissect_activations of the world's probe with these ``shapes`` (and source)."""
    dataset, labels, _ = w
    read = read or (lambda start, stop: {"l": np.zeros((stop - start, 4, 4, 3), np.float32)})
    return jd.dissect_activations(read, dataset.num_images, shapes, dataset, labels, progress=False)


# Beyond jd.*: the raises that issue 24 turned into DissectErrors, one call per kind of bad
# argument (the public statistics' states, the synthetic world, the loader, the writer).
MORE_CALLS = {
    "quantile_statistic update, another q": (
        lambda w: jd.quantile_statistic(0.1, 10).update(
            jd.quantile_statistic(0.2, 10).init(2), np.ones((1, 1, 1, 2))
        ),
        ["state"],
    ),
    "tally_statistic merge, other settings": (
        lambda w: jd.tally_statistic(3, np.zeros(3), "paper").merge(
            jd.tally_statistic(3, np.zeros(3), "paper").init(2),
            jd.tally_statistic(3, np.zeros(3), "lite").init(2),
        ),
        ["b"],
    ),
    "top_images_statistic merge, another k": (
        lambda w: jd.top_images_statistic(2).merge(
            jd.top_images_statistic(3).init(2, 4, 4), jd.top_images_statistic(2).init(2, 4, 4)
        ),
        ["a"],
    ),
    "top_images_statistic merge, other maps": (
        lambda w: jd.top_images_statistic(2).merge(
            jd.top_images_statistic(2).init(2, 4, 4), jd.top_images_statistic(2).init(2, 2, 2)
        ),
        ["a", "b"],
    ),
    "top_images_statistic update, other map size": (_top_images_update, ["acts", "state"]),
    "quantile_update, 2**32 positions": (_huge_quantile_batch, ["acts"]),
    "quantile_result under jit": (_quantile_result_under_jit, ["q", "positions"]),
    "quantile_result, too few kept": (_quantile_overfull, ["state"]),
    "quantile_merge, another q": (
        lambda w: jd.quantile_merge(jd.quantile_init(2, 0.1, 10), jd.quantile_init(2, 0.11, 10)),
        ["a", "b"],
    ),
    "iou float64 without x64": (_iou_float64_without_x64, ["dtype"]),
    "dissect checkpoint_every": (_checkpoint_every, ["checkpoint_every"]),
    "WorldConfig image_size": (lambda w: _synthetic()[0].WorldConfig(image_size=4), ["image_size"]),
    "WorldConfig label_size": (
        lambda w: _synthetic()[0].WorldConfig(image_size=16, label_size=5),
        ["label_size", "image_size"],
    ),
    "WorldConfig texture_fraction": (
        lambda w: _synthetic()[0].WorldConfig(texture_fraction=1.5),
        ["texture_fraction"],
    ),
    "draw split": (lambda w: _synthetic()[0].draw(0, "holdout", 0), ["split"]),
    "scene_arrays probe split": (lambda w: _synthetic()[0].scene_arrays(0, "probe", 2), ["split"]),
    "write_probe num_images": (
        lambda w: _synthetic()[0].write_probe(w[2] / "p0", 0, progress=False),
        ["num_images"],
    ),
    "save_world_figure rows": (
        lambda w: _synthetic()[1].save_world_figure(w[2] / "fig.png", rows=0),
        ["rows"],
    ),
    "ArraySource lengths": (
        lambda w: _loader().ArraySource(image=np.zeros(3), label=np.zeros(2)),
        ["image", "label"],
    ),
    "iterate_batches batch_size": (
        lambda w: next(_loader().iterate_batches(_loader().ArraySource(x=np.zeros(3)), 4)),
        ["batch_size"],
    ),
    "write_broden label number": (_write_broden_big_label, ["images"]),
    "bilinear_matrix 10**6 x 10**6": (lambda w: jd.bilinear_matrix(10**6, 10**6), ["out_size"]),
    "open_broden categories a string": (
        lambda w: jd.open_broden(w[0].directory, categories="color"),
        ["categories"],
    ),
    "dissect weights without a model": (
        lambda w: jd.dissect(w[0], w[2] / "f.npy", weights="x", progress=False),
        ["weights"],
    ),
    "dissect source None": (lambda w: jd.dissect(w[0], None, progress=False), ["source"]),
    "dissect images of another count": (
        lambda w: jd.dissect(
            w[0], w[2] / "f.npy", images=np.zeros((3, 8, 8, 3), np.uint8), progress=False
        ),
        ["images"],
    ),
    "dissect_activations source returns None": (
        lambda w: _activations_of(w, {"l": (4, 4, 3)}, lambda start, stop: None),
        ["activations"],
    ),
    "dissect_activations shapes of 2 dims": (
        lambda w: _activations_of(w, {"l": (4, 16)}),
        ["shapes"],
    ),
    "dissect_activations no shapes": (lambda w: _activations_of(w, {}), ["shapes"]),
    "dissect_activations 10**9 units": (
        lambda w: _activations_of(w, {"l": (4, 4, 10**9)}),
        ["shapes"],
    ),
    "dissect_activations 10**5 px maps": (
        lambda w: _activations_of(w, {"l": (10**5, 4, 3)}),
        ["shapes"],
    ),
}


@pytest.mark.parametrize("name", sorted(CALLS) + sorted(MORE_CALLS))
def test_a_bad_argument_is_a_dissect_error_naming_it(name, world):
    call, named = {**CALLS, **MORE_CALLS}[name]
    with pytest.raises(jd.DissectError) as raised:
        call(world)
    message = str(raised.value)
    assert "\n" not in message
    for argument in named:
        if argument.startswith("'"):  # a value, not an argument
            assert argument in message
        else:
            assert f"`{argument}`" in message and argument in raised.value.arguments, message


def test_cli_world_and_split_refusals_name_the_flags(tmp_path, capsys):
    """The converted refusals that a command reaches: the synthetic world's sizes (spelt as
    --size) and the held-out split of a one-image probe set (--dataset)."""
    from jaxdissect.data.synthetic import world

    probe = world.write_probe(tmp_path / "one", 1, 0, world.WorldConfig(image_size=16), False)
    np.save(tmp_path / "f.npy", np.ones((1, 4, 4, 2), np.float32))
    cases = [
        (["synthetic", "probe", "--out", str(tmp_path / "p"), "--images", "2", "--size", "4"],
         "--size must lie in [8, 2048], got 4"),
        (["directions", "--dataset", str(probe), "--features", str(tmp_path / "f.npy"),
          "--out", str(tmp_path / "d"), "--no-progress"],
         "--dataset holds 1 image"),
    ]  # fmt: skip
    for argv, expected in cases:
        code = main(argv)
        err = capsys.readouterr().err.splitlines()
        assert (code, len(err)) == (2, 1), err
        assert err[0].startswith("jaxdissect: error: ") and expected in err[0], err


def _demo():
    from jaxdissect import demo

    return demo


def _fetch(**paths):
    from jaxdissect.data.fetch import fetch

    return fetch("broden1_224", **{"directory": "d", **paths}, progress=False)


EMPTY_PATHS = {
    "write_probe": (lambda: _synthetic()[0].write_probe("", 1, progress=False), "directory"),
    "save_world_figure": (lambda: _synthetic()[1].save_world_figure(""), "path"),
    "demo.run": (lambda: _demo().run("", 2, progress=False), "out"),
    "fetch directory": (lambda: _fetch(directory=""), "directory"),
    "fetch from_file": (lambda: _fetch(from_file=""), "from_file"),
}


@pytest.mark.parametrize("name", sorted(EMPTY_PATHS))
def test_an_empty_path_is_refused_naming_its_argument(name, tmp_path, monkeypatch):
    """'' reads as the current folder in Python's paths: refused before anything is
    written (the test runs in an empty folder, which must stay empty)."""
    monkeypatch.chdir(tmp_path)
    call, argument = EMPTY_PATHS[name]
    with pytest.raises(jd.DissectError, match=f"^`{argument}` is an empty path") as raised:
        call()
    assert raised.value.arguments == (argument,)
    assert list(tmp_path.iterdir()) == []
