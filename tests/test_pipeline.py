"""The pipeline: what it keeps between the passes, the output folder it owns (lock, a set
of files replaced whole, file modes), resuming only the same run, and one-line errors."""

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from probe_fixture import dyadic_features, reference_tally

from jaxdissect import driver, load_label_arrays, open_broden
from jaxdissect.cli import main
from jaxdissect.config import DissectConfig


@pytest.mark.parametrize("keep_bytes,calls_per_batch", [(2**30, 1), (0, 2), (1600, None)])
@pytest.mark.parametrize("labels_on_device", [False, True])
def test_pass_one_activations_and_labels_kept_on_device(
    probe, monkeypatch, keep_bytes, calls_per_batch, labels_on_device
):
    """A model's outputs that fit are kept for pass 2 (the model runs once); labels that fit
    an accelerator are read there. Counts are the same either way."""
    features = dyadic_features(12, (4, 4, 5))
    calls = []

    def model(start, stop):
        calls.append((start, stop))
        return {"features": jnp.asarray(features[start:stop])}

    monkeypatch.setattr(driver, "keep_budget", lambda: keep_bytes)
    # Labels on the device is what happens on one accelerator; on CPU, the CPU stands in.
    monkeypatch.setattr(driver, "_labels_fit_device", lambda *args: labels_on_device)
    dataset = open_broden(probe.directory)
    labels = load_label_arrays(dataset, progress=False)
    config = DissectConfig(batch_size=5, quantile=0.05, kernel="xla")
    result = driver.dissect_activations(
        model, 12, {"features": (4, 4, 5)}, dataset, labels, config, progress=False
    )["features"]
    batches = [(0, 5), (5, 10), (10, 12)]
    if calls_per_batch is None and labels_on_device:  # the labels took the 1600 bytes
        assert calls == batches * 2
    elif calls_per_batch is None:  # 1600 bytes hold the first batch (5 x 4 x 4 x 5 float32)
        assert calls == [*batches, (5, 10), (10, 12)]
    else:
        assert calls == batches * calls_per_batch
    expected = reference_tally(features, result.thresholds, probe, "paper")
    counts = (result.label_area, result.intersection, result.unit_area)
    for got, want in zip(counts, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def _args(probe, features: Path, out: Path, *extra) -> list[str]:
    return [
        "dissect", "--dataset", str(probe.directory), "--features", str(features),
        "--out", str(out), "--no-progress", "--quantile", "0.05", *extra,
    ]  # fmt: skip


def test_a_second_run_on_the_same_out_is_refused(probe, tmp_path, capsys):
    from jaxdissect.outdir import locked

    np.save(tmp_path / "f.npy", dyadic_features(12, (4, 4, 3)))
    with locked(tmp_path / "out"):
        assert main(_args(probe, tmp_path / "f.npy", tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"in use by a running dissection (pid {os.getpid()})" in err
    assert main(_args(probe, tmp_path / "f.npy", tmp_path / "out", "--no-report")) == 0


def test_outputs_are_replaced_as_a_set(probe, tmp_path, monkeypatch, capsys):
    """A run that fails while writing leaves the previous set whole and nothing of its own
    behind; one interrupted while publishing leaves the previous set or the new one, whole."""
    from jaxdissect import outdir
    from jaxdissect.report import html as report

    out = tmp_path / "out"
    np.save(tmp_path / "a.npy", dyadic_features(12, (4, 4, 3), seed=1))
    np.save(tmp_path / "b.npy", dyadic_features(12, (4, 4, 3), seed=2))
    assert main(_args(probe, tmp_path / "a.npy", out)) == 0
    before = _public_view(out)
    store = sorted(p.name for p in (out / outdir.STORE).iterdir())

    def broken_report(folder, images):
        raise OSError(28, "No space left on device", str(folder / "report.html"))

    monkeypatch.setattr(report, "write_layer_report", broken_report)
    assert main(_args(probe, tmp_path / "b.npy", out)) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert _public_view(out) == before
    assert sorted(p.name for p in (out / outdir.STORE).iterdir()) == store  # discarded
    monkeypatch.undo()

    fresh = tmp_path / "fresh"
    assert main(_args(probe, tmp_path / "b.npy", fresh)) == 0
    after = _public_view(fresh)
    assert after != before
    replace = os.replace
    for switch in (False, True):  # interrupted just before, and just after, the switch

        def interrupted_replace(source, target, switch=switch):
            if Path(target).name == "dissect" and not switch:
                raise KeyboardInterrupt  # as SIGINT at the instant of switching
            replace(source, target)
            if Path(target).name == "dissect" and switch:
                raise KeyboardInterrupt

        monkeypatch.setattr(outdir.os, "replace", interrupted_replace)
        with pytest.raises(KeyboardInterrupt):
            main(_args(probe, tmp_path / "b.npy", out))
        monkeypatch.undo()
        assert _public_view(out) == (after if switch else before)
    assert main(_args(probe, tmp_path / "b.npy", out)) == 0
    assert _public_view(out) == after
    assert (out / "tally.csv").read_bytes() == (fresh / "tally.csv").read_bytes()


def _public_view(out: Path) -> dict:
    """Every file a reader finds under OUT's output names (through the set's links; not the
    lock, the store or the passes' checkpoints, kept for resuming a failed run)."""
    found = {}
    for root, _, names in os.walk(out, followlinks=True):
        if {".jaxdissect", ".checkpoint"} & set(Path(root).relative_to(out).parts):
            continue
        for name in names:
            path = Path(root, name)
            if name != ".lock" and path.is_file():
                found[path.relative_to(out).as_posix()] = path.read_bytes()
    return found


@pytest.mark.parametrize("when", ["before switching", "after switching"])
def test_sigterm_while_publishing_keeps_one_whole_set(probe, tmp_path, when):
    """The first round's case: a SIGTERM while publishing lost the previous set (tally.csv
    old, counts.npz new, results.json gone). Now OUT holds the old set or the new one."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    np.save(tmp_path / "a.npy", dyadic_features(12, (4, 4, 3), seed=1))
    np.save(tmp_path / "b.npy", dyadic_features(12, (4, 4, 3), seed=2))
    assert main(_args(probe, tmp_path / "a.npy", out)) == 0
    before = _public_view(out)
    assert main(_args(probe, tmp_path / "b.npy", tmp_path / "fresh")) == 0
    after = _public_view(tmp_path / "fresh")
    script = f"""
import os, signal, sys
from pathlib import Path
from jaxdissect.cli import main
replace = os.replace
def replace_then_die(source, target):
    if Path(target).name == "dissect" and {when == "before switching"}:
        os.kill(os.getpid(), signal.SIGTERM)
    replace(source, target)
    if Path(target).name == "dissect":
        os.kill(os.getpid(), signal.SIGTERM)
os.replace = replace_then_die
sys.exit(main({_args(probe, tmp_path / "b.npy", out)!r}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert _public_view(out) == (before if when == "before switching" else after)
    assert (out / "results.json").is_file() and (out / "counts.npz").is_file()
    assert main(_args(probe, tmp_path / "b.npy", out)) == 0
    assert _public_view(out) == after


def test_a_rerun_without_report_leaves_no_report_behind(probe, tmp_path):
    out = tmp_path / "out"
    np.save(tmp_path / "f.npy", dyadic_features(12, (4, 4, 3)))
    assert main(_args(probe, tmp_path / "f.npy", out)) == 0
    assert (out / "report.html").is_file() and (out / "report").is_dir()
    assert main(_args(probe, tmp_path / "f.npy", out, "--no-report")) == 0
    assert not os.path.lexists(out / "report.html") and not os.path.lexists(out / "report")
    assert sorted(_public_view(out)) == [
        "counts.npz", "fingerprint.json", "results.json", "tally.csv"
    ]  # fmt: skip


def test_the_users_files_in_out_are_not_deleted(probe, tmp_path, capsys):
    """Issue 27's first example: *.partial anywhere below OUT and OUT/report/'s contents."""
    out = tmp_path / "out"
    (out / "downloads" / "deep").mkdir(parents=True)
    keep = {
        "draft.partial": b"mine",
        "downloads/deep/model.pth.partial": b"mine too",
        "report/notes.txt": b"my notes",
        ".checkpoint/mine.txt": b"also mine",
    }
    for name, data in keep.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    np.save(tmp_path / "f.npy", dyadic_features(12, (4, 4, 3)))
    assert main(_args(probe, tmp_path / "f.npy", out)) == 0
    assert capsys.readouterr().err.count("moved report") == 1
    for name in ("draft.partial", "downloads/deep/model.pth.partial", ".checkpoint/mine.txt"):
        assert (out / name).read_bytes() == keep[name]
    assert (out / ".jaxdissect" / "displaced.1" / "report" / "notes.txt").read_bytes() == (
        b"my notes"
    )
    # A file put into the published report folder survives the next run, where it was put.
    (out / "report" / "later.txt").write_bytes(b"added later")
    kept_in = (out / "report").resolve()
    assert main(_args(probe, tmp_path / "f.npy", out)) == 0
    assert (kept_in / "later.txt").read_bytes() == b"added later"
    assert not (kept_in / "images-0000.jpg").exists()  # the set's own images went
    assert f"kept {kept_in.parent}" in capsys.readouterr().err
    assert (out / "draft.partial").read_bytes() == b"mine"


def test_files_follow_the_umask(probe, tmp_path):
    np.save(tmp_path / "f.npy", dyadic_features(12, (4, 4, 3)))
    previous = os.umask(0o022)
    try:
        assert main(_args(probe, tmp_path / "f.npy", tmp_path / "out")) == 0
    finally:
        os.umask(previous)
    for name in ("tally.csv", "results.json", "counts.npz", "report.html"):
        assert (tmp_path / "out" / name).stat().st_mode & 0o777 == 0o644, name


def _keep_checkpoints(monkeypatch):
    """Runs leave their passes' final states behind, as a run killed after pass 2 would."""
    from jaxdissect.checkpoint import PassCheckpoints

    monkeypatch.setattr(PassCheckpoints, "remove", lambda self: None)


def test_resume_needs_the_same_layout(probe, tmp_path, monkeypatch):
    """A cube-shaped file reads as another layer under the other layout: the saved states
    of an nhwc run must not be resumed by an nchw run."""
    _keep_checkpoints(monkeypatch)
    cube = dyadic_features(12, (4, 4, 4))
    np.save(tmp_path / "f.npy", cube)
    assert main(_args(probe, tmp_path / "f.npy", tmp_path / "out", "--no-report")) == 0
    nchw = ["--no-report", "--layout", "nchw"]
    assert main(_args(probe, tmp_path / "f.npy", tmp_path / "out", *nchw)) == 0
    assert main(_args(probe, tmp_path / "f.npy", tmp_path / "fresh", *nchw)) == 0
    got = (tmp_path / "out" / "tally.csv").read_bytes()
    assert got == (tmp_path / "fresh" / "tally.csv").read_bytes()


def test_resume_needs_the_same_file_content(probe, tmp_path, monkeypatch):
    """A features file rewritten in place with the same size and modification time."""
    _keep_checkpoints(monkeypatch)
    path = tmp_path / "f.npy"
    np.save(path, dyadic_features(12, (4, 4, 3), seed=1))
    assert main(_args(probe, path, tmp_path / "out", "--no-report")) == 0
    stat = path.stat()
    np.save(path, dyadic_features(12, (4, 4, 3), seed=2))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    assert main(_args(probe, path, tmp_path / "out", "--no-report")) == 0
    assert main(_args(probe, path, tmp_path / "fresh", "--no-report")) == 0
    got = (tmp_path / "out" / "tally.csv").read_bytes()
    assert got == (tmp_path / "fresh" / "tally.csv").read_bytes()


def test_fingerprint_names_every_setting_that_changes_results(probe, tmp_path):
    from jaxdissect.sources import features_activations as features

    np.save(tmp_path / "f.npy", dyadic_features(12, (4, 4, 4)))
    dataset = open_broden(probe.directory)
    base = driver.run_fingerprint(dataset, features(tmp_path / "f.npy"), DissectConfig())
    variants = [
        (dataset, features(tmp_path / "f.npy", layout="nchw"), DissectConfig()),
        (open_broden(probe.directory, ["object"]), features(tmp_path / "f.npy"), DissectConfig()),
        *(
            (dataset, features(tmp_path / "f.npy"), DissectConfig(**change))
            for change in (
                {"union": "lite"},
                {"quantile": 0.01},
                {"kernel": "xla"},
                {"top_images": 3},
                {"skip_inactive": False},
            )
        ),
    ]
    for variant in variants:
        assert driver.run_fingerprint(*variant) != base


def _features_file(tmp_path, shape):
    np.save(tmp_path / "bad.npy", np.zeros(shape, np.float32))
    return tmp_path / "bad.npy"


@pytest.mark.parametrize(
    ("shape", "message"),
    [((12, 4, 4, 0), "hold no activations"), ((12, 0, 4, 3), "hold no activations")],
)
def test_empty_features_give_one_line(probe, tmp_path, capsys, shape, message):
    assert main(_args(probe, _features_file(tmp_path, shape), tmp_path / "out")) == 2
    assert message in capsys.readouterr().err


def test_a_model_spec_that_is_no_factory(probe, tmp_path, capsys):
    args = ["dissect", "--dataset", str(probe.directory), "--model", "os:sep", "--layer", "x"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert "not a factory function" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top-images", "-5"], "must be >= 0"),
        (["--process-id", "1"], "go with --coordinator"),
        (["--cache", "FILE"], "FILE"),
        (["--out", "FILE"], "exists and is not a folder"),
        (["--out", "/proc/jaxdissect-out"], "/proc/jaxdissect-out"),
    ],
)
def test_bad_arguments_give_one_line(probe, tmp_path, capsys, extra, message):
    np.save(tmp_path / "f.npy", dyadic_features(12, (4, 4, 3)))
    (tmp_path / "FILE").write_text("not a folder")
    extra = [str(tmp_path / "FILE") if x == "FILE" else x for x in extra]
    args = _args(probe, tmp_path / "f.npy", tmp_path / "out")
    if "--out" in extra:
        args[args.index("--out") : args.index("--out") + 2] = []
    try:
        code = main([*args, *extra])
    except SystemExit as exit_:  # argparse's own one-line errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_studies_reuse_a_dissection_only_of_the_same_checkpoint(probe, tmp_path, monkeypatch):
    """experiments.common.dissect_model reuses results.json only when the checkpoint (run
    config, step, saved parameters) and everything else match."""
    from user_model import factory

    from experiments import common

    run = tmp_path / "run"
    (run / "checkpoints" / "3").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "3" / "params").write_bytes(b"first")
    dataset = open_broden(probe.directory)
    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), np.uint8)
    study_probe = common.Probe(dataset, load_label_arrays(dataset, progress=False), images)
    config = DissectConfig(quantile=0.05, top_images=0)
    calls = []
    dissect = common.dissect
    monkeypatch.setattr(common, "dissect", lambda *a, **k: calls.append(1) or dissect(*a, **k))

    def run_study():
        return common.dissect_model(
            factory(None),
            ["conv_b"],
            study_probe,
            config,
            tmp_path / "out",
            common.checkpoint_identity(run, 3),
        )

    first = run_study()
    assert len(calls) == 1 and run_study() == first and len(calls) == 1  # reused
    (run / "checkpoints" / "3" / "params").write_bytes(b"other")  # a retrained checkpoint
    run_study()
    assert len(calls) == 2


def test_a_forged_header_gives_one_line(probe, tmp_path, capsys):
    """A .npy header declaring a shape whose size overflows int64."""
    path = tmp_path / "f.npy"
    big = 2**40
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': (12, {big}, {big}, {big}), }}"
    header = header.ljust(118) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
    assert main(_args(probe, path, tmp_path / "out")) == 2
    assert "truncated" in capsys.readouterr().err


def test_features_out_into_an_unwritable_place(tmp_path, capsys):
    images = np.zeros((2, 32, 32, 3), np.uint8)
    np.save(tmp_path / "images.npy", images)
    args = ["features", "--model", "user_model:factory", "--layer", "conv_b"]
    args += ["--images", str(tmp_path / "images.npy"), "--out", "/proc/jaxdissect/f.npy"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "/proc/jaxdissect" in err and "Traceback" not in err
