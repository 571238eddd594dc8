"""Issue 27 (hostile inputs, round two): nothing in a page we write runs as script, a resume
never mixes two models, work is bounded before it starts, and every bad input fails in one
line with exit status 2."""

import base64
import hashlib
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
from probe_fixture import dyadic_features

from jaxdissect.cli import main
from jaxdissect.data.npy_rows import MAX_HEADER_BYTES, NpyRows
from jaxdissect.errors import DissectError
from jaxdissect.report.schema import check_results

EVIL = "<script>alert(1)</script>"


def _one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxdissect: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def dissected(probe, tmp_path_factory):
    """A finished dissection (with its report) of 5 units."""
    out = tmp_path_factory.mktemp("hostile") / "out"
    np.save(out.parent / "f.npy", dyadic_features(len(probe.planes), (4, 4, 5), seed=3))
    args = ["dissect", "--dataset", str(probe.directory), "--features", str(out.parent / "f.npy"),
            "--out", str(out), "--quantile", "0.05", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    return out


def _tampered(dissected, tmp_path, change) -> str:
    """A copy of ``dissected`` whose results.json ``change`` edited (in place, as a dict)."""
    copy = tmp_path / "copy"
    shutil.copytree(dissected, copy)
    results = json.loads((copy / "results.json").read_text())
    change(results)
    (copy / "results.json").write_text(json.dumps(results))
    return str(copy)


def _set(path, value):
    def change(results):
        node = results
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


# Class 2: every value of results.json that reaches a page is checked before it is drawn.
@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_set(("summary", "detectors"), EVIL), "summary.detectors"),
        (_set(("summary", "units"), EVIL), "summary.units"),
        (_set(("summary", "unique_top_label", "total"), -1), "unique_top_label.total"),
        (_set(("units", 0, "unit"), EVIL), "units[0].unit"),
        (_set(("units", 0, "unit"), 6), "units[0].unit"),  # beyond the layer's 5 units
        (_set(("units", 0, "unit"), True), "units[0].unit"),
        (_set(("units", 0, "score"), EVIL), "units[0].score"),
        (_set(("units", 0, "score"), float("nan")), "units[0].score"),
        (_set(("units", 0, "category"), EVIL), "units[0].category"),
        (_set(("units", 0, "label"), ["a"]), "units[0].label"),
        (_set(("thresholds",), [0.5]), "thresholds"),
        (_set(("categories",), "color"), "categories"),
        (_set(("layer",), {"a": 1}), "layer"),
        (lambda r: r["units"].append(dict(r["units"][0])), "summary.units"),
        (lambda r: r["units"][1].update(unit=r["units"][0]["unit"]), "each unit once"),
        (lambda r: r.pop("summary"), "missing field 'summary'"),
    ],
)
def test_report_refuses_a_results_json_that_does_not_fit(
    dissected, tmp_path, capsys, change, named
):
    copy = _tampered(dissected, tmp_path, change)
    capsys.readouterr()
    assert main(["report", copy]) == 2
    _one_line_error(capsys, "results.json", named)


def test_report_on_a_truncated_results_json_fails_in_one_line(dissected, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(dissected, copy)
    text = (copy / "results.json").read_bytes()
    for cut in (0, 1, len(text) // 3, len(text) - 3):
        (copy / "results.json").write_bytes(text[:cut])
        capsys.readouterr()
        assert main(["report", str(copy)]) == 2
        _one_line_error(capsys, "results.json: not a whole JSON file")


def test_report_refuses_top_images_beyond_the_probe(dissected, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(dissected, copy)
    counts = dict(np.load(copy / "counts.npz"))
    counts["top_indices"][0, 0] = 10**6
    np.savez(copy / "counts.npz", **counts)
    capsys.readouterr()
    assert main(["report", str(copy)]) == 2
    _one_line_error(capsys, "counts.npz: top_indices: image 1000000 is beyond")
    (copy / "counts.npz").write_bytes(b"PK\x03\x04 not a zip")
    assert main(["report", str(copy)]) == 2
    _one_line_error(capsys, "counts.npz: not a readable .npz file")


def test_strings_reach_the_page_escaped_and_no_script_but_ours_may_run(dissected, tmp_path):
    def change(results):
        results["layer"] = EVIL
        for row in results["units"]:
            row["label"] = EVIL
            for c in results["categories"]:
                row[f"{c}-label"] = EVIL

    copy = _tampered(dissected, tmp_path, change)
    assert main(["report", copy]) == 0
    page = (tmp_path / "copy" / "report.html").read_text()
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(scripts) == 1 and "sortCards" in scripts[0]
    # The Content-Security-Policy allows that script by its hash, and nothing else.
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)[1]
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}';" in policy
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy.split("style-src")[0]


def test_index_page_escapes_layer_names_and_forbids_script(dissected, tmp_path):
    from jaxdissect.report.html import write_index

    layer = 'a"><script>x()</script>'
    shutil.copytree(dissected, tmp_path / layer)
    page = write_index(tmp_path, [layer]).read_text()
    assert "<script" not in page
    assert "script-src 'none'" in page


def test_check_results_accepts_what_write_dissection_writes(dissected):
    results = json.loads((dissected / "results.json").read_text())
    assert check_results(results) is results


def test_study_pages_forbid_script(tmp_path):
    from experiments.common import write_page

    page = write_page(tmp_path / "summary.html", EVIL, "<p>body</p>").read_text()
    assert EVIL not in page
    assert "script-src 'none'" in page and "default-src 'none'" in page


# Class 3: a resume never mixes two models under one name.
def test_a_changed_user_model_does_not_resume_the_old_ones_passes(probe, tmp_path, monkeypatch):
    import user_model

    from jaxdissect.checkpoint import PassCheckpoints

    args = ["dissect", "--dataset", str(probe.directory), "--model", "user_model:changing",
            "--layer", "conv_b", "--no-progress", "--no-report", "--kernel", "cpu",
            "--batch-size", "4", "--checkpoint-every", "1"]  # fmt: skip
    monkeypatch.setattr(user_model, "SEED", 1)
    assert main([*args, "--out", str(tmp_path / "fresh1")]) == 0
    # Model 0's run is killed after its passes saved their states...
    monkeypatch.setattr(PassCheckpoints, "remove", lambda self: None)
    monkeypatch.setattr(user_model, "SEED", 0)
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert sorted((tmp_path / "out" / ".checkpoint").glob("*/[0-9]*"))
    # ...and rerun after the factory changed what it returns: the passes start afresh.
    monkeypatch.setattr(user_model, "SEED", 1)
    with pytest.warns(UserWarning, match="computed from other activations"):
        assert main([*args, "--out", str(tmp_path / "out")]) == 0
    for name in ("tally.csv", "counts.npz"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "fresh1" / name).read_bytes()
    # The same model resumes (no warning: warnings are errors here).
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tally.csv").read_bytes() == (
        tmp_path / "fresh1" / "tally.csv"
    ).read_bytes()


def test_a_resume_checks_the_first_image_of_every_batch(probe, tmp_path, monkeypatch):
    """Issue 27, V4: saved states of a run over other images are not resumed when only a
    later batch's first image differs (the image files are not in the fingerprint, and the
    first image's activations, all that was checked, are the same)."""
    from user_model import factory

    import jaxdissect as jd
    from jaxdissect.checkpoint import PassCheckpoints
    from jaxdissect.data.cache import load_image_array

    images = load_image_array(jd.open_broden(probe.directory), None, False)
    changed = images.copy()
    changed[4] = 255 - changed[4]  # the first image of the second batch of 4
    config = jd.DissectConfig(quantile=0.05, batch_size=4)
    kwargs = dict(layers=["conv_b"], report=False, progress=False, checkpoint_every=1)

    def run(out, images):
        jd.dissect(probe.directory, factory(None), config, out, images=images, **kwargs)
        return {n: (out / n).read_bytes() for n in ("tally.csv", "counts.npz")}

    fresh = run(tmp_path / "fresh", changed)
    monkeypatch.setattr(PassCheckpoints, "remove", lambda self: None)  # killed after saving
    stale = run(tmp_path / "out", images)
    assert stale != fresh  # the changed image matters to the results
    with pytest.warns(UserWarning, match="computed from other activations"):
        assert run(tmp_path / "out", changed) == fresh
    assert run(tmp_path / "out", changed) == fresh  # the same images resume, unwarned


# Class 6 and 7: .npy headers are bounded and parsed without tracebacks.
def _npy(path, header: bytes, version=(1, 0), length: int | None = None, data=b""):
    size = 2 if version[0] == 1 else 4
    length = len(header) if length is None else length
    path.write_bytes(
        b"\x93NUMPY" + bytes(version) + length.to_bytes(size, "little") + header + data
    )
    return path


@pytest.mark.parametrize(
    ("header", "version", "length", "message"),
    [
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': ((3, 4), }\n", (1, 0), None,
         "not a Python dictionary literal"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }\n", (2, 0), 2**32 - 1,
         f"more than the {MAX_HEADER_BYTES} allowed"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }\n", (1, 0), 4000,
         "header truncated"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (-3, 4), }\n", (1, 0), None,
         "not a tuple of sizes"),
        (b"{'descr': 'zz', 'fortran_order': False, 'shape': (3, 4), }\n", (1, 0), None,
         "is not a dtype"),
        (b"{'descr': '<f4', 'fortran_order': 1, 'shape': (3, 4), }\n", (1, 0), None,
         "fortran_order"),
        (b"{'descr': '<f4', 'shape': (3, 4), }\n", (1, 0), None, "exactly the keys"),
        (b"__import__('os').system('false')\n", (1, 0), None, "not a Python dictionary"),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }\n", (9, 0), None,
         "unknown .npy format version"),
    ],
)  # fmt: skip
def test_a_forged_npy_header_fails_in_one_line(
    probe, tmp_path, capsys, header, version, length, message
):
    path = _npy(tmp_path / "f.npy", header, version, length)
    with pytest.raises(ValueError, match=re.escape(message)):
        NpyRows(path)
    args = ["dissect", "--dataset", str(probe.directory), "--features", str(path),
            "--out", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    _one_line_error(capsys, "f.npy: not a NumPy .npy array", message)
    assert not (tmp_path / "out").exists()


def test_npy_header_reader_agrees_with_numpy(tmp_path):
    for array in (np.zeros((3, 2, 2, 1), ">f8"), np.arange(24, dtype=np.uint8).reshape(2, 3, 4)):
        np.save(tmp_path / "a.npy", array)
        rows = NpyRows(tmp_path / "a.npy")
        assert rows.shape == array.shape and rows.dtype == array.dtype
        np.testing.assert_array_equal(rows[0 : len(array)], array)
    with open(tmp_path / "b.npy", "wb") as f:
        np.lib.format.write_array(f, np.ones((2, 3), np.float32), version=(3, 0))
    np.testing.assert_array_equal(NpyRows(tmp_path / "b.npy")[0:2], np.ones((2, 3)))


# Class 7: one line and exit 2 where the README promises it.
def test_summarize_a_tally_with_a_header_and_no_rows(tmp_path, capsys):
    path = tmp_path / "tally.csv"
    path.write_text("unit,category,label,score,object-label,object-iou\n")
    assert main(["summarize", str(path)]) == 2
    _one_line_error(capsys, "a header and no rows")


@pytest.mark.parametrize(
    "rows, fragments",
    [
        (["1,object,dog,0.3,dog,0.3", "1,object,cat,0.2,cat,0.2"],
         ["line 3: unit 1 again (first on line 2)"]),
        (["1,object,dog,nan,dog,0.3"], ["line 2: score is nan, not a finite number"]),
        (["1,object,dog,0.3,dog,0.3", "2,object,cat,0.2,cat,inf"],
         ["line 3: object-iou is inf, not a finite number"]),
        (["1,object,dog,0.3,dog,0.3", "x,object,cat,0.2,cat,0.2"],
         ["line 3: unit 'x' is not a number"]),
        (["1,object,dog,0.3,dog"], ["line 2: no object-iou (the row has too few fields)"]),
    ],
)  # fmt: skip
def test_summarize_refuses_duplicate_units_and_non_finite_numbers(
    tmp_path, capsys, rows, fragments
):
    # Issue 27, V8: a unit's second row and NaN or inf scores were summarized silently.
    path = tmp_path / "tally.csv"
    path.write_text("\n".join(["unit,category,label,score,object-label,object-iou", *rows]) + "\n")
    assert main(["summarize", str(path)]) == 2
    _one_line_error(capsys, str(path), *fragments)


@pytest.mark.parametrize("coordinator", ["notaport", "host:", ":80", "host:99999", "h:x"])
def test_a_coordinator_that_is_not_host_port(probe, tmp_path, capsys, coordinator):
    args = ["dissect", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--out", str(tmp_path / "out"), "--coordinator", coordinator,
            "--num-processes", "2", "--process-id", "0"]  # fmt: skip
    assert main(args) == 2
    _one_line_error(capsys, "expected host:port")


@pytest.mark.parametrize("out", ["images.npy", "link.npy", "hard.npy"])
def test_features_refuses_an_out_that_is_its_images(tmp_path, capsys, out):
    # Issue 27, V8: --out naming the --images file (or a link to it) replaced the user's images
    # with the activations.
    images = np.zeros((2, 32, 32, 3), np.uint8)
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "link.npy").symlink_to("images.npy")
    (tmp_path / "hard.npy").hardlink_to(tmp_path / "images.npy")
    before = (tmp_path / "images.npy").read_bytes()
    args = ["features", "--model", "user_model:factory", "--layer", "conv_b",
            "--images", str(tmp_path / "images.npy"), "--out", str(tmp_path / out)]  # fmt: skip
    assert main(args) == 2
    _one_line_error(capsys, f"--out {tmp_path / out} is the input --images")
    assert (tmp_path / "images.npy").read_bytes() == before
    assert (tmp_path / "link.npy").is_symlink()


def test_features_refuses_an_out_that_is_a_folder(tmp_path, capsys):
    # The error named the temporary file beside it (".out.XXXX.partial: Is a directory"),
    # after the whole forward pass.
    np.save(tmp_path / "images.npy", np.zeros((2, 32, 32, 3), np.uint8))
    (tmp_path / "out").mkdir()
    args = ["features", "--model", "user_model:factory", "--layer", "conv_b",
            "--images", str(tmp_path / "images.npy"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 2
    line = _one_line_error(capsys, f"--out {tmp_path / 'out'}: is a folder")
    assert "partial" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.npy", "out"]


@pytest.mark.parametrize("command", ["dissect", "formulas", "directions"])
def test_an_out_that_is_the_dataset_folder_is_refused(probe, tmp_path, capsys, command):
    # `dissect --out P --dataset P` wrote tally.csv, results.json and the report among the
    # probe's files, exit 0.
    copy = tmp_path / "probe"
    shutil.copytree(probe.directory, copy)
    np.save(tmp_path / "f.npy", dyadic_features(len(probe.planes), (4, 4, 3)))
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    args = [command, "--dataset", str(copy), "--features", str(tmp_path / "f.npy"),
            "--out", str(copy), "--no-progress"]  # fmt: skip
    assert main(args) == 2
    _one_line_error(capsys, f"--out {copy} is the dataset folder")
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before


@pytest.mark.parametrize("command", ["dissect", "formulas", "directions"])
def test_an_out_folder_that_is_the_features_file_is_refused(probe, tmp_path, capsys, command):
    # The commands writing a folder refuse an --out that is their --features (or a link to it).
    np.save(tmp_path / "f.npy", dyadic_features(len(probe.planes), (4, 4, 3)))
    (tmp_path / "link").symlink_to("f.npy")
    before = (tmp_path / "f.npy").read_bytes()
    for out in ("f.npy", "link"):
        args = [command, "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
                "--out", str(tmp_path / out), "--no-progress"]  # fmt: skip
        assert main(args) == 2
        _one_line_error(capsys, f"--out {tmp_path / out}: exists and is not a folder")
    assert (tmp_path / "f.npy").read_bytes() == before


def test_features_on_zero_images(tmp_path, capsys):
    np.save(tmp_path / "images.npy", np.zeros((0, 32, 32, 3), np.uint8))
    args = ["features", "--model", "user_model:factory", "--layer", "conv_b",
            "--images", str(tmp_path / "images.npy"), "--out", str(tmp_path / "out.npy")]  # fmt: skip
    assert main(args) == 2
    _one_line_error(capsys, "holds no images")
    assert not (tmp_path / "out.npy").exists()


def test_study_with_no_seeds_is_refused_in_one_line(tmp_path, capsys):
    from experiments import rotation

    with pytest.raises(SystemExit) as exit_info:
        rotation.main(["--config", "smoke", "--workdir", str(tmp_path / "w"), "seeds=0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "seeds=0: must be at least 1" in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_training_checkpoint_falls_back_to_the_previous_step(tmp_path, damage):
    import jax
    from flax import nnx

    from train.checkpoints import list_checkpoints, load_run
    from train.config import make_config
    from train.loop import train

    config = make_config("smoke", ["steps=4", "checkpoint_steps=0,2,4"])
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "run", progress=False, stop_after=3)
    assert list_checkpoints(tmp_path / "run") == [0, 2]
    files = [p for p in (tmp_path / "run" / "checkpoints" / "2").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x40
    largest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"checkpoints/2: damaged .*resuming from an earlier"):
        train(config, tmp_path / "run", progress=False)
    assert list_checkpoints(tmp_path / "run") == [0, 2, 4]
    assert (tmp_path / "run" / "damaged-checkpoints" / "2").is_dir()  # kept, not deleted
    for step in (2, 4):
        a, _ = load_run(tmp_path / "whole", step)
        b, _ = load_run(tmp_path / "run", step)
        for x, y in zip(
            jax.tree.leaves(nnx.to_pure_dict(nnx.state(a))),
            jax.tree.leaves(nnx.to_pure_dict(nnx.state(b))),
            strict=True,
        ):
            np.testing.assert_array_equal(x, y)


def test_loading_a_damaged_training_checkpoint_fails_in_one_line(tmp_path):
    from jaxdissect.errors import DissectError
    from train.checkpoints import load_run
    from train.config import make_config
    from train.loop import train

    train(make_config("smoke", ["steps=2", "checkpoint_steps=0,2"]), tmp_path / "r", False)
    files = [p for p in (tmp_path / "r" / "checkpoints" / "2").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[100] ^= 1
    largest.write_bytes(bytes(data))
    with pytest.raises(
        DissectError, match=r"checkpoints/2: damaged since it was saved \(.* is changed\)"
    ):
        load_run(tmp_path / "r", 2)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished smoke run with checkpoints at steps 0 and 2, copied by each test."""
    from train.config import make_config
    from train.loop import train

    config = make_config("smoke", ["steps=2", "checkpoint_steps=0,2"])
    workdir = tmp_path_factory.mktemp("trained") / "run"
    train(config, workdir, progress=False)
    return config, workdir


@pytest.mark.parametrize(
    "record, why",
    [
        ("{not json", "unreadable"),
        ('["0", "2"]', "not a record of SHA-256 digests"),
        ('{"2": {"a": 1}}', "not a record of SHA-256 digests"),
        ('{"2": "abc"}', "not a record of SHA-256 digests"),
    ],
)
def test_a_digest_record_holding_garbage_verifies_nothing(
    trained_run, tmp_path, capsys, record, why
):
    """Issue 27: checkpoints.sha256.json holding garbage was read as "no digests recorded", and
    every checkpoint passed as intact."""
    from train.__main__ import main as train_main
    from train.checkpoints import load_run

    _, original = trained_run
    workdir = tmp_path / "run"
    shutil.copytree(original, workdir)
    (workdir / "checkpoints.sha256.json").write_text(record)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    message = f"{workdir / 'checkpoints.sha256.json'}: {why}"
    with pytest.raises(DissectError, match=re.escape(message)):
        load_run(workdir, 2)
    args = ["--config", "smoke", "--workdir", str(workdir), "--no-progress"]
    assert train_main([*args, "steps=2", "checkpoint_steps=0,2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert "cannot be verified" in err
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before  # untouched


def test_a_checkpoint_the_digest_record_lacks_is_not_taken_as_intact(trained_run, tmp_path):
    from train.checkpoints import list_checkpoints, load_run
    from train.loop import train

    config, original = trained_run
    workdir = tmp_path / "run"
    shutil.copytree(original, workdir)
    record = json.loads((workdir / "checkpoints.sha256.json").read_text())
    del record["2"]  # as a kill between saving step 2 and recording it leaves it
    (workdir / "checkpoints.sha256.json").write_text(json.dumps(record))
    with pytest.raises(DissectError, match=r"checkpoints/2: not verifiable \(no digests of it"):
        load_run(workdir, 2)
    with pytest.warns(UserWarning, match=r"checkpoints/2: not verifiable .*resuming from an"):
        train(config, workdir, progress=False)
    assert (workdir / "damaged-checkpoints" / "2").is_dir()  # kept, not deleted
    assert list_checkpoints(workdir) == [0, 2]  # step 2 redone, and recorded
    load_run(workdir, 2)


def test_a_workdir_without_a_digest_record_resumes_unverified_with_a_warning(trained_run, tmp_path):
    """A workdir whose checkpoints.sha256.json is gone (or from before digests) resumed from
    unverified checkpoints without a word."""
    from train.loop import train

    config, original = trained_run
    workdir = tmp_path / "run"
    shutil.copytree(original, workdir)
    (workdir / "checkpoints.sha256.json").unlink()
    with pytest.warns(UserWarning, match=r"no checkpoints\.sha256\.json .*unverified"):
        train(config, workdir, progress=False)


def test_the_digest_record_is_never_written_through_a_planted_link(trained_run, tmp_path):
    """save wrote the record through a fixed temporary name, .checkpoints.sha256.json.partial,
    following a link planted there."""
    from train.loop import train

    config, _ = trained_run
    workdir = tmp_path / "run"
    workdir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("mine")
    (workdir / ".checkpoints.sha256.json.partial").symlink_to(victim)
    train(config, workdir, progress=False)
    assert victim.read_text() == "mine"
    assert sorted(json.loads((workdir / "checkpoints.sha256.json").read_text())) == ["0", "2"]


def test_train_workdir_naming_a_file(tmp_path, capsys):
    from train.__main__ import main as train_main

    (tmp_path / "file").write_text("mine")
    assert (
        train_main(["--config", "smoke", "--workdir", str(tmp_path / "file"), "--no-progress"]) == 2
    )
    err = capsys.readouterr().err
    assert err.strip() == f"train: error: --workdir {tmp_path / 'file'}: a file, not a folder"
    assert (tmp_path / "file").read_text() == "mine"


# Class 6: work and memory bounded before they start.
def test_exact_formulas_beyond_the_memory_budget_are_refused_before_any_work(
    probe, tmp_path, capsys, monkeypatch
):
    from jaxdissect import passes
    from jaxdissect.compositional import exact, explain

    np.save(tmp_path / "f.npy", dyadic_features(len(probe.planes), (4, 4, 8)))
    monkeypatch.setattr(explain, "memory_budget", lambda: 2**30)
    monkeypatch.setattr(passes, "run_pass", lambda *a, **k: pytest.fail("work started"))
    args = ["formulas", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--out", str(tmp_path / "out"), "--exact", "--length", "4", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    k = min(40, probe.num_labels)
    needed = exact.exact_search_bytes(8, k, 4)
    assert needed == 8 * k * (4 * k) ** 2 * exact.EXACT_NODE_BYTES > 2**30
    _one_line_error(capsys, "--exact --length 4 over 8 units", "more than the 1.0 GiB")
    assert not (tmp_path / "out").exists()


def test_exact_formulas_beyond_the_fixed_limit_are_refused_on_any_machine(
    probe, tmp_path, capsys, monkeypatch
):
    """--exact --length 4 on a tiny probe planned 1.9 GiB and used gigabytes: the machine's
    memory was the only bound. EXACT_MAX_BYTES bounds it on every machine."""
    from jaxdissect import passes
    from jaxdissect.compositional import exact, explain

    np.save(tmp_path / "f.npy", dyadic_features(len(probe.planes), (4, 4, 5)))
    monkeypatch.setattr(explain, "memory_budget", lambda: 2**50)
    monkeypatch.setattr(passes, "run_pass", lambda *a, **k: pytest.fail("work started"))
    args = ["formulas", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--out", str(tmp_path / "out"), "--exact", "--length", "5", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    needed = exact.exact_search_bytes(5, min(40, probe.num_labels), 5)
    assert needed > explain.EXACT_MAX_BYTES
    _one_line_error(
        capsys,
        f"may need {needed / 2**30:.1f} GiB, more than the exact search's limit of 8.0 GiB",
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, available", [([], 40), (["--labels-per-unit", "3"], 3)])
def test_a_formula_longer_than_its_labels_is_refused_before_any_work(
    probe, tmp_path, capsys, monkeypatch, flags, available
):
    """--length 1000000 was accepted: a formula holds each label once, so no formula is
    longer than the labels it may draw on."""
    from jaxdissect import passes

    np.save(tmp_path / "f.npy", dyadic_features(len(probe.planes), (4, 4, 5)))
    monkeypatch.setattr(passes, "run_pass", lambda *a, **k: pytest.fail("work started"))
    args = ["formulas", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--out", str(tmp_path / "out"), "--length", "1000000", "--no-progress", *flags]  # fmt: skip
    assert main(args) == 2
    _one_line_error(
        capsys, f"--length 1000000: longer than the {available} labels a formula may draw on"
    )
    assert not (tmp_path / "out").exists()


def test_memory_budget_follows_the_address_space_limit():
    import subprocess
    import sys

    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, resource.RLIM_INFINITY));"
        "from jaxdissect.compositional.exact import memory_budget; print(memory_budget())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0 < int(out.stdout) <= 3 * 2**30


def test_top_images_are_capped_at_the_number_of_images(probe, tmp_path):
    images = len(probe.planes)
    np.save(tmp_path / "f.npy", dyadic_features(images, (4, 4, 3)))
    args = ["dissect", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--no-progress", "--no-report", "--quantile", "0.05"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "huge"), "--top-images", "1000000000"]) == 0
    assert main([*args, "--out", str(tmp_path / "all"), "--top-images", str(images)]) == 0
    huge, exact = (
        np.load(tmp_path / "huge" / "counts.npz"),
        np.load(tmp_path / "all" / "counts.npz"),
    )
    assert huge["top_indices"].shape == (3, images)
    np.testing.assert_array_equal(huge["top_indices"], exact["top_indices"])
    np.testing.assert_array_equal(huge["top_maps"], exact["top_maps"])


def test_a_figure_of_too_many_rows_is_refused_at_once(tmp_path, capsys):
    from jaxdissect.data.synthetic.figure import MAX_ROWS

    out = tmp_path / "f.png"
    assert main(["synthetic", "figure", "--out", str(out), "--rows", "100000"]) == 2
    _one_line_error(capsys, f"at most {MAX_ROWS} rows")
    assert not out.exists()


# Class 8: ViT weights.
def _vit():
    from flax import nnx
    from test_vit import SMALL

    from jaxdissect.models import zoo

    return zoo.VisionTransformer(**SMALL, rngs=nnx.Rngs(1)), zoo.ZOO["vit_b_16"].rules


def test_vit_weights_mixing_torchvision_and_timm_names_are_refused():
    from test_vit import _timm_name, _torchvision_arrays

    from jaxdissect.errors import DissectError
    from jaxdissect.models import zoo

    arrays = _torchvision_arrays(np.random.default_rng(0))
    model, rules = _vit()
    # Every tensor once, but block 1 in timm's names and the rest in torchvision's.
    mixed = {(_timm_name(k) if "encoder_layer_1." in k else k): v for k, v in arrays.items()}
    assert len(mixed) == len(arrays)
    with pytest.raises(
        DissectError,
        match=r"two naming schemes mixed in one file: torchvision's \(conv_proj\.weight, \.\.\.\)"
        r" and timm's \(blocks\.1\.",
    ):
        zoo.load_torch_weights(model, mixed, rules, "mixed")
    zoo.load_torch_weights(model, arrays, rules, "torchvision")  # one scheme loads
    timm = {_timm_name(k): v for k, v in arrays.items()}
    zoo.load_torch_weights(model, timm, rules, "timm")


def test_a_transposed_qkv_is_named_with_the_shape_it_should_have():
    from test_vit import _torchvision_arrays

    from jaxdissect.errors import DissectError
    from jaxdissect.models import zoo

    arrays = _torchvision_arrays(np.random.default_rng(0))
    name = "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"
    assert arrays[name].shape == (192, 64)
    arrays[name] = np.ascontiguousarray(arrays[name].T)
    model, rules = _vit()
    with pytest.raises(DissectError) as error:
        zoo.load_torch_weights(model, arrays, rules, "t")
    message = str(error.value)
    assert "shape (64, 192) does not fit block0.attn.qkv.kernel, which takes (192, 64)" in message


def test_non_finite_vit_weights_are_refused():
    from test_vit import _torchvision_arrays

    from jaxdissect.errors import DissectError
    from jaxdissect.models import zoo

    arrays = _torchvision_arrays(np.random.default_rng(0))
    arrays["encoder.ln.weight"] = arrays["encoder.ln.weight"].copy()
    arrays["encoder.ln.weight"][3] = np.nan
    model, rules = _vit()
    with pytest.raises(DissectError, match=r"encoder\.ln\.weight: holds NaN or inf"):
        zoo.load_torch_weights(model, arrays, rules, "nan")


def test_a_file_with_both_module_x_and_x_is_refused(tmp_path, capsys):
    from test_vit import _state, _write

    from jaxdissect.errors import DissectError
    from jaxdissect.models.torch_weights import load_state_dict

    arrays = {"a.weight": np.ones(3, np.float32), "module.a.weight": np.zeros(3, np.float32)}
    _write(tmp_path / "w.pth", *_state(arrays, legacy=False), "zip")
    with pytest.raises(DissectError, match=r"holds both 'a.weight' and 'module.a.weight'"):
        load_state_dict(tmp_path / "w.pth")


def test_features_refuses_to_write_nan_activations(tmp_path, capsys):
    np.save(tmp_path / "images.npy", np.zeros((3, 32, 32, 3), np.uint8))
    args = ["features", "--model", "user_model:poisoned", "--layer", "conv_b",
            "--images", str(tmp_path / "images.npy"), "--out", str(tmp_path / "out.npy")]  # fmt: skip
    assert main(args) == 2
    _one_line_error(capsys, "layer conv_b: NaN or inf activations (first in image 0)")
    assert not (tmp_path / "out.npy").exists()


def test_a_model_factory_that_raises_is_named(tmp_path, capsys):
    """The user's factory raised KeyError through the CLI as a traceback."""
    args = ["features", "--model", "user_model:broken", "--layer", "conv_b",
            "--images", str(tmp_path / "images.npy"), "--out", str(tmp_path / "out.npy")]  # fmt: skip
    np.save(tmp_path / "images.npy", np.zeros((2, 16, 16, 3), np.uint8))
    assert main(args) == 2
    _one_line_error(capsys, "--model 'user_model:broken': the factory raised KeyError: 'conv_c'")
    from jaxdissect.sources import load_model

    with pytest.raises(DissectError) as raised:
        load_model("user_model:broken")
    assert isinstance(raised.value.__cause__, KeyError)


def test_a_figure_of_one_row(tmp_path):
    """Found by the fuzz test: one row made Matplotlib's axes one-dimensional."""
    assert main(["synthetic", "figure", "--out", str(tmp_path / "f.png"), "--rows", "1"]) == 0
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_a_figure_of_an_unknown_format_is_refused_naming_the_formats(tmp_path, capsys):
    """Matplotlib raised ValueError("Format 'txt' is not supported") after drawing."""
    out = tmp_path / "fig.txt"
    assert main(["synthetic", "figure", "--out", str(out), "--rows", "1", "--size", "16"]) == 2
    _one_line_error(capsys, f"{out}: cannot write a figure as '.txt'", ".png", ".svg", ".pdf")
    assert list(tmp_path.iterdir()) == []


def test_a_figure_without_an_extension_names_the_file_written(tmp_path, capsys):
    """Matplotlib appends .png to a name without one: "wrote fig" named a file never made."""
    out = tmp_path / "fig"
    assert main(["synthetic", "figure", "--out", str(out), "--rows", "1", "--size", "16"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}.png"
    assert [path.name for path in tmp_path.iterdir()] == ["fig.png"]


def test_report_draws_from_a_copy_of_the_probe_but_not_from_another(
    dissected, probe, tmp_path, capsys
):
    copy = tmp_path / "probe-copy"
    shutil.copytree(probe.directory, copy)  # new inodes and times, same content
    out = _tampered(dissected, tmp_path, _set(["dataset"], str(copy)))
    assert main(["report", out]) == 0
    assert "warning" not in capsys.readouterr().err  # images were read from the copy

    image = sorted((copy / "images").rglob("*.jpg"))[0]
    image.write_bytes(image.read_bytes() + b"\0")  # another probe: one image differs
    assert main(["report", out]) == 0
    err = capsys.readouterr().err
    assert "another probe than the one dissected" in err and str(copy) in err, err


def test_float64_features_beyond_float32_are_named_not_called_nan(probe, tmp_path, capsys):
    features = dyadic_features(len(probe.planes), (4, 4, 5), seed=3).astype(np.float64)
    features[6, 1, 2, 3] = 1e300
    np.save(tmp_path / "f.npy", features)
    for kernel in ("cpu", "xla"):
        args = ["dissect", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
                "--out", str(tmp_path / kernel), "--kernel", kernel, "--batch-size", "4",
                "--no-progress"]  # fmt: skip
        assert main(args) == 2
        _one_line_error(capsys, "1e+300 in image 6", "beyond float32's range")


def test_a_process_whose_coordinator_never_listens_says_so_and_fails(
    probe, tmp_path, capsys, monkeypatch
):
    import socket

    import jaxdissect.cli.dissect

    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(jaxdissect.cli.dissect, "JOIN_TIMEOUT_S", 1)
    np.save(tmp_path / "f.npy", dyadic_features(len(probe.planes), (4, 4, 5), seed=3))
    args = ["dissect", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--out", str(tmp_path / "out"), "--coordinator", f"127.0.0.1:{port}",
            "--num-processes", "2", "--process-id", "1", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("jaxdissect: process 1 of 2: waiting up to 1 s for process 0")
    assert err[1] == (
        f"jaxdissect: error: --coordinator 127.0.0.1:{port}: process 0 did not listen within "
        "1 s (is it running, and is the address right?)"
    )
    assert not (tmp_path / "out").exists()


def test_process_0_whose_peers_never_join_says_so_and_fails(probe, tmp_path):
    """Process 0 waited silently for JAX's 300 s, then JAX aborted in C++ (a stack trace,
    exit 134). Now it says what it waits for, and a watchdog ends it in one line, exit 2. In
    a subprocess: the watchdog ends the whole process."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:  # a free port for process 0's coordination service
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    np.save(tmp_path / "f.npy", dyadic_features(len(probe.planes), (4, 4, 5), seed=3))
    args = ["dissect", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--out", str(tmp_path / "out"), "--coordinator", f"127.0.0.1:{port}",
            "--num-processes", "2", "--process-id", "0", "--no-progress"]  # fmt: skip
    script = (
        "import sys; import jaxdissect.cli.dissect as d; d.JOIN_TIMEOUT_S = 2; "
        "from jaxdissect.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert err[0] == (
        f"jaxdissect: process 0 of 2: waiting up to 2 s for the other 1 to join at 127.0.0.1:{port}"
    )
    assert err[-1].startswith(
        f"jaxdissect: error: --coordinator 127.0.0.1:{port}: not all 2 processes joined within 2 s"
    )
    assert "Check failure" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["probe", "figure"])
def test_a_synthetic_image_above_2048_px_is_refused_at_once(tmp_path, capsys, command):
    """--size 9000 drew for minutes (a 243 MB image each), and --images 5 --size 8192 too
    (about 37 s an image at 0.55 us a pixel)."""
    extra = ["--images", "1", "--no-progress"] if command == "probe" else []
    out = tmp_path / ("p" if command == "probe" else "f.png")
    assert main(["synthetic", command, "--out", str(out), "--size", "9000", *extra]) == 2
    _one_line_error(capsys, "--size must lie in [8, 2048], got 9000")
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "1000000000"], "--epochs must be at most 1000, got 1000000000"),
        (["--learning-rate", "inf"], "--learning-rate must be finite and > 0, got inf"),
        (["--learning-rate", "nan"], "--learning-rate must be finite and > 0, got nan"),
        # Round three: 1e300 became inf in float32 after a NumPy warning; a seed beyond
        # 2**63 ended in OverflowError's traceback, and 2**32 drew seed 0's split.
        (["--learning-rate", "1e300"], "--learning-rate must fit float32"),
        (["--seed", str(10**30)], f"--seed must lie in [0, 2**32), got {10**30}"),
        (["--seed", str(2**32)], f"--seed must lie in [0, 2**32), got {2**32}"),
    ],
)
def test_directions_training_is_bounded_before_it_starts(probe, tmp_path, capsys, flags, message):
    """--epochs 1e9 drew every epoch's order at once and JAX aborted in C++; inf trained."""
    np.save(tmp_path / "f.npy", dyadic_features(len(probe.planes), (4, 4, 5)))
    args = ["directions", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--out", str(tmp_path / "out"), "--no-progress", *flags]  # fmt: skip
    assert main(args) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "out").exists()


def test_the_directions_study_bounds_its_epochs(capsys):
    """experiments.directions directions.epochs=1e11 ended in JAX's OverflowError."""
    from experiments import directions

    with pytest.raises(SystemExit) as exit:
        directions.main(["--config", "smoke", "directions.epochs=100000000000"])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "`epochs` must be at most 1000, got 100000000000" in error


@pytest.mark.parametrize("links", [True, False])  # a published set, or plain files
def test_report_errors_name_the_users_out_not_the_set_being_written(
    dissected, tmp_path, capsys, links
):
    # Issue 27, V8: report redraws in a new set folder (OUT/.jaxdissect/dissect.<n>), and
    # its errors and warnings named the files there instead of the user's OUT.
    copy = tmp_path / "copy"
    shutil.copytree(dissected, copy, symlinks=links)
    results = json.loads((copy / "results.json").read_text())
    (copy / "results.json").write_text(json.dumps({**results, "dataset": str(tmp_path / "no")}))
    capsys.readouterr()
    assert main(["report", str(copy)]) == 0
    warning = capsys.readouterr().err.splitlines()[0]
    assert warning.startswith(f"jaxdissect: warning: drawing {copy}'s cards without images")
    results["units"][0]["score"] = float("nan")
    (copy / "results.json").write_text(json.dumps(results))
    assert main(["report", str(copy)]) == 2
    line = _one_line_error(capsys, f"{copy / 'results.json'}: ", "units[0].score")
    assert ".jaxdissect" not in line


@pytest.mark.parametrize("files", [None, {"../../../escaped": {"size": 4}}, {"a//b": {}}])
def test_report_refuses_a_forged_manifest_of_the_current_set(dissected, tmp_path, capsys, files):
    """report read the current set's MANIFEST.json["files"] unchecked: a list there was a
    TypeError traceback, and a name leaving the set was linked or copied from and to there."""
    out = tmp_path / "out"
    shutil.copytree(dissected, out, symlinks=True)
    current = out / ".jaxdissect" / os.readlink(out / ".jaxdissect" / "dissect")
    manifest = json.loads((current / "MANIFEST.json").read_text())
    (current / "MANIFEST.json").write_text(json.dumps([] if files is None else manifest | {
        "files": manifest["files"] | files}))  # fmt: skip
    (tmp_path / "escaped").write_text("mine")
    assert main(["report", str(out)]) == 2
    _one_line_error(capsys, "MANIFEST.json: ", "move it away")
    assert (tmp_path / "escaped").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escaped", "out"]


def test_an_error_naming_a_file_with_a_line_break_stays_one_line(tmp_path, capsys):
    images = tmp_path / "a\nb.npy"
    argv = ["features", "--model", "zoo:resnet18", "--layer", "layer4", "--images", str(images),
            "--out", str(tmp_path / "o.npy")]  # fmt: skip
    assert main(argv) == 2
    line = _one_line_error(capsys, "a\\nb.npy: features file not found")
    assert "\n" not in line


def test_a_synthetic_probe_of_too_many_pixels_is_refused_at_once(tmp_path, capsys):
    """--images 100 --size 8192 would draw for over an hour: refused before any image."""
    out = tmp_path / "p"
    args = ["synthetic", "probe", "--out", str(out), "--images", "1100", "--size", "2048"]
    assert main([*args, "--no-progress"]) == 2
    _one_line_error(capsys, "--images 1100 x --size 2048**2", "4,294,967,296")
    assert not out.exists()


def test_a_synthetic_figure_of_too_many_pixels_is_refused_at_once(tmp_path, capsys):
    """--rows 100 --size 8192 reached 6 GB: refused before any image is drawn."""
    out = tmp_path / "f.png"
    assert main(["synthetic", "figure", "--out", str(out), "--rows", "100", "--size", "2048"]) == 2
    _one_line_error(capsys, "--rows 100 x --size 2048**2", "16,777,216")
    assert not out.exists()


# Round three: cases found by the final adversarial pass.


def test_no_top_images_leave_no_empty_report_folder_to_keep_a_set(probe, tmp_path, capsys):
    """An empty report/ is in no manifest: the next run kept the old set, naming nothing."""
    np.save(tmp_path / "f.npy", dyadic_features(len(probe.planes), (4, 4, 3)))
    out = tmp_path / "out"
    args = ["dissect", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--out", str(out), "--no-progress", "--top-images", "0"]  # fmt: skip
    assert main(args) == 0
    assert main(["report", str(out)]) == 0
    assert "kept" not in capsys.readouterr().err
    assert sorted(p.name for p in (out / ".jaxdissect").iterdir()) == [
        "dissect", "dissect.2", "journal.json"
    ]  # fmt: skip


def test_a_batch_size_beyond_the_probe_pads_no_more_than_the_probe(probe, tmp_path):
    """Batches are padded to the batch size: 10**9 allocated that many images and ran out of
    memory; a batch is the probe's size at most (the fingerprint keeps the size asked)."""
    base = ["dissect", "--dataset", str(probe.directory), "--model", "user_model:factory",
            "--layer", "conv_a", "--no-progress", "--no-report", "--quantile", "0.05"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "huge"), "--batch-size", str(10**9)]) == 0
    size = str(len(probe.planes))
    assert main([*base, "--out", str(tmp_path / "all"), "--batch-size", size]) == 0
    assert (tmp_path / "huge/tally.csv").read_bytes() == (tmp_path / "all/tally.csv").read_bytes()
    seeds = [str(tmp_path / "w.seed")]
    (tmp_path / "w.seed").write_text("1")
    base[4] = "user_model:seeded_factory"  # and several checkpoints in one pass
    many = [*base, "--weights", seeds[0], "--weights", str(tmp_path / "w2.seed")]
    (tmp_path / "w2.seed").write_text("2")
    assert main([*many, "--out", str(tmp_path / "many"), "--batch-size", str(10**9)]) == 0


def test_several_layers_write_their_index_page(probe, tmp_path, capsys):
    """dissect printed "index: OUT/index.html" for several layers and wrote none."""
    out = tmp_path / "out"
    args = ["dissect", "--dataset", str(probe.directory), "--model", "user_model:factory",
            "--layer", "conv_a", "--layer", "conv_b", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert f"index: {out / 'index.html'}" in capsys.readouterr().out
    assert 'href="conv_b/report.html"' in (out / "index.html").read_text()


@pytest.mark.parametrize("command", ["features", "figure"])
def test_an_out_that_is_a_fifo_is_refused_not_replaced(tmp_path, capsys, command):
    """The file was renamed onto any name: a FIFO, or as root /dev/null, became a file."""
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    if command == "features":
        np.save(tmp_path / "im.npy", np.zeros((2, 8, 8, 3), np.uint8))
        argv = ["features", "--model", "user_model:factory", "--layer", "conv_a",
                "--images", str(tmp_path / "im.npy"), "--out", str(fifo)]  # fmt: skip
    else:
        argv = ["synthetic", "figure", "--out", str(fifo), "--rows", "1", "--size", "16"]
    assert main(argv) == 2
    _one_line_error(capsys, f"--out {fifo}: exists and is not a regular file")
    assert fifo.is_fifo()


def test_a_figure_is_never_written_through_a_link(tmp_path):
    """savefig opened the name and wrote the PNG over the file a link there led to."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "fig.png").symlink_to(victim)
    assert main(["synthetic", "figure", "--out", str(tmp_path / "fig.png"), "--rows", "1",
                 "--size", "16"]) == 0  # fmt: skip
    assert victim.read_text() == "precious"
    assert not (tmp_path / "fig.png").is_symlink()
    assert (tmp_path / "fig.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_summarize_names_a_tally_that_is_not_a_regular_file(tmp_path, capsys, kind):
    """A FIFO or folder was "file not found"."""
    path = tmp_path / "tally.csv"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    assert main(["summarize", str(path)]) == 2
    _one_line_error(capsys, f"{path}: not a regular file")


def test_summarize_reads_a_tally_with_a_byte_order_mark(dissected, tmp_path, capsys):
    """A spreadsheet's BOM made the first column "\ufeffunit": "missing unit"."""
    path = tmp_path / "tally.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (dissected / "tally.csv").read_bytes())
    assert main(["summarize", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["units"] == 5


def test_a_cache_that_is_a_file_is_named_with_its_flag(dissected, probe, tmp_path, capsys):
    """mkdir's bare "FILE: File exists"; report's warning spelt `cache_root`."""
    cache = tmp_path / "cache"
    cache.write_text("mine")
    argv = ["dissect", "--dataset", str(probe.directory), "--features",
            str(dissected.parent / "f.npy"), "--out", str(tmp_path / "o"), "--cache", str(cache)]  # fmt: skip
    assert main(argv) == 2
    _one_line_error(capsys, f"--cache {cache}: exists and is not a folder")
    copy = tmp_path / "copy"
    shutil.copytree(dissected, copy)
    assert main(["report", str(copy), "--cache", str(cache)]) == 0
    assert f"(--cache {cache}: exists and is not a folder)" in capsys.readouterr().err
    assert cache.read_text() == "mine"


def test_a_report_warning_about_a_dataset_with_a_line_break_stays_one_line(
    dissected, tmp_path, capsys
):
    out = _tampered(dissected, tmp_path, _set(["dataset"], str(tmp_path / "no\nsuch")))
    assert main(["report", out]) == 0
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if line.startswith("jaxdissect: warning")]
    assert len(warnings) == 1 and "no\\nsuch" in warnings[0], warnings


def test_num_processes_beyond_an_int_is_refused_before_waiting(probe, tmp_path, capsys):
    """10**20 processes: process 5 waited 300 s for a coordinator JAX could not start."""
    argv = ["dissect", "--dataset", str(probe.directory), "--features", "f.npy", "--out",
            str(tmp_path / "o"), "--coordinator", "localhost:1", "--num-processes",
            str(10**20), "--process-id", "5", "--kernel", "xla"]  # fmt: skip
    assert main(argv) == 2
    _one_line_error(capsys, "--num-processes must be at most 2,147,483,647")


def _rewritten_counts(dissected, tmp_path, top_maps: bytes):
    """A copy of ``dissected`` whose counts.npz holds ``top_maps`` as its top_maps.npy."""
    import zipfile

    copy = tmp_path / "copy"
    shutil.copytree(dissected, copy)
    counts = dict(np.load(copy / "counts.npz"))
    (copy / "counts.npz").unlink()
    with zipfile.ZipFile(copy / "counts.npz", "w") as archive:
        for name, array in counts.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{name}.npy", top_maps if name == "top_maps" else buffer.getvalue())
    return copy, counts["top_maps"]


def test_counts_whose_header_declares_more_than_they_hold_are_refused(dissected, tmp_path, capsys):
    """A 4 kB counts.npz declaring 800 GB of maps: "out of memory" after NumPy's attempt."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (5, 8, 10**5, 10**5)}
    )
    copy, _ = _rewritten_counts(dissected, tmp_path, header.getvalue() + bytes(64))
    assert main(["report", str(copy)]) == 2
    _one_line_error(capsys, "counts.npz: top_maps.npy declares (5, 8, 100000, 100000) float32")


@pytest.mark.parametrize("value, dtype", [(np.nan, np.float32), (1e300, np.float64)])
def test_counts_with_maps_that_are_not_float32_numbers_are_refused(
    dissected, tmp_path, capsys, value, dtype
):
    """NaN reached the page; 1e300 was cast with a NumPy warning on stderr."""
    copy, maps = _rewritten_counts(dissected, tmp_path, b"")
    maps = maps.astype(dtype)
    maps.flat[0] = value
    buffer = io.BytesIO()
    np.save(buffer, maps)
    copy, _ = _rewritten_counts(copy, tmp_path / "again", buffer.getvalue())
    assert main(["report", str(copy)]) == 2
    _one_line_error(capsys, "top_maps: not all finite float32 numbers")


def _api_calls(probe, tmp_path):
    """Per name: a call of the Python API with one argument of a wrong type or kind, and
    what its DissectError says (each was a TypeError, ValueError or AttributeError from
    deep inside, or was accepted)."""
    import jaxdissect as jd

    dataset = jd.open_broden(probe.directory)
    labels = jd.load_label_arrays(dataset, progress=False)
    color = jd.load_label_arrays(jd.open_broden(probe.directory, ["color"]), progress=False)
    features = dyadic_features(dataset.num_images, (4, 4, 3))
    shapes = {"l": (4, 4, 3)}

    def read(start, stop):
        return {"l": features[start:stop]}

    def activations(n, labels=labels):
        return jd.dissect_activations(read, n, shapes, dataset, labels, progress=False)

    n = dataset.num_images
    float_images = np.zeros((n, *dataset.image_size, 3), np.float32)
    return {
        "quantile str": (lambda: jd.DissectConfig(quantile="0.1"), "`quantile` must be a number"),
        "batch float": (
            lambda: jd.DissectConfig(batch_size=2.5),
            "`batch_size` must be an integer",
        ),
        "top_images bool": (lambda: jd.DissectConfig(top_images=True), "`top_images` must be an"),
        "directory int": (lambda: jd.open_broden(5), "`directory` must be a path"),
        "directory None": (lambda: jd.open_broden(None), "`directory` is None"),
        "out int": (lambda: jd.dissect(dataset, features, out=5), "`out` must be a path"),
        "num_images float": (lambda: activations(float(n)), "`num_images` must be an integer"),
        "labels str": (lambda: activations(n, "labels"), "`labels` must be LabelArrays"),
        "labels of a subset": (lambda: activations(n, color), "`labels` hold planes of shape"),
        "complex features": (
            lambda: jd.dissect(dataset, features.astype(np.complex64), progress=False),
            "`features` must be a numeric array",
        ),
        "object features": (
            lambda: jd.dissect(dataset, features.astype(object), progress=False),
            "`features` must be a numeric array",
        ),
        "layer list": (lambda: jd.features_activations(features, layer=["x"]), "`layer` must be"),
        "float images": (
            lambda: jd.dissect(dataset, features, images=float_images, out=tmp_path / "o"),
            "`images` must be uint8 of shape",
        ),
        "model int": (lambda: jd.load_model(5), "`model` must be 'zoo:NAME'"),
        "weights folder": (
            lambda: jd.load_model("zoo:resnet20-cifar10", tmp_path),
            "not a regular file",
        ),
        "bilinear float": (lambda: jd.bilinear_matrix(2.5, 4), "must be integers"),
        "summarize lengths": (
            lambda: jd.summarize(["c"], ["c", "c"], ["x"], [0.5], [["x"]], [[0.5]]),
            "must describe the same units",
        ),
        "label_units nan": (
            lambda: jd.label_units(np.full((2, 3), np.nan), np.zeros(3, np.int32), 1),
            "`scores` must be finite IoUs",
        ),
        "summarize nan": (
            lambda: jd.summarize(["c"], ["c"], ["x"], [np.nan], [["x"]], [[np.nan]]),
            "must be finite",
        ),
    }


API_CASES = ["quantile str", "batch float", "top_images bool", "directory int", "directory None",
             "out int", "num_images float", "labels str", "labels of a subset", "complex features",
             "object features", "layer list", "float images", "model int", "weights folder",
             "bilinear float", "summarize lengths", "summarize nan", "label_units nan"]  # fmt: skip


@pytest.mark.parametrize("case", API_CASES)
def test_the_api_refuses_arguments_of_a_wrong_type_naming_them(probe, tmp_path, case):
    call, message = _api_calls(probe, tmp_path)[case]
    with pytest.raises(DissectError, match=re.escape(message)):
        call()


@pytest.mark.parametrize("command", ["dissect", "formulas", "report"])
def test_an_out_inside_another_outs_store_is_refused(dissected, probe, tmp_path, capsys, command):
    """--out OUT/.jaxdissect/dissect displaced OUT's published set into a store of its own."""
    copy = tmp_path / "copy"
    shutil.copytree(dissected, copy, symlinks=True)
    inside = copy / ".jaxdissect" / "dissect"
    before = sorted(p.name for p in inside.iterdir())
    if command == "report":
        argv = ["report", str(inside)]
    else:
        argv = [command, "--dataset", str(probe.directory), "--features",
                str(dissected.parent / "f.npy"), "--out", str(inside / "x"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    _one_line_error(capsys, "is inside an output folder's .jaxdissect/")
    assert sorted(p.name for p in inside.iterdir()) == before


def test_report_of_one_layer_folder_redraws_it_in_its_outs_set(probe, tmp_path, capsys):
    """`report OUT/conv_a` wrote an index for OUT/conv_a, reading OUT/conv_a/conv_a/results.json."""
    out = tmp_path / "out"
    args = ["dissect", "--dataset", str(probe.directory), "--model", "user_model:factory",
            "--layer", "conv_a", "--layer", "conv_b", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["report", str(out / "conv_a")]) == 0
    assert f"report: {out / 'conv_a' / 'report.html'}" in capsys.readouterr().out
    assert not (out / "conv_a" / "index.html").exists()
    assert (out / "index.html").is_file() and (out / "conv_b" / "report.html").is_file()


@pytest.mark.parametrize("planted", ["label.csv link", "images link", "subfolder link", "fifo"])
def test_a_probe_is_never_written_through_a_link_or_into_a_fifo(tmp_path, capsys, planted):
    """label.csv linked elsewhere was overwritten there; images/ (or images/synthetic/)
    linked elsewhere filled that folder; a FIFO at c_color.csv blocked the write."""
    out, victim = tmp_path / "probe", tmp_path / "victim"
    out.mkdir()
    victim.mkdir()
    (victim / "label.csv").write_text("keep")
    if planted == "label.csv link":
        (out / "label.csv").symlink_to(victim / "label.csv")
    elif planted == "images link":
        (out / "images").symlink_to(victim)
    elif planted == "subfolder link":
        (out / "images").mkdir()
        (out / "images" / "synthetic").symlink_to(victim)
    else:
        os.mkfifo(out / "c_color.csv")
    from jaxdissect.data.synthetic import world

    with pytest.raises(DissectError, match="`directory`"):
        world.write_probe(out, 2, 0, world.WorldConfig(image_size=16), progress=False)
    assert sorted(p.name for p in victim.iterdir()) == ["label.csv"]
    assert (victim / "label.csv").read_text() == "keep"


@pytest.mark.parametrize("name", ["category.csv", "images", "file"])
def test_synthetic_probe_refuses_an_out_holding_names_it_writes(tmp_path, capsys, name):
    """A user's category.csv in --out was overwritten; --out a file said 'OUT/images: Not a
    directory'."""
    out = tmp_path / "out"
    if name == "file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / name).mkdir() if name == "images" else (out / name).write_text("mine")
    assert main(["synthetic", "probe", "--out", str(out), "--images", "2", "--size", "16"]) == 2
    _one_line_error(capsys, "not a folder" if name == "file" else f"already holds {name}")
    if name != "images":
        assert (out if name == "file" else out / name).read_text() == "mine"


def test_a_features_file_of_one_number_fails_in_one_line(probe, tmp_path, capsys):
    """np.save of a scalar: the rows reader's shape[0] raised IndexError's traceback."""
    np.save(tmp_path / "f.npy", np.float32(1))
    argv = ["dissect", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--out", str(tmp_path / "o"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    _one_line_error(capsys, "0-dimensional array")


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_features_path_that_is_not_a_regular_file_is_named_so(probe, tmp_path, capsys, kind):
    """A FIFO, folder or link to /dev/zero was "features file not found"."""
    path = tmp_path / "f.npy"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    argv = ["dissect", "--dataset", str(probe.directory), "--features", str(path),
            "--out", str(tmp_path / "o"), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    _one_line_error(capsys, f"{path}: not a regular file")


@pytest.mark.parametrize(
    "command, flag", [("formulas", "--layer"), ("directions", "--weights"), ("features", "--layer")]
)
def test_a_one_layer_command_refuses_its_flag_given_twice(tmp_path, capsys, command, flag):
    """formulas --layer a --layer b explained b alone, in silence."""
    argv = [
        command,
        "--model",
        "user_model:factory",
        "--out",
        str(tmp_path / "o"),
        flag,
        "a",
        flag,
        "b",
    ]
    argv += ["--images", "i.npy"] if command == "features" else ["--dataset", "d"]
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    assert f"argument {flag}: given twice" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../escape", ".jaxdissect", "a/b", ""])
def test_a_layer_name_that_is_no_folder_name_is_refused_before_any_work(probe, tmp_path, name):
    """Several layers go to OUT/<layer>/: "../escape" wrote beside the set, outside it."""
    import jaxdissect as jd

    features = dyadic_features(len(probe.planes), (4, 4, 3))
    acts = jd.Activations(
        lambda start, stop: {"a": features[start:stop], name: features[start:stop]},
        {"a": (4, 4, 3), name: (4, 4, 3)}, len(features), {"test": name}, {},
    )  # fmt: skip
    out = tmp_path / "deep" / "out"
    with pytest.raises(DissectError, match="cannot be a folder under OUT"):
        jd.dissect(probe.directory, acts, out=out, report=False, progress=False)
    assert not (tmp_path / "deep").exists()


@pytest.mark.parametrize("forged", ["journal.json", "dissect/MANIFEST.json"])
def test_a_store_file_nested_too_deeply_fails_in_one_line(
    dissected, probe, tmp_path, capsys, forged
):
    """json's RecursionError is no ValueError: outdir's readers let it through as a traceback.
    A journal that cannot be read is named; a manifest that cannot be read marks no set
    complete, and the new set is published."""
    copy = tmp_path / "copy"
    shutil.copytree(dissected, copy, symlinks=True)
    target = copy / ".jaxdissect" / forged
    target = target.resolve()
    target.unlink()
    target.write_text("[" * 200_000 + "]" * 200_000)
    argv = ["dissect", "--dataset", str(probe.directory), "--features",
            str(dissected.parent / "f.npy"), "--out", str(copy), "--no-progress", "--quantile", "0.02"]  # fmt: skip
    if forged == "journal.json":
        assert main(argv) == 2
        _one_line_error(capsys, f"{target}: unreadable", "move")
    else:
        assert main(argv) == 0
        assert "Traceback" not in capsys.readouterr().err
        assert (copy / "tally.csv").is_file()


def test_a_link_at_a_checkpoints_folder_is_refused(probe, tmp_path, capsys):
    """OUT/a linked elsewhere: checkpoint a's whole output folder was written there."""
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.mkdir()
    (out / "a").symlink_to(victim)
    for name in "ab":
        (tmp_path / f"{name}.seed").write_text("1")
    argv = ["dissect", "--dataset", str(probe.directory), "--model", "user_model:seeded_factory",
            "--layer", "conv_a", "--weights", str(tmp_path / "a.seed"), "--weights",
            str(tmp_path / "b.seed"), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    _one_line_error(capsys, f"--out {out}: a is a link or not a folder")
    assert list(victim.iterdir()) == []


@pytest.mark.parametrize("name", ["results.json", "counts.npz"])
def test_report_names_a_results_file_that_is_a_fifo_not_a_regular_file(
    dissected, tmp_path, capsys, name
):
    """A counts.npz (or results.json) that is a FIFO was "file not found" (or blocked)."""
    copy = tmp_path / "copy"
    shutil.copytree(dissected, copy, symlinks=True)
    file = (copy / name).resolve()  # in the published set, where OUT's name leads
    file.unlink()
    os.mkfifo(file)
    capsys.readouterr()
    assert main(["report", str(copy)]) == 2
    _one_line_error(capsys, f"{copy / name}: not a regular file")


def test_report_refuses_a_counts_npz_that_inflates_a_hundredfold(dissected, tmp_path, capsys):
    """A 2 MB counts.npz inflating to 1.28 GB of maps (every size within bounds) took 54 s
    of decompression before any check; jaxdissect writes counts.npz uncompressed."""
    import zipfile

    copy = tmp_path / "copy"
    shutil.copytree(dissected, copy, symlinks=True)
    counts = (copy / "counts.npz").resolve()
    with np.load(counts) as arrays:
        members = {name: arrays[name] for name in arrays.files}
    counts.unlink()
    members["padding"] = np.zeros(2**22, np.float32)  # 16 MiB of zeros: deflates ~1000-fold
    np.savez_compressed(counts, **members)
    assert any(i.file_size > 100 * i.compress_size for i in zipfile.ZipFile(counts).infolist())
    capsys.readouterr()
    assert main(["report", str(copy)]) == 2
    _one_line_error(capsys, f"{copy / 'counts.npz'}: padding.npy inflates", "100-fold")


def test_dissect_into_a_study_workdir_is_refused_before_any_work(
    dissected, probe, tmp_path, capsys
):
    """dissect --out <a study's workdir> ran both passes, then was refused at publishing."""
    from jaxdissect import outdir

    workdir = tmp_path / "study"
    workdir.mkdir()
    with outdir.locked(workdir):
        folder = outdir.new_set(workdir, "study")
        (folder / "results.json").write_text("{}")
        outdir.publish(folder, workdir)
    argv = ["dissect", "--dataset", str(probe.directory), "--features",
            str(dissected.parent / "f.npy"), "--out", str(workdir), "--no-progress"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2
    _one_line_error(capsys, f"{workdir} holds a study's published results")
    assert not (workdir / ".checkpoint").exists() and not (workdir / "tally.csv").exists()


def test_a_killed_digest_record_write_is_named_on_resume(trained_run, tmp_path, capsys):
    """A kill while writing checkpoints.sha256.json left its temporary file unnamed."""
    from train.loop import train

    config, original = trained_run
    workdir = tmp_path / "run"
    shutil.copytree(original, workdir)
    (workdir / ".checkpoints.sha256.json.abcd1234.partial").write_text("{")
    train(config, workdir, progress=False)
    err = capsys.readouterr().err
    assert ".checkpoints.sha256.json.abcd1234.partial left by an interrupted write" in err
    assert (workdir / ".checkpoints.sha256.json.abcd1234.partial").exists()  # never removed
