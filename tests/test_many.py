"""Many checkpoints of one architecture in one pass: each checkpoint's outputs equal its
own run's, byte for byte; a rerun reuses them; mixed architectures are refused."""

import pytest

from jaxdissect.cli import main

LAYERS = ["--layer", "conv_a", "--layer", "conv_b"]


def _seed_files(tmp_path, seeds):
    paths = []
    for name, seed in seeds.items():
        path = tmp_path / f"{name}.seed"
        path.write_text(str(seed))
        paths.append(path)
    return paths


def _files(folder):
    """The files a user sees in an output folder (through the published links), by path."""
    import os

    found = {}
    for root, folders, files in os.walk(folder, followlinks=True):
        folders[:] = [f for f in folders if not f.startswith(".")]
        for name in files:
            if not name.startswith("."):
                path = os.path.join(root, name)
                found[os.path.relpath(path, folder)] = open(path, "rb").read()
    return found


def test_checkpoints_in_one_pass_equal_their_own_runs(probe, tmp_path, capsys):
    paths = _seed_files(tmp_path, {"a": 1, "b": 2, "c": 3})
    common = ["dissect", "--dataset", str(probe.directory), "--model", "user_model:seeded_factory"]
    common += [*LAYERS, "--quantile", "0.05", "--no-progress", "--batch-size", "5"]
    weights = [arg for path in paths for arg in ("--weights", str(path))]
    assert main([*common, *weights, "--out", str(tmp_path / "many")]) == 0
    assert sorted(p.name for p in (tmp_path / "many").iterdir() if p.is_dir()) == ["a", "b", "c"]
    for path in paths:
        single = tmp_path / f"single-{path.stem}"
        assert main([*common, "--weights", str(path), "--out", str(single)]) == 0
        many = _files(tmp_path / "many" / path.stem)
        assert "conv_a/tally.csv" in many and "conv_b/results.json" in many
        assert many == _files(single), path.stem
    # The checkpoints differ, so equal files are not a constant.
    a, b = (tmp_path / "many" / n / "conv_b" / "tally.csv" for n in "ab")
    assert a.read_bytes() != b.read_bytes()

    # A rerun finds every checkpoint complete (its own fingerprint) and writes nothing.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "many").rglob("results.json")}
    capsys.readouterr()
    assert main([*common, *weights, "--out", str(tmp_path / "many")]) == 0
    assert "already dissected" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_python_api_takes_a_list_of_models(probe, tmp_path):
    from user_model import seeded_factory

    import jaxdissect as jd

    paths = _seed_files(tmp_path, {"x": 4, "y": 5})
    models = [seeded_factory(p) for p in paths]
    found = jd.dissect(
        probe.directory,
        models,
        jd.DissectConfig(quantile=0.05, batch_size=4),
        tmp_path / "out",
        layers=["conv_b"],
        weights=paths,
        report=False,
        progress=False,
    )
    assert sorted(found) == ["x", "y"]
    single = jd.dissect(
        probe.directory,
        models[1],
        jd.DissectConfig(quantile=0.05, batch_size=4),
        layers=["conv_b"],
        progress=False,
    )
    import numpy as np

    for field in ("thresholds", "label_area", "intersection", "unit_area"):
        np.testing.assert_array_equal(
            getattr(found["y"]["conv_b"], field), getattr(single["conv_b"], field)
        )


def test_mixed_architectures_and_clashing_names_are_refused(probe, tmp_path, capsys):
    from user_model import other_factory, seeded_factory

    import jaxdissect as jd
    from jaxdissect.errors import DissectError

    with pytest.raises(DissectError, match="share an architecture"):
        jd.dissect(
            probe.directory,
            [seeded_factory(None), other_factory(None)],
            out=tmp_path / "o",
            layers=["conv_a"],
            progress=False,
        )
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "w.seed").write_text("1")
    (two / "w.seed").write_text("2")
    args = ["dissect", "--dataset", str(probe.directory), "--model", "user_model:seeded_factory"]
    args += ["--layer", "conv_a", "--weights", str(one / "w.seed"), "--weights"]
    assert main([*args, str(two / "w.seed"), "--out", str(tmp_path / "o")]) == 2
    assert "same folder 'w'" in capsys.readouterr().err


@pytest.mark.parametrize("rerun_budget", ["one per group", "all in one group"])
def test_a_resumed_run_regroups_without_meeting_another_groups_states(
    probe, tmp_path, monkeypatch, rerun_budget
):
    """A run killed while writing checkpoint b (a written, b's passes saved, c not begun) is
    rerun with the same group size (b resumes from its own saved states) or another (the
    stale group's states are removed): every output equals its own run's."""
    from user_model import seeded_factory

    import jaxdissect as jd
    from jaxdissect import many

    paths = _seed_files(tmp_path, {"a": 1, "b": 2, "c": 3})
    config = jd.DissectConfig(quantile=0.05, batch_size=5)
    kwargs = dict(layers=["conv_b"], report=False, progress=False, checkpoint_every=1)
    out = tmp_path / "many"

    def run_many():
        return jd.dissect(
            probe.directory, [seeded_factory(p) for p in paths], config, out,
            weights=paths, **kwargs,
        )  # fmt: skip

    reads = {}
    group_source = many._group_source

    def counted(models, names, *args):
        read = group_source(models, names, *args)

        def counting(start, stop):
            reads[tuple(names)] = reads.get(tuple(names), 0) + 1
            return read(start, stop)

        return counting

    monkeypatch.setattr(many, "_group_source", counted)
    write_outputs = many.write_outputs

    def killed_at_b(out, *args, **kwargs):
        if out.name == "b":
            raise KeyboardInterrupt
        return write_outputs(out, *args, **kwargs)

    monkeypatch.setattr(many, "keep_budget", lambda: 1)  # one checkpoint per group
    monkeypatch.setattr(many, "write_outputs", killed_at_b)
    with pytest.raises(KeyboardInterrupt):
        run_many()
    assert [n for n in "abc" if _files(out / n)] == ["a"]
    # a's group removed its states after writing; b's are saved; c never began.
    assert len(list(out.glob(".checkpoint-*"))) == 1

    monkeypatch.setattr(many, "write_outputs", write_outputs)
    if rerun_budget == "all in one group":
        monkeypatch.undo()
        monkeypatch.setattr(many, "_group_source", counted)
    reads.clear()
    found = run_many()
    assert sorted(found) == ["b", "c"]  # a was reused
    if rerun_budget == "one per group":
        # b's passes were both saved whole: only the first image of each batch is read (the
        # three of them in one batch), to check that the model computes what the saved
        # states were computed from.
        assert reads[("b",)] == 1
    assert list(out.glob(".checkpoint*")) == []
    for path in paths:
        single = tmp_path / f"single-{path.stem}"
        jd.dissect(probe.directory, seeded_factory(path), config, single, weights=path, **kwargs)
        assert _files(out / path.stem) == _files(single), path.stem


def test_more_top_images_than_images_reuses_a_single_runs_outputs(probe, tmp_path, capsys):
    """top_images is clamped to the probe's 12 images as in a single run, so a checkpoint
    dissected alone is reused, and the other's outputs equal its own run's."""
    from user_model import seeded_factory

    import jaxdissect as jd

    paths = _seed_files(tmp_path, {"a": 1, "b": 2})
    config = jd.DissectConfig(quantile=0.05, batch_size=5, top_images=20)
    kwargs = dict(layers=["conv_b"], report=False, progress=False)
    for path in paths:
        jd.dissect(
            probe.directory, seeded_factory(path), config, tmp_path / "single" / path.stem,
            weights=path, **kwargs,
        )  # fmt: skip
    out = tmp_path / "many"
    jd.dissect(
        probe.directory, seeded_factory(paths[1]), config, out / "b", weights=paths[1], **kwargs
    )
    stamp = (out / "b" / "results.json").stat().st_mtime_ns
    found = jd.dissect(
        probe.directory, [seeded_factory(p) for p in paths], config, out, weights=paths,
        **{**kwargs, "progress": True},
    )  # fmt: skip
    assert sorted(found) == ["a"]
    assert "1 of 2 checkpoints already dissected" in capsys.readouterr().out
    assert (out / "b" / "results.json").stat().st_mtime_ns == stamp
    assert _files(out / "a") == _files(tmp_path / "single" / "a")


def test_a_vmapped_forward_is_recorded_in_fingerprint_and_results(probe, tmp_path, monkeypatch):
    """vmap's bits are not verified equal to one model's forward pass: its outputs say so,
    and a single run's outputs (lax.map's fingerprint) are not reused for it."""
    import json

    from user_model import seeded_factory

    import jaxdissect as jd
    from jaxdissect import many

    paths = _seed_files(tmp_path, {"a": 1, "b": 2})
    config = jd.DissectConfig(quantile=0.05, batch_size=5)
    kwargs = dict(layers=["conv_b"], report=False, progress=False)
    out = tmp_path / "many"
    jd.dissect(
        probe.directory, seeded_factory(paths[0]), config, out / "a", weights=paths[0], **kwargs
    )
    monkeypatch.setattr(many, "forward_mode", lambda: "vmap")
    found = jd.dissect(
        probe.directory, [seeded_factory(p) for p in paths], config, out, weights=paths,
        **kwargs,
    )  # fmt: skip
    assert sorted(found) == ["a", "b"]
    for name in "ab":
        results = json.loads((out / name / "results.json").read_text())
        fingerprint = json.loads((out / name / "fingerprint.json").read_text())
        assert results["stacked_forward"] == "vmap"
        assert fingerprint["activations"]["stacked_forward"] == "vmap"


def _bad_lists(tmp_path):
    """(source, keyword arguments, the argument the error must name, words it must say)."""
    from user_model import seeded_factory

    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "w.seed").write_text("1")
    (two / "w.seed").write_text("2")
    pair = [seeded_factory(one / "w.seed"), seeded_factory(two / "w.seed")]
    weights = [one / "w.seed", two / "w.seed"]
    return {
        "empty list": ([], {}, "source", "empty list"),
        "not a model": ([pair[0], "features.npy"], {}, "source", "lists a str"),
        "no layers": (pair, {"layers": None}, "layers", "at least one layer"),
        "weights of one name": (pair, {"weights": weights}, "weights", "same folder 'w'"),
        "models of one name": (pair, {}, "names", "same folder 'tiny'"),
        "names clash": (pair, {"names": ["x", "x"]}, "names", "same folder 'x'"),
        "too few names": (pair, {"names": ["x"]}, "names", "one folder name per model (2)"),
        "hidden name": (pair, {"names": ["x", ".y"]}, "names", "'.y'"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty list",
        "not a model",
        "no layers",
        "weights of one name",
        "models of one name",
        "names clash",
        "too few names",
        "hidden name",
    ],
)
def test_a_bad_list_of_models_names_the_argument(probe, tmp_path, case):
    import jaxdissect as jd
    from jaxdissect.errors import DissectError

    source, kwargs, argument, words = _bad_lists(tmp_path)[case]
    kwargs = {"layers": ["conv_a"], **kwargs}
    with pytest.raises(DissectError, match=f"`{argument}`") as error:
        jd.dissect(probe.directory, source, out=tmp_path / "o", progress=False, **kwargs)
    assert words in str(error.value)
    assert error.value.arguments == (argument,)
    assert not (tmp_path / "o").exists()


def test_names_choose_the_checkpoints_folders(probe, tmp_path):
    from user_model import seeded_factory

    import jaxdissect as jd
    from jaxdissect.errors import DissectError

    models = [seeded_factory(p) for p in _seed_files(tmp_path, {"a": 1, "b": 2})]
    found = jd.dissect(
        probe.directory, models, jd.DissectConfig(quantile=0.05, batch_size=5),
        tmp_path / "out", layers=["conv_a"], names=["early", "late"], report=False,
        progress=False,
    )  # fmt: skip
    assert sorted(found) == ["early", "late"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == [
        "early",
        "late",
    ]
    with pytest.raises(DissectError, match="`names` goes with a list of models"):
        jd.dissect(probe.directory, models[0], layers=["conv_a"], names=["x"], progress=False)


def test_checkpoint_names_strip_only_the_last_suffix():
    from jaxdissect.many import checkpoint_names

    names = checkpoint_names(["runs/a.step1.th", "runs/a.step2.th"], [None, None])
    assert names == ["a.step1", "a.step2"]
