"""The studies dissect the snapshots of a training run, and the seeds of one architecture,
in one pass (``jaxdissect.many``): each checkpoint's files equal, byte for byte, those the
one-at-a-time path (``dissect_model``) writes, and either path reuses the other's."""

import dataclasses
import os

import jax
import pytest

from experiments import common


def _files(folder):
    """The files a user sees in an output folder (through the published links), by path."""
    found = {}
    for root, folders, files in os.walk(folder, followlinks=True):
        folders[:] = [f for f in folders if not f.startswith(".")]
        for name in files:
            if not name.startswith("."):
                path = os.path.join(root, name)
                found[os.path.relpath(path, folder)] = open(path, "rb").read()
    return found


@pytest.fixture
def calls(monkeypatch):
    """Counts the study's dissections: many-checkpoint calls (their checkpoint names), the
    passes run (their layers) and one-at-a-time calls."""
    import jaxdissect.many

    counted = {"many": [], "passes": [], "single": 0}
    many, passes = common.dissect_many, jaxdissect.many.dissect_activations
    single = common.dissect_model

    def count_many(*args, **kwargs):
        counted["many"].append(list(kwargs["names"]))
        return many(*args, **kwargs)

    def count_passes(read, num_images, shapes, *args):
        counted["passes"].append(sorted(shapes))
        return passes(read, num_images, shapes, *args)

    def count_single(*args, **kwargs):
        counted["single"] += 1
        return single(*args, **kwargs)

    monkeypatch.setattr(common, "dissect_many", count_many)
    monkeypatch.setattr(jaxdissect.many, "dissect_activations", count_passes)
    monkeypatch.setattr(common, "dissect_model", count_single)
    return counted


def _probe(config, workdir):
    return common.prepare_probe(
        workdir / "probe", config.probe.images, config.probe.image_size, config.probe.seed, False
    )


def test_training_dynamics_dissects_a_runs_snapshots_in_one_pass(tmp_path, calls):
    from experiments import training_dynamics
    from train.checkpoints import feature_model

    overrides = ["variations=baseline", "seeds=1"]
    workdir = tmp_path / "td"
    argv = ["--config", "smoke", "--workdir", str(workdir), "--no-progress", *overrides]
    assert training_dynamics.main(argv) == 0
    steps = ["0", "1", "2", "4", "6"]
    # One call and one pass for the run's 5 snapshots, each in its units and rotated.
    assert calls["many"] == [steps]
    assert calls["passes"] == [sorted(f"{s}/conv5{r}" for s in steps for r in ("", "@rotated"))]
    assert calls["single"] == 0

    config = training_dynamics.Config(
        **{**training_dynamics.PRESETS["smoke"], "variations": ("baseline",), "seeds": 1}
    )
    probe, run_dir = _probe(config, workdir), workdir / "runs" / "baseline" / "seed0"
    batched = workdir / "dissections" / "baseline" / "seed0"
    single = tmp_path / "single"
    rotations, identities = [], []
    for step in steps:
        model = feature_model(run_dir, int(step))
        units = model.apply(probe.images[:1], ("conv5",))["conv5"].shape[-1]
        key = training_dynamics.rotation_key(0, int(step))
        rotations.append(
            {"conv5@rotated": ("conv5", training_dynamics.random_rotation(key, units))}
        )
        identities.append(common.checkpoint_identity(run_dir, int(step)))
        common.dissect_model(
            model, ["conv5"], probe, config.dissect, single / step, identities[-1], rotations[-1]
        )
        files = _files(batched / step)
        assert {"conv5/tally.csv", "conv5/results.json", "conv5@rotated/tally.csv"} <= set(files)
        assert files == _files(single / step), step
    # The snapshots differ, so equal files are not a constant.
    first, last = (batched / s / "conv5" / "tally.csv" for s in ("0", "6"))
    assert first.read_bytes() != last.read_bytes()

    # Results of the one-at-a-time path are reused by the batched one, and the other way.
    passes = len(calls["passes"])
    models = [feature_model(run_dir, int(step)) for step in steps]
    reused = common.dissect_models(
        models, ["conv5"], probe, config.dissect, single, steps, identities, rotations
    )
    assert reused["6"]["conv5"] == common.read_results(batched / "6" / "conv5")
    stamps = {p: p.stat().st_mtime_ns for p in batched.rglob("results.json")}
    assert training_dynamics.main(argv) == 0
    assert len(calls["passes"]) == passes
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_rotation_dissects_its_seeds_in_one_pass(tmp_path, calls):
    from experiments import rotation
    from train.checkpoints import feature_model

    workdir = tmp_path / "rot"
    argv = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
    assert rotation.main(argv) == 0
    config = rotation.Config(**rotation.PRESETS["smoke"])
    names = ["conv5", *(f"conv5@alpha{a}-r{i}" for i in (0, 1) for a in ("0.5", "1"))]
    assert calls["many"] == [["seed0", "seed1"]]
    assert calls["passes"] == [sorted(f"seed{s}/{n}" for s in (0, 1) for n in names)]
    probe = _probe(config, workdir)
    for seed in (0, 1):
        run_dir = workdir / "runs" / f"seed{seed}"
        model = feature_model(run_dir)
        units = model.apply(probe.images[:1], ("conv5",))["conv5"].shape[-1]
        single = tmp_path / "single" / f"seed{seed}"
        common.dissect_model(
            model, ["conv5"], probe, config.dissect, single,
            common.checkpoint_identity(run_dir, None), rotation.seed_rotations(config, seed, units),
        )  # fmt: skip
        files = _files(workdir / "dissections" / f"seed{seed}")
        assert set(files) >= {f"{name}/tally.csv" for name in names}
        assert files == _files(single), seed


def test_a_comparison_dissects_each_variants_seeds_in_one_pass(tmp_path, calls):
    from experiments import compare, width_depth

    workdir = tmp_path / "wd"
    argv = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
    assert width_depth.main(argv) == 0
    assert calls["many"] == [["seed0", "seed1"]] * 3  # width_x1, width_x2, depth_4
    assert len(calls["passes"]) == 3 and calls["single"] == 0
    config = width_depth.Config(**width_depth.PRESETS["smoke"])
    probe = _probe(config, workdir)
    index, variant = 1, width_depth.variants(config)[1]
    for seed in (0, 1):
        model, layer, weights, _ = compare.prepare_variant(variant, seed, config, workdir, False)
        units = model.apply(probe.images[:1], (layer,))[layer].shape[-1]
        key = compare.rotation_key(seed, index)
        rotations = {layer + common.ROTATED: (layer, compare.random_rotation(key, units))}
        single = tmp_path / "single" / f"seed{seed}"
        common.dissect_model(model, [layer], probe, config.dissect, single, weights, rotations)
        files = _files(workdir / "dissections" / variant.name / f"seed{seed}")
        assert f"{layer}@rotated/results.json" in files
        assert files == _files(single), seed


def test_a_model_without_parameters_is_dissected_alone(tmp_path, calls, probe):
    """A FeatureModel that does not expose its parameters cannot share a forward pass."""
    from user_model import seeded_factory

    from jaxdissect.config import DissectConfig
    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_image_array, load_label_arrays

    dataset = open_broden(probe.directory)
    prepared = common.Probe(dataset, load_label_arrays(dataset), load_image_array(dataset))
    models = []
    for seed in (1, 2):
        (tmp_path / f"{seed}.seed").write_text(str(seed))
        models.append(dataclasses.replace(seeded_factory(tmp_path / f"{seed}.seed"), function=None))
    layer = models[0].layer_names[0]
    config = DissectConfig(batch_size=5, quantile=0.05)
    found = common.dissect_models(
        models, [layer], prepared, config, tmp_path / "out", ["a", "b"], [{"s": 1}, {"s": 2}]
    )
    assert calls["many"] == [] and calls["single"] == 2
    assert set(found) == {"a", "b"} and set(found["a"]) == {layer}


def test_a_vmapped_study_pass_is_recorded_and_not_taken_for_one_at_a_time(
    tmp_path, monkeypatch, probe
):
    """On accelerators the stacked forward is vmap, not verified bit for bit against one
    model's: the study's outputs record it, and a one-at-a-time result is not reused."""
    import json

    from user_model import seeded_factory

    from jaxdissect import many
    from jaxdissect.config import DissectConfig
    from jaxdissect.data.broden import open_broden
    from jaxdissect.data.cache import load_image_array, load_label_arrays
    from jaxdissect.rotation import random_rotation

    dataset = open_broden(probe.directory)
    prepared = common.Probe(dataset, load_label_arrays(dataset), load_image_array(dataset))
    models = []
    for seed in (1, 2):
        (tmp_path / f"{seed}.seed").write_text(str(seed))
        models.append(seeded_factory(tmp_path / f"{seed}.seed"))
    layer = "conv_b"
    units = models[0].apply(prepared.images[:1], (layer,))[layer].shape[-1]
    rotations = [
        {layer + common.ROTATED: (layer, random_rotation(jax.random.key(s), units))} for s in (1, 2)
    ]
    config = DissectConfig(batch_size=5, quantile=0.05)
    out, identities = tmp_path / "out", [{"seed": 1}, {"seed": 2}]
    common.dissect_model(
        models[0], [layer], prepared, config, out / "a", identities[0], rotations[0]
    )
    monkeypatch.setattr(many, "forward_mode", lambda: "vmap")
    passes = []
    dissect_activations = many.dissect_activations
    monkeypatch.setattr(
        many,
        "dissect_activations",
        lambda *a: passes.append(sorted(a[2])) or dissect_activations(*a),
    )
    common.dissect_models(models, [layer], prepared, config, out, ["a", "b"], identities, rotations)
    assert passes == [sorted(f"{n}/{layer}{r}" for n in "ab" for r in ("", common.ROTATED))]
    for name in "ab":
        for folder in (layer, layer + common.ROTATED):
            results = json.loads((out / name / folder / "results.json").read_text())
            fingerprint = json.loads((out / name / folder / "fingerprint.json").read_text())
            assert results["stacked_forward"] == "vmap"
            assert fingerprint["activations"]["stacked_forward"] == "vmap"
            assert fingerprint["activations"]["weights"] == identities["ab".index(name)]
