"""Smoke tests of the experiments at tiny configs, and the rotation they rely on."""

import json

import jax
import numpy as np
import pytest

from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import open_broden
from jaxdissect.errors import DissectError
from jaxdissect.rotation import fractional_rotation, random_rotation


def dissection(folder):
    return json.loads((folder / "results.json").read_text())


def unique_detectors(results, threshold=0.04):
    """Distinct (category, top label) among the units scoring above ``threshold``, recounted
    from a dissection's per-unit rows."""
    return len({(r["category"], r["label"]) for r in results["units"] if r["score"] > threshold})


def detectors(results, threshold=0.04):
    return sum(r["score"] > threshold for r in results["units"])


def test_random_rotation_is_a_rotation():
    r = random_rotation(jax.random.key(0), 12)
    np.testing.assert_allclose(r @ r.T, np.eye(12), atol=1e-10)
    assert np.linalg.det(r) == pytest.approx(1.0)


@pytest.mark.parametrize("size", [7, 12])
def test_fractional_rotation_interpolates(size):
    r = random_rotation(jax.random.key(1), size)
    np.testing.assert_allclose(fractional_rotation(r, 0.0), np.eye(size), atol=1e-12)
    np.testing.assert_allclose(fractional_rotation(r, 1.0), r, atol=1e-12)
    half = fractional_rotation(r, 0.5)
    np.testing.assert_allclose(half @ half.T, np.eye(size), atol=1e-8)
    np.testing.assert_allclose(half @ half, r, atol=1e-8)
    third = fractional_rotation(r, 1 / 3)
    np.testing.assert_allclose(third @ third @ third, r, atol=1e-8)


def labels_of(results, threshold=0.04):
    """Per unit, its (category, label) when its IoU is above ``threshold``, else None."""
    rows = sorted(results["units"], key=lambda r: r["unit"])
    return [(r["category"], r["label"]) if r["score"] > threshold else None for r in rows]


def run_dynamics_smoke(workdir, cache):
    from experiments import training_dynamics

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAXDISSECT_CACHE", str(cache))
        argv = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
        assert training_dynamics.main(argv) == 0
    return json.loads((workdir / "results.json").read_text())


@pytest.fixture(scope="module")
def dynamics_smoke(tmp_path_factory):
    """The training_dynamics smoke preset, run once for the tests below."""
    root = tmp_path_factory.mktemp("dynamics")
    return root / "td", run_dynamics_smoke(root / "td", root / "cache")


def assert_counts_recounted(counts, rotated_counts, seed, units, rotated):
    """A result's per-seed unique detectors and detectors (``counts``) and the rotated
    basis's unique detectors (``rotated_counts``) equal those recounted from the
    dissections ``units`` and ``rotated``."""
    assert counts["total"]["per_seed"][seed] == unique_detectors(units)
    assert counts["detectors"]["per_seed"][seed] == detectors(units)
    assert rotated_counts["total"]["per_seed"][seed] == unique_detectors(rotated)


def label_transitions(before, after):
    """Per-unit labels (``labels_of``) from one dissection to another: how many units keep
    their label, gain one and lose theirs."""
    pairs = list(zip(before, after, strict=True))
    return {
        "keep": sum(a is not None and a == b for a, b in pairs),
        "gain": sum(a is None and b is not None for a, b in pairs),
        "lose": sum(a is not None and b is None for a, b in pairs),
    }


def recount_dynamics_curves(workdir, curves):
    """Checks each curve point against its dissections and the run's metrics;
    {(variation, seed, step): (unique detectors, rotated unique detectors, labels)}."""
    recounted = {}
    for variation, points in curves.items():
        assert [p["step"] for p in points] == [0, 1, 2, 4, 6]
        for seed in (0, 1):
            run_dir = workdir / "runs" / variation / f"seed{seed}"
            recorded = json.loads((run_dir / "config.json").read_text())
            assert (recorded["init_seed"], recorded["seed"]) == (seed, seed)
        for point in points:
            for seed in (0, 1):
                folder = workdir / "dissections" / variation / f"seed{seed}" / str(point["step"])
                units, rotated = dissection(folder / "conv5"), dissection(folder / "conv5@rotated")
                metrics = [
                    json.loads(line)
                    for line in (workdir / "runs" / variation / f"seed{seed}" / "metrics.jsonl")
                    .read_text()
                    .splitlines()
                ]
                evaluated = {m["step"]: m["eval_accuracy"] for m in metrics if "eval_accuracy" in m}
                assert_counts_recounted(point["units"], point["rotated"], seed, units, rotated)
                assert point["eval_accuracy"]["per_seed"][seed] == evaluated[point["step"]]
                assert point["num_units"] == len(units["units"]) == len(rotated["units"])
                assert (folder / "conv5" / "report.html").is_file()
                recounted[variation, seed, point["step"]] = (
                    unique_detectors(units),
                    unique_detectors(rotated),
                    labels_of(units),
                )
            stat = point["units"]["total"]
            assert stat["mean"] == pytest.approx(sum(stat["per_seed"]) / 2, abs=1e-12)
            assert len(stat["ci95"]) == 2
    return recounted


def check_dynamics_claims(claims_list, recounted):
    """The claims pair each seed's recounted counts; their verdicts follow from their
    intervals."""
    claims = {c["claim"]: c for c in claims_list}
    for variation in ("baseline", "no_dropout"):
        emerge = claims[f"{variation}: unique detectors emerge with training"]
        assert emerge["per_seed"] == [
            [recounted[variation, s, 6][0], recounted[variation, s, 0][0]] for s in (0, 1)
        ]
        rotation = claims[
            f"{variation}: units have more unique detectors than a random rotation of their basis"
        ]
        assert rotation["per_seed"] == [list(recounted[variation, s, 6][:2]) for s in (0, 1)]
    dropout = claims["dropout raises interpretability"]
    assert dropout["per_seed"] == [
        [recounted["baseline", s, 6][0], recounted["no_dropout", s, 6][0]] for s in (0, 1)
    ]
    for c in claims_list:
        differences = [a - b for a, b in c["per_seed"]]
        assert c["mean_difference"] == pytest.approx(sum(differences) / 2, abs=1e-12)
        low, high = c["ci95"]
        expected = "replicated" if low > 0 else "contradicted" if high < 0 else "inconclusive"
        assert c["verdict"] == expected


def check_concept_evolution(evolution, recounted):
    """The baseline's concept evolution, recounted from the dissections: keep / gain
    between steps 0 and 1, and the most switching units' labels at every step."""
    transition = evolution["transitions"][0]
    assert (transition["from"], transition["to"]) == (0, 1)
    for seed in (0, 1):
        before, after = recounted["baseline", seed, 0][2], recounted["baseline", seed, 1][2]
        counts = label_transitions(before, after)
        assert transition["keep"]["per_seed"][seed] == counts["keep"]
        assert transition["gain"]["per_seed"][seed] == counts["gain"]
    for item in evolution["most_switching"]:
        labels = [
            recounted["baseline", item["seed"], step][2][item["unit"] - 1]
            for step in (0, 1, 2, 4, 6)
        ]
        assert item["labels"] == {
            str(step): label[1] if label else ""
            for step, label in zip((0, 1, 2, 4, 6), labels, strict=True)
        }


def test_training_dynamics_smoke(dynamics_smoke):
    from experiments import training_dynamics

    workdir, results = dynamics_smoke
    assert set(results["curves"]) == {"baseline", "no_dropout"}
    assert results["seeds"] == [0, 1]
    recounted = recount_dynamics_curves(workdir, results["curves"])
    check_dynamics_claims(results["claims"], recounted)
    check_concept_evolution(results["concept_evolution"]["baseline"], recounted)
    assert set(results["provenance"]["versions"]) >= {"jax", "flax", "numpy", "numba"}
    for name in (
        "unique_detectors.png",
        "per_category.png",
        "accuracy.png",
        "concept_transitions.png",
        "summary.html",
    ):
        assert (workdir / name).stat().st_size > 1000
    # The claims table comes first on the summary page, the plots with their captions after.
    page = (workdir / "summary.html").read_text()
    assert page.index("The paper's claims") < page.index("<figure>")
    assert page.count("<figcaption>") == 4
    # A rerun reuses every checkpoint and dissection.
    tally = workdir / "dissections" / "baseline" / "seed1" / "6" / "conv5" / "tally.csv"
    before = tally.stat().st_mtime_ns
    training_dynamics.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"])
    assert tally.stat().st_mtime_ns == before


# What legitimately differs between two runs of the same config: how long they took, and
# what machine, commit and installed versions produced them.
RUN_SPECIFIC = ("seconds", "provenance")


def test_training_dynamics_smoke_is_reproducible(dynamics_smoke, tmp_path):
    """A second run from scratch, in another workdir with its own data cache, writes the
    same results.json."""
    _, first = dynamics_smoke
    second = run_dynamics_smoke(tmp_path / "td", tmp_path / "cache")
    for name in RUN_SPECIFIC:
        first, second = dict(first), dict(second)
        assert name in first and name in second
        del first[name], second[name]
    assert first == second


def test_gpu_preset_is_full_width_at_128_px():
    from flax import nnx

    from experiments import architectures, compare, rotation, training_dynamics
    from experiments.cli import parse_args
    from train.config import make_config
    from train.models import build_model

    _, config = parse_args(
        "", training_dynamics.PRESETS, training_dynamics.Config, ["--config", "gpu"]
    )
    assert (config.seeds, config.probe.images, config.probe.image_size) == (3, 10_000, 128)
    alexnet = training_dynamics.train_config(config, "baseline", 2)
    assert (alexnet.width, alexnet.image_size, alexnet.init_seed, alexnet.seed) == (1.0, 128, 2, 2)
    assert alexnet.schedule()[:6] == (0, 1, 2, 4, 9, 20)  # log-spaced snapshots
    model = nnx.eval_shape(lambda: build_model(alexnet, 16))
    assert model.conv5.conv.out_features == 256
    _, arch = parse_args("", architectures.PRESETS, architectures.Config, ["--config", "gpu"])
    resnet = next(v for v in architectures.variants(arch) if v.name == "resnet_style")
    overrides = [f"image_size={arch.probe.image_size}", *arch.train_overrides, *resnet.overrides]
    network = nnx.eval_shape(lambda: build_model(make_config(arch.train_preset, overrides), 16))
    assert network.classifier.in_features == 512  # layer3, ResNet-18's last width
    for module in (rotation, compare):
        preset = module.PRESETS["gpu"]
        assert (preset["probe"].images, preset["probe"].image_size) == (10_000, 128)
        assert "width=1.0" in preset["train_overrides"]


def test_gpu_preset_runs_at_smoke_scale(tmp_path, monkeypatch):
    """The gpu preset's structure on CPU, its sizes overridden down to seconds, with one
    seed: intervals undefined, every verdict inconclusive."""
    from experiments import training_dynamics

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    workdir = tmp_path / "gpu"
    small = [
        "train_preset=smoke",
        "train_overrides=width=0.25,batch_size=16",
        "steps=2",
        "seeds=1",
        "variations=baseline",
        "probe.images=20",
        "probe.image_size=32",
        "dissect.batch_size=20",
    ]
    argv = ["--config", "gpu", "--workdir", str(workdir), "--no-progress", *small]
    assert training_dynamics.main(argv) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert [p["step"] for p in results["curves"]["baseline"]] == [0, 1, 2]
    assert results["best_step"]["baseline"] in (0, 1, 2)
    assert [c["verdict"] for c in results["claims"]] == ["inconclusive"] * 2
    assert all(c["ci95"] is None for c in results["claims"])
    assert results["config"]["dissect"]["batch_size"] == 20


@pytest.fixture(scope="module")
def rotation_smoke(tmp_path_factory):
    """The rotation smoke preset, run once: (workdir, its cache folder, results)."""
    from experiments import rotation

    root = tmp_path_factory.mktemp("rotation")
    workdir = root / "rot"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAXDISSECT_CACHE", str(root / "cache"))
        argv = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
        assert rotation.main(argv) == 0
    return workdir, root / "cache", json.loads((workdir / "results.json").read_text())


def test_rotation_smoke(rotation_smoke):
    workdir, _, results = rotation_smoke
    assert set(results["by_iou_threshold"]) == {"0.04", "0.06", "0.08", "0.1"}
    assert results["seeds"] == [0, 1]
    for rows in results["by_iou_threshold"].values():
        assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    # Unique detectors can only fall as the threshold rises, seed by seed.
    at = lambda t: [r["unique"]["per_seed"] for r in results["by_iou_threshold"][t]]  # noqa: E731
    assert all(
        a >= b
        for x, y in zip(at("0.04"), at("0.1"), strict=True)
        for a, b in zip(x, y, strict=True)
    )
    # Each seed's value recounted from the dissections it summarizes (mean over rotations).
    for threshold, rows in results["by_iou_threshold"].items():
        for alpha, row in zip(["0", "0.5", "1"], rows, strict=True):
            names = ["conv5"] if alpha == "0" else [f"conv5@alpha{alpha}-r{i}" for i in (0, 1)]
            for seed in (0, 1):
                found = [
                    dissection(workdir / "dissections" / f"seed{seed}" / name) for name in names
                ]
                unique = [unique_detectors(r, float(threshold)) for r in found]
                assert row["unique"]["per_seed"][seed] == pytest.approx(np.mean(unique), abs=1e-12)
                assert row["detectors"]["per_seed"][seed] == pytest.approx(
                    np.mean([detectors(r, float(threshold)) for r in found]), abs=1e-12
                )
    # The claims: alpha 0 against alpha 1, and each seed's least-squares slope against alpha.
    units_claim, slope_claim = results["claims"]
    rows = results["by_iou_threshold"]["0.04"]
    assert units_claim["per_seed"] == [
        [rows[0]["unique"]["per_seed"][s], rows[2]["unique"]["per_seed"][s]] for s in (0, 1)
    ]
    for seed, (value, zero) in enumerate(slope_claim["per_seed"]):
        y = [row["unique"]["per_seed"][seed] for row in rows]
        # Three equally spaced alphas 0, 0.5, 1: the slope is (last - first) / 1.
        assert (value, zero) == (pytest.approx(y[2] - y[0], abs=1e-12), 0.0)
    assert slope_claim["paper_sign"] == -1
    # Chance IoU: a mask of the unit's area A placed at random over P labelled positions
    # meets the G positions of its label in E = A * G / P of them; IoU = E / (A + G - E).
    label_positions = int(np.prod(open_broden(workdir / "probe").label_size))
    for name, chance in results["chance_iou"].items():
        for seed in (0, 1):
            found = dissection(workdir / "dissections" / f"seed{seed}" / name)
            ious = []
            for row in found["units"]:
                area = row[row["category"] + "-activation"]
                truth = row[row["category"] + "-truth"]
                expected = area * truth / (found["images"] * label_positions)
                union = area + truth - expected
                ious.append(expected / union if union else 0.0)
            assert chance["per_seed"][seed] == pytest.approx(sum(ious) / len(ious), rel=1e-12)
    assert (workdir / "rotation.png").stat().st_size > 1000


def published(workdir):
    """The study's published names in ``workdir`` (the links into its set), with the bytes
    each resolves to."""
    return {p.name: p.read_bytes() for p in sorted(workdir.iterdir()) if p.is_symlink()}


def assert_one_set(workdir):
    """config.json is results.json's config, and summary.html's figures resolve both in the
    set's folder and through the workdir's links."""
    import re

    from jaxdissect.outdir import current_set

    results = json.loads((workdir / "results.json").read_text())
    assert json.loads((workdir / "config.json").read_text()) == results["config"]
    figures = re.findall(r'<img src="([^"]+)"', (workdir / "summary.html").read_text())
    assert figures
    for name in figures:
        assert (workdir / name).is_file() and (current_set(workdir, "study") / name).is_file()


def test_a_study_publishes_one_whole_set(rotation_smoke, monkeypatch):
    """Issue 27: results.json, config.json, each figure and summary.html were renamed into
    the workdir one by one: a kill between them left new results beside the earlier run's
    figures and summary.html, and a rerun drawing fewer figures left the earlier run's
    beside its own. They are one output set now (jaxdissect.outdir)."""
    import os

    from experiments import rotation
    from jaxdissect import outdir

    workdir, cache, _ = rotation_smoke
    monkeypatch.setenv("JAXDISSECT_CACHE", str(cache))
    args = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
    first = published(workdir)
    assert set(first) == {"config.json", "results.json", "rotation.png", "summary.html"}
    assert_one_set(workdir)
    plot = rotation.plot

    def plot_one_more(summary, path, layer):
        plot(summary, path, layer)
        (path.parent / "extra.png").write_bytes(path.read_bytes())

    monkeypatch.setattr(rotation, "plot", plot_one_more)
    assert rotation.main(args) == 0  # a rerun: the trainings and dissections are reused
    second = published(workdir)
    assert set(second) == {*first, "extra.png"}

    # Killed after results.json, config.json and the figures of other results (a third IoU
    # threshold), before summary.html: every name still gives the earlier set's bytes.
    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(rotation, "write_page", killed)
    monkeypatch.setattr(outdir, "discard", lambda folder: None)  # a kill cleans nothing up
    with pytest.raises(Killed):
        rotation.main([*args, "iou_thresholds=0.04,0.05"])
    assert published(workdir) == second
    store = workdir / ".jaxdissect"
    left = [f for f in store.glob("study.*") if f != outdir.current_set(workdir, "study")]
    assert len(left) == 1 and not (left[0] / "summary.html").exists()
    assert "0.05" in json.loads((left[0] / "results.json").read_text())["by_iou_threshold"]
    assert (left[0] / "rotation.png").is_file()

    # The next rerun draws no extra.png: that name no longer resolves.
    monkeypatch.undo()
    monkeypatch.setenv("JAXDISSECT_CACHE", str(cache))
    assert rotation.main(args) == 0
    assert set(published(workdir)) == set(first)
    assert not os.path.lexists(workdir / "extra.png")
    assert_one_set(workdir)
    # The earlier sets and the killed run's folder are gone; what it resumes from stays.
    assert [f.name for f in store.glob("study.*")] == [outdir.current_set(workdir, "study").name]
    assert (workdir / "dissections" / "seed0" / "conv5" / "results.json").is_file()


def test_every_study_figure_is_an_earlier_versions_name():
    """The figures the studies draw (each has a caption in report_docs) are among the names
    an earlier version's workdir is cleared of, so none stays beside a new set."""
    from experiments.report_docs import CAPTIONS
    from jaxdissect.outdir import LEGACY_NAMES

    marker, names = LEGACY_NAMES["study"]
    assert marker == "results.json"
    assert {*CAPTIONS, "config.json", "summary.html"} <= set(names)


def test_a_workdir_in_use_is_refused(tmp_path, capsys):
    """A second run of a study's workdir, whose trainings, dissections and published set
    would interleave with the first's, is refused in one line naming the holder."""
    import os

    from experiments import rotation
    from experiments.workdir import held_workdir

    workdir = tmp_path / "rot"
    workdir.mkdir()
    with held_workdir(workdir):
        assert rotation.main(["--config", "smoke", "--workdir", str(workdir)]) == 2
    assert capsys.readouterr().err == (
        f"experiments.rotation: error: --workdir {workdir}: in use by a running study (pid "
        f"{os.getpid()}); wait for it or choose another --workdir\n"
    )
    assert not (workdir / "probe").exists()


def test_an_earlier_versions_study_files_are_moved_aside(tmp_path, capsys):
    """Issue 27: a workdir from before sets holds plain results.json, config.json, figures
    and summary.html: the first set published there moves them, and only them, into
    .jaxdissect/displaced.1/ (a figure the new set lacks too), deleting nothing."""
    from experiments.workdir import held_workdir, save_json, study_set

    workdir = tmp_path / "old"
    workdir.mkdir()
    earlier = {
        "results.json": b'{"config": {"layer": "conv4"}}\n',
        "config.json": b'{"layer": "conv4"}\n',
        "summary.html": b"<img src=rotation.png>",
        "rotation.png": b"earlier figure",
        "accuracy.png": b"a figure this run does not draw",
    }
    for name, content in earlier.items():
        (workdir / name).write_bytes(content)
    (workdir / "notes.txt").write_text("mine\n")
    save_json(workdir / "study.json", {"study": "rotation"})
    with held_workdir(workdir), study_set(workdir, {"config": {"layer": "conv5"}}) as folder:
        (folder / "rotation.png").write_bytes(b"new figure")
        (folder / "summary.html").write_text('<img src="rotation.png">')
    aside = workdir / ".jaxdissect" / "displaced.1"
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == earlier
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"to {aside}" in err and "accuracy.png" in err
    assert not (workdir / "accuracy.png").exists()
    assert (workdir / "notes.txt").read_text() == "mine\n"
    assert (workdir / "rotation.png").read_bytes() == b"new figure"
    assert json.loads((workdir / "config.json").read_text()) == {"layer": "conv5"}


# Each comparison's variants, in the order of its rows.
COMPARISON_VARIANTS = {
    "width_depth": ["width_x1", "width_x2", "depth_4"],
    "supervision": ["supervised", "untrained", "self_supervised", "fine_tuned"],
    "architectures": [
        "alexnet_style",
        "vgg_style",
        "resnet_style",
        "vit_style",
        *(f"vit_style_block{i}" for i in range(3)),
    ],
}
# Each comparison's claims: sentence -> (the variant expected ahead, the one behind).
COMPARISON_CLAIMS = {
    "width_depth": {
        "a wider conv5 has more unique detectors": ("width_x2", "width_x1"),
        "deeper networks are more interpretable": ("width_x1", "depth_4"),
    },
    "supervision": {
        "supervised networks have more unique detectors than self-supervised ones": (
            "supervised",
            "self_supervised",
        ),
        "self-supervised networks have more unique detectors than untrained ones": (
            "self_supervised",
            "untrained",
        ),
    },
    "architectures": {
        "ResNet-style networks have more unique detectors than AlexNet-style ones": (
            "resnet_style",
            "alexnet_style",
        )
    },
}


def recount_comparison_rows(workdir, rows):
    """Checks each row against its dissections; ({(variant, seed): unique detectors},
    {(variant, seed): labels})."""
    unique, labels = {}, {}
    for row in rows:
        for seed in (0, 1):
            folder = workdir / "dissections" / row["variant"] / f"seed{seed}"
            units, rotated = (
                dissection(folder / row["layer"]),
                dissection(folder / (row["layer"] + "@rotated")),
            )
            assert_counts_recounted(row["unique"], row["unique_rotated"], seed, units, rotated)
            assert row["units"] == len(units["units"])
            # The linear probe's accuracy is a count of the 16 smoke test images.
            correct = row["linear_probe"]["per_seed"][seed] * 16
            assert correct == pytest.approx(round(correct), abs=1e-9)
            assert (folder / row["layer"] / "report.html").is_file()
            unique[row["variant"], seed] = unique_detectors(units)
            labels[row["variant"], seed] = labels_of(units)
    return unique, labels


def check_transfer(transfer, labels):
    """The self-supervised network's units against the same units fine-tuned, recounted."""
    for seed in (0, 1):
        before, after = labels["self_supervised", seed], labels["fine_tuned", seed]
        counts = label_transitions(before, after)
        assert transfer["transitions"]["keep"]["per_seed"][seed] == counts["keep"]
        assert transfer["transitions"]["lose"]["per_seed"][seed] == counts["lose"]
        labelled = sum(a is not None or b is not None for a, b in zip(before, after, strict=True))
        flow = transfer["category_flow"]
        assert sum(stat["per_seed"][seed] for stat in flow.values()) == labelled


@pytest.mark.parametrize("name", ["width_depth", "supervision", "architectures"])
def test_comparison_smoke(tmp_path, monkeypatch, name):
    import importlib

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    module = importlib.import_module(f"experiments.{name}")
    workdir = tmp_path / name
    assert module.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"]) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert [r["variant"] for r in results["rows"]] == COMPARISON_VARIANTS[name]
    assert results["seeds"] == [0, 1]
    unique, labels = recount_comparison_rows(workdir, results["rows"])
    claims = {c["claim"]: c for c in results["claims"]}
    expected_claims = COMPARISON_CLAIMS[name]
    assert set(claims) == set(expected_claims)
    for sentence, (first, second) in expected_claims.items():
        assert claims[sentence]["compares"] == [first, second]
        assert claims[sentence]["per_seed"] == [
            [unique[first, s], unique[second, s]] for s in (0, 1)
        ]
    if name == "width_depth":
        units = {r["variant"]: r["units"] for r in results["rows"]}
        assert units["width_x2"] == 2 * units["width_x1"]
    if name == "supervision":
        check_transfer(results["transfer"], labels)
    assert (workdir / "comparison.png").stat().st_size > 1000


def test_explain_smoke(tmp_path, monkeypatch):
    from experiments import explain

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    workdir = tmp_path / "explain"
    assert explain.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"]) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert results["seeds"] == [0]
    units = dissection(workdir / "dissections" / "seed0" / "layer3")
    assert results["units"] == len(units["units"])
    assert results["interpreted_units"] == {
        "per_seed": [detectors(units)],
        "mean": detectors(units),
        "ci95": None,
    }
    row_of = {row["unit"]: row for row in units["units"]}
    assert len(results["explanations"]["0"]) == 2
    flags = []
    for item in results["explanations"]["0"]:
        contributions = [u["contribution"] for u in item["units"]]
        assert contributions == sorted(contributions, reverse=True) and len(contributions) == 3
        for unit in item["units"]:
            row = row_of[unit["unit"]]
            assert (unit["label"], unit["category"], unit["iou"]) == (
                row["label"],
                row["category"],
                row["score"],
            )
            flags.append(unit["concept_in_image"])
    assert results["top_unit_concepts_in_image"]["per_seed"] == [
        pytest.approx(np.mean(flags), abs=1e-12)
    ]
    # Pixel accuracy is a count of the pixels that carry a label of the category.
    from jaxdissect.data.cache import load_label_arrays

    dataset = open_broden(workdir / "probe")
    planes = load_label_arrays(dataset).label_planes(0, dataset.num_images)
    for category, scores in results["segmentation"].items():
        in_category = dataset.label_category[planes] == dataset.categories.index(category)
        labelled = int(np.sum(np.any((planes > 0) & in_category, axis=1)))
        correct = scores["pixel_accuracy"]["per_seed"][0] * labelled
        assert correct == pytest.approx(round(correct), abs=1e-6)
    assert (workdir / "explain.png").stat().st_size > 1000


def test_segmentation_scores_by_hand():
    from experiments.explain import segment, segmentation_scores

    ratio = np.zeros((1, 2, 2, 2))
    ratio[0, 0, 0] = [2.0, 3.0]  # unit 1 wins
    ratio[0, 1, 1] = [1.5, 0.5]  # unit 0 wins
    prediction = segment(ratio, np.array([7, 9]), np.array([True, True]))
    assert prediction.tolist() == [[[9, 0], [0, 7]]]
    truth = np.array([[[9, 9], [0, 5]]])
    scores = segmentation_scores(prediction, truth)
    assert scores["pixel_accuracy"] == pytest.approx(1 / 3)
    assert scores["mean_iou"] == pytest.approx((1 / 2 + 0) / 2)


def test_nested_overrides_reach_the_dissection(tmp_path, monkeypatch):
    """``dissect.KEY=VALUE`` and ``probe.KEY=VALUE`` set the study's nested configs: the
    DissectConfig handed to the pipeline and the probe set drawn, recorded nested in
    config.json."""
    from experiments import common, rotation

    class Dissected(Exception):
        pass

    used = []

    def record(dataset, source, config, out, **kwargs):
        used.append((dataset.num_images, config))
        raise Dissected

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(common, "dissect", record)
    monkeypatch.setattr(common, "dissect_many", record)  # the seeds' networks in one pass
    workdir = tmp_path / "rot"
    overrides = ["dissect.union=lite", "dissect.kernel=xla", "probe.images=12", "steps=1"]
    with pytest.raises(Dissected):
        rotation.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress", *overrides])
    assert used == [(12, DissectConfig(union="lite", kernel="xla", batch_size=20))]
    recorded = json.loads((workdir / "run_config.json").read_text())
    assert recorded["dissect"]["union"] == "lite" and recorded["dissect"]["kernel"] == "xla"
    assert recorded["probe"] == {"directory": None, "images": 12, "image_size": 32, "seed": 1}


@pytest.mark.parametrize(
    "override, message",
    [
        ("dissect.unions=lite", "'dissect.unions=lite': expected key=value with key a field of"),
        ("dissect.union=lit", "`union` must be one of ('paper', 'lite'), got 'lit'"),
        ("probe.images=many", "'probe.images=many': probe.images: expected int, got 'many'"),
        ("dissect.skip_inactive=ture", "expected true or false, got 'ture'"),
        ("probes.images=1", "'probes' is not a section; sections: dissect, probe"),
        ("dissect=lite", "dissect is a section; set its fields as dissect.KEY=VALUE"),
    ],
)
def test_bad_overrides_are_refused(capsys, override, message):
    from experiments import training_dynamics

    with pytest.raises(SystemExit) as exit:
        training_dynamics.main(["--config", "smoke", override])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error
    if override == "dissect.unions=lite":
        assert error.endswith("top_images, union")


def test_presets_of_every_variation_hold_one_kind_of_network():
    """The presets' variations share a layer (a ViT has no conv5: mixing them ran 44 minutes
    of a study before a KeyError); a mixed list is refused when the config is built."""
    from experiments import training_dynamics

    for name in ("variations", "gpu", "full"):
        config = training_dynamics.Config(**training_dynamics.PRESETS[name])
        assert config.variations == ("baseline", "no_dropout", "batch_norm", "wide_last"), name
    with pytest.raises(ValueError, match="vit are ViT-style and the others CNNs"):
        training_dynamics.Config(variations=("baseline", "vit"))
    training_dynamics.Config(variations=("vit", "vit_no_dropout"), layer="block3")


def _snapshot(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_a_workdir_of_another_study_is_refused(tmp_path, capsys):
    """Issue 27: rotation --workdir W, where W holds training_dynamics' results, replaced
    them. A workdir belongs to one study; another is refused in one line, exit 2."""
    from experiments import rotation
    from experiments.workdir import claim_workdir, save_json

    workdir = tmp_path / "dynamics"
    claim_workdir(workdir, "training_dynamics")
    save_json(workdir / "config.json", {"as": "training_dynamics wrote it"})
    (workdir / "results.json").write_text('{"study": "training_dynamics"}\n')
    before = _snapshot(workdir)
    argv = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
    assert rotation.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--workdir {workdir}: holds the results of training_dynamics, not of rotation" in err
    assert _snapshot(workdir) == before
    claim_workdir(workdir, "training_dynamics")  # its own study goes on
    assert _snapshot(workdir) == before


def test_a_dissections_out_or_a_folder_in_a_store_is_refused_before_any_work(tmp_path, capsys):
    """Issue 27: a workdir inside another's .jaxdissect/ was trained, dissected and published
    into that folder's set; one holding a dissection's set was refused only when the study
    published its results.json, at the end of the whole run."""
    from experiments import rotation
    from jaxdissect import outdir

    out = tmp_path / "out"
    with outdir.locked(out):
        folder = outdir.new_set(out, "dissect")
        (folder / "results.json").write_text("{}\n")
        outdir.publish(folder, out)
    inside = outdir.current_set(out, "dissect") / "w"
    for workdir, problem in [
        (out, "holds jaxdissect's dissect outputs"),
        (inside, "inside an output folder's .jaxdissect/"),
    ]:
        before = _snapshot(out)
        argv = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
        assert rotation.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--workdir {workdir}: {problem}" in err
        assert _snapshot(out) == before and not inside.exists()


@pytest.mark.parametrize("name", ["probe", "runs"])
def test_a_link_at_a_folder_the_study_writes_into_is_refused(tmp_path, capsys, name):
    """Issue 27: a link planted at WORKDIR/probe had the synthetic probe written where it led,
    outside the workdir (and WORKDIR/runs the trainings)."""
    from experiments import rotation

    workdir, outside = tmp_path / "w", tmp_path / "outside"
    workdir.mkdir()
    outside.mkdir()
    (workdir / name).symlink_to(outside)
    argv = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
    assert rotation.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--workdir {workdir}: {name} is a link" in err
    assert list(outside.iterdir()) == []


def test_a_study_record_or_config_nested_too_deeply_is_named(tmp_path, capsys):
    """Issue 27: a study.json (or an earlier version's config.json) nested 100,000 deep ended
    in a RecursionError traceback."""
    from experiments import rotation
    from experiments.workdir import _config_owner

    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "study.json").write_text("[" * 100_000 + "]" * 100_000)
    (workdir / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert rotation.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{workdir / 'study.json'}: unreadable (maximum" in err
    assert _config_owner(workdir / "config.json", "rotation") is None  # told by nothing


@pytest.mark.parametrize("store", ["forged journal", "file"])
def test_a_store_publishing_would_refuse_is_refused_before_any_work(tmp_path, capsys, store):
    """Issue 27: a forged .jaxdissect/journal.json (or a file at .jaxdissect) was refused only
    when the study published, after its trainings and dissections."""
    from experiments import rotation

    workdir = tmp_path / "w"
    (workdir / ".jaxdissect").mkdir(parents=True)
    if store == "file":
        (workdir / ".jaxdissect").rmdir()
        (workdir / ".jaxdissect").write_text("mine")
    else:
        forged = {"next": 1, "sets": {"../x": "study"}, "links": {}, "displaced": []}
        (workdir / ".jaxdissect" / "journal.json").write_text(json.dumps(forged))
    assert rotation.main(["--config", "smoke", "--workdir", str(workdir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{workdir / '.jaxdissect'}" in err
    assert not (workdir / "probe").exists()


def test_a_workdir_from_before_the_record_is_told_by_its_config(tmp_path, capsys):
    """Without study.json, a workdir whose config.json has exactly another study's fields
    is refused, and is taken by the study that made it (which records itself)."""
    import dataclasses

    from experiments import rotation, training_dynamics
    from experiments.workdir import claim_workdir
    from jaxdissect.errors import DissectError
    from train.config import TrainConfig

    workdir = tmp_path / "old"
    workdir.mkdir()
    fields = {f.name: None for f in dataclasses.fields(training_dynamics.Config)}
    (workdir / "config.json").write_text(json.dumps(fields))
    before = _snapshot(workdir)
    argv = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
    assert rotation.main(argv) == 2
    assert "holds the results of training_dynamics, not of rotation" in capsys.readouterr().err
    assert _snapshot(workdir) == before
    claim_workdir(workdir, "training_dynamics")  # its own study takes it
    assert json.loads((workdir / "study.json").read_text()) == {"study": "training_dynamics"}

    trained = tmp_path / "trained"  # python -m train's workdir
    trained.mkdir()
    fields = {f.name: None for f in dataclasses.fields(TrainConfig)}
    (trained / "config.json").write_text(json.dumps(fields))
    with pytest.raises(DissectError, match="a training run"):
        claim_workdir(trained, "rotation")

    unknown = tmp_path / "unknown"  # fields of no study: accepted, as before the record
    unknown.mkdir()
    (unknown / "config.json").write_text('{"seeds": 1}')
    claim_workdir(unknown, "rotation")
    assert json.loads((unknown / "study.json").read_text()) == {"study": "rotation"}
    with pytest.raises(DissectError, match="holds the results of rotation"):
        claim_workdir(unknown, "explain")


def test_study_name_under_python_dash_m(monkeypatch):
    """``python -m experiments.rotation`` defines its Config in ``__main__``: the workdir
    is still claimed for "rotation" (a rerun must not be refused as another study's)."""
    import dataclasses
    import sys
    import types

    from experiments.workdir import study_name

    config_type = dataclasses.make_dataclass("Config", [])
    config_type.__module__ = "__main__"
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="experiments.rotation")
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert study_name(config_type()) == "rotation"


def test_a_rerun_with_other_training_settings_is_one_line(tmp_path, capsys, monkeypatch):
    """A study whose runs/ folder holds a training run of another config stops with one
    line naming that folder (the TrainingError of train.loop), exit 2, no traceback."""
    from experiments import rotation

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    workdir = tmp_path / "rot"
    (workdir / "runs" / "seed0").mkdir(parents=True)
    (workdir / "runs" / "seed0" / "config.json").write_text('{"width": 2}')
    args = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
    assert rotation.main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("experiments.rotation: error: ")
    assert f"{workdir / 'runs' / 'seed0'} holds a run with another config" in error


@pytest.mark.parametrize(
    "study, override, message",
    [
        # seeds=10**9 built a list of a billion seeds and was killed for its memory.
        ("training_dynamics", "seeds=1000000000", "seeds=1000000000: must be at most 1,000"),
        ("rotation", "rotations=1000000000", "rotations=1000000000: must be at most 1,000"),
        ("training_dynamics", "probe.images=100000000", "probe.images=100000000: must be at most"),
        # steps=10**9 was a traceback (train's ValueError) after config.json and the probe were
        # written; a bad train override was found only at the first training run.
        ("width_depth", "steps=1000000000", "steps=1000000000: must be at most 100,000,000"),
        ("training_dynamics", "train_overrides=colour=red", "the training runs' settings: "),
        ("compositional", "train_overrides=learning_rate=inf", "learning_rate=inf (must be finite"),
        ("explain", "train_preset=nope", "the training runs' settings: unknown preset 'nope'"),
    ],
)
def test_sizes_and_training_settings_are_refused_up_front(
    tmp_path, capsys, study, override, message
):
    """Issue 27."""
    import importlib

    main = importlib.import_module(f"experiments.{study}").main
    with pytest.raises(SystemExit) as exit:
        main(["--config", "smoke", "--workdir", str(tmp_path / "w"), "--no-progress", override])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "w").exists()


def test_a_probe_directory_is_read_never_written(tmp_path, capsys, monkeypatch):
    """Issue 27: probe.directory naming a folder without index.csv (a typo, a parent folder)
    had the synthetic probe written into it, over its index.csv, label.csv and images/; the
    full presets' probe.images=0 refused probe.directory outright."""
    from experiments import training_dynamics

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "label.csv").write_text("my own\n")
    args = ["--workdir", str(tmp_path / "w"), "--no-progress", f"probe.directory={mine}"]
    assert training_dynamics.main(["--config", "smoke", *args]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"experiments.training_dynamics: error: probe.directory={mine}: not a Broden folder "
        "(no index.csv); leave probe.directory unset to draw the synthetic probe into the "
        "workdir\n"
    )
    assert [p.name for p in mine.iterdir()] == ["label.csv"]
    assert (mine / "label.csv").read_text() == "my own\n"
    assert not (tmp_path / "w").exists()
    assert training_dynamics.main(["--config", "full", *args]) == 2  # past parse_args
    assert "not a Broden folder" in capsys.readouterr().err


def test_a_failed_rerun_leaves_config_json_describing_the_results(tmp_path, monkeypatch, capsys):
    """Issue 27: a rerun with other settings (layer=conv9) overwrote config.json as it
    started, then failed: config.json described no results, beside the results.json,
    summary.html and figures of the earlier config."""
    from experiments import training_dynamics
    from experiments.workdir import save_json

    monkeypatch.setenv("JAXDISSECT_CACHE", str(tmp_path / "cache"))
    workdir = tmp_path / "td"
    workdir.mkdir()
    save_json(workdir / "study.json", {"study": "training_dynamics"})
    published = {"layer": "conv5", "as": "the earlier run"}
    save_json(workdir / "config.json", published)
    save_json(workdir / "results.json", {"config": published})

    def fails(*args, **kwargs):
        raise DissectError("model 'seed0@0' has no layer 'conv9'")

    monkeypatch.setattr(training_dynamics, "dissect_run", fails)
    args = ["--config", "smoke", "--workdir", str(workdir), "--no-progress", "layer=conv9"]
    assert training_dynamics.main(args) == 2
    assert "has no layer 'conv9'" in capsys.readouterr().err
    assert json.loads((workdir / "config.json").read_text()) == published

    assert json.loads((workdir / "run_config.json").read_text())["layer"] == "conv9"

    fresh = tmp_path / "fresh"  # no results yet: run_config.json records the run in progress
    assert training_dynamics.main([*args[:3], str(fresh), *args[4:]]) == 2
    assert json.loads((fresh / "run_config.json").read_text())["layer"] == "conv9"
    assert not (fresh / "config.json").exists()  # no results, so no config of results


@pytest.mark.parametrize("study", ["rotation", "compositional", "directions"])
def test_training_settings_with_a_trained_run_are_refused(tmp_path, capsys, study):
    """Issue 27: with run=WORKDIR (a trained run to dissect) steps=, train_preset= and
    train_overrides= were silently ignored."""
    import importlib

    main = importlib.import_module(f"experiments.{study}").main
    args = ["--config", "smoke", "--workdir", str(tmp_path / "w"), "--no-progress"]
    with pytest.raises(SystemExit) as exit:
        main([*args, f"run={tmp_path / 'trained'}", "steps=50", "train_overrides=width=0.5"])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(
        f"steps=50 train_overrides=width=0.5: run={tmp_path / 'trained'} names a trained run, "
        "and nothing is trained: leave out the training settings"
    )
    assert not (tmp_path / "w").exists()


def test_a_cnn_training_workdir_is_refused(tmp_path, capsys):
    """Issue 27: a CNN's training config.json has no ViT-only fields, so it was not told
    from a study's: a study given `python -m train`'s workdir took it and overwrote its
    config.json with the study's (the run could no longer be loaded or resumed)."""
    from experiments import rotation
    from train.config import make_config

    workdir = tmp_path / "trained"
    workdir.mkdir()
    (workdir / "config.json").write_text(make_config("smoke").to_json())  # as train() writes
    before = _snapshot(workdir)
    args = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
    assert rotation.main(args) == 2
    assert capsys.readouterr().err == (
        f"experiments.rotation: error: --workdir {workdir}: holds the results of a training "
        "run (python -m train), not of rotation; choose another --workdir\n"
    )
    assert _snapshot(workdir) == before


def test_an_override_given_twice_is_refused(tmp_path, capsys):
    """Issue 27: `train_overrides=steps=5 train_overrides=width=0.5` kept only the second."""
    from experiments import training_dynamics

    args = ["--config", "smoke", "--workdir", str(tmp_path / "w"), "--no-progress"]
    with pytest.raises(SystemExit) as exit:
        training_dynamics.main([*args, "train_overrides=steps=5", "train_overrides=width=0.5"])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("error: overrides set train_overrides more than once")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        # A traceback (ValueError: not enough values to unpack).
        ("zoo=nope", "zoo=nope: expected NAME:WEIGHTS[:LAYER]"),
        ("zoo=a:b:c:d", "zoo=a:b:c:d: expected NAME:WEIGHTS[:LAYER]"),  # d was ignored
        # Found when the ResNet-style network's turn came, after the others had trained.
        ("resnet_overrides=colour=red", "resnet_overrides: override 'colour=red': expected"),
        # Scenes drawn into memory at once: 10**9 of them are terabytes.
        ("probe_train_images=1000000000", "probe_train_images=1000000000: must be at most"),
        ("probe_test_images=0", "probe_test_images=0: must be at least 1"),
    ],
)
def test_architectures_settings_are_refused_up_front(tmp_path, capsys, override, message):
    """Issue 27."""
    from experiments import architectures

    args = ["--config", "smoke", "--workdir", str(tmp_path / "w"), "--no-progress", override]
    with pytest.raises(SystemExit) as exit:
        architectures.main(args)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "w").exists()
