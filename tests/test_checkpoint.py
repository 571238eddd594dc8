"""The passes' checkpoints: written whole, read back only when they fit, without pickles."""

import json
import os
import re
from typing import NamedTuple

import numpy as np
import pytest
from probe_fixture import dyadic_features

from jaxdissect.checkpoint import PassCheckpoints
from jaxdissect.cli import main
from jaxdissect.errors import DissectError


class Pair(NamedTuple):
    top: np.ndarray
    fill: np.ndarray


def _states(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "layer": {"quantile": Pair(rng.normal(size=(3, 4)).astype(np.float32), np.arange(3)),
                  "first_bad": np.asarray(7, np.int64)},
        "other": [rng.integers(0, 9, (2, 5)), rng.integers(0, 9, 4)],
    }  # fmt: skip


def _equal(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _equal(x, y)
    else:
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_round_trip_keeps_the_latest_only(tmp_path):
    checkpoints = PassCheckpoints(tmp_path / "c", {"run": 1}, every=2)
    template, saved = _states(0), _states(1)
    checkpoints.save("pass", 1, lambda: saved, last=False)  # not due: nothing written
    assert checkpoints.restore("pass", template) == (0, None)
    checkpoints.save("pass", 2, lambda: _states(2), last=False)
    checkpoints.save("pass", 3, lambda: saved, last=True)
    assert sorted(p.name for p in (tmp_path / "c" / "pass").iterdir()) == ["3"]
    step, restored = checkpoints.restore("pass", template)
    assert step == 3
    _equal(restored, saved)


@pytest.mark.parametrize(
    "damage",
    ["garbage", "truncated", "pickle", "shape", "dtype", "missing", "extra"],
)
def test_a_checkpoint_that_does_not_fit_starts_the_pass_afresh(tmp_path, damage):
    checkpoints = PassCheckpoints(tmp_path / "c", {"run": 1})
    path = tmp_path / "c" / "pass" / "5"
    checkpoints.save("pass", 5, lambda: _states(1), last=True)
    arrays = dict(np.load(path))
    if damage == "garbage":
        path.write_bytes(b"not a zip file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "pickle":
        arrays["['layer']['quantile'].top"] = np.array([{"a": 1}], dtype=object)
        with open(path, "wb") as file:
            np.savez(file, **arrays)
    else:
        last = "['other'][1]"  # a (4,) int array
        if damage == "shape":
            arrays[last] = arrays[last][:2]
        elif damage == "dtype":
            arrays[last] = arrays[last].astype(np.float64)
        elif damage == "missing":
            del arrays[last]
        else:
            arrays["['other'][2]"] = np.zeros(1)
        with open(path, "wb") as file:
            np.savez(file, **arrays)
    with pytest.warns(UserWarning, match=r"c/pass/5: .*starts afresh"):
        assert checkpoints.restore("pass", _states(0)) == (0, None)


def test_a_dissection_resumes_from_a_damaged_checkpoint_to_identical_files(
    probe, tmp_path, monkeypatch
):
    """The passes' final checkpoints kept, then damaged: the rerun recomputes, same files."""
    monkeypatch.setattr(PassCheckpoints, "remove", lambda self: None)
    np.save(tmp_path / "f.npy", dyadic_features(len(probe.planes), (4, 4, 3)))
    args = ["dissect", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--no-progress", "--quantile", "0.05", "--no-report", "--kernel", "cpu"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "fresh")]) == 0
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    saved = sorted((tmp_path / "out" / ".checkpoint").glob("*/[0-9]*"))
    assert [p.parent.name for p in saved] == ["tally-cpu", "thresholds-cpu"]
    for path in saved:
        path.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        assert main([*args, "--out", str(tmp_path / "out")]) == 0
    for name in ("tally.csv", "counts.npz"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def test_layers_given_in_another_order_restore_their_own_states(tmp_path):
    """Arrays are stored by keypath: same-shaped layers cannot swap states when a run
    resumes with its layers reordered."""
    checkpoints = PassCheckpoints(tmp_path / "c", {"run": 1})
    first, second = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
    checkpoints.save("pass", 1, lambda: {"conv4": first, "conv5": second}, last=True)
    template = {"conv5": np.empty((2, 3), np.float32), "conv4": np.empty((2, 3), np.float32)}
    step, restored = checkpoints.restore("pass", template)
    assert step == 1 and list(restored) == ["conv5", "conv4"]
    np.testing.assert_array_equal(restored["conv4"], first)
    np.testing.assert_array_equal(restored["conv5"], second)


def test_names_that_are_not_plain_batch_numbers_are_ignored(tmp_path):
    checkpoints = PassCheckpoints(tmp_path / "c", {"run": 1})
    checkpoints.save("pass", 2, lambda: _states(1), last=True)
    (tmp_path / "c" / "pass" / "\u00b2").write_bytes(b"x")  # a digit to str.isdigit, not int
    (tmp_path / "c" / "pass" / "7").mkdir()  # a folder (an older layout's step)
    step, restored = checkpoints.restore("pass", _states(0))
    assert step == 2
    _equal(restored, _states(1))


def test_arrays_are_named_by_jax_keypaths(tmp_path):
    """The saved names are the keypaths ``jax.tree_util.tree_flatten_with_path`` gives the
    same states (written without JAX, which the CPU path does not import)."""
    import jax

    checkpoints = PassCheckpoints(tmp_path / "c", {"run": 1})
    checkpoints.save("pass", 1, lambda: _states(1), last=True)
    paths, _ = jax.tree_util.tree_flatten_with_path(_states(1))
    with np.load(tmp_path / "c" / "pass" / "1") as saved:
        assert sorted(saved.files) == sorted(jax.tree_util.keystr(p) for p, _ in paths)
        np.testing.assert_array_equal(saved["['layer']['quantile'].fill"], np.arange(3))


def test_another_layers_states_are_never_restored(tmp_path):
    """Saved states of conv4 and conv5, restored for conv5 and conv6 (same shapes): by
    position (sorted, as before keypaths) conv4's arrays would have become conv5's; by
    keypath the file does not fit and the pass starts afresh."""
    checkpoints = PassCheckpoints(tmp_path / "c", {"run": 1})
    conv4, conv5 = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
    checkpoints.save("pass", 1, lambda: {"conv4": conv4, "conv5": conv5}, last=True)
    template = {"conv5": np.empty((2, 3), np.float32), "conv6": np.empty((2, 3), np.float32)}
    with pytest.warns(UserWarning, match="does not match the pass's states"):
        assert checkpoints.restore("pass", template) == (0, None)


def test_a_checkpoint_of_the_positional_format_is_refused(tmp_path):
    """A file of the earlier format (arrays leaf0, leaf1, ... by position) is not read: the
    pass starts afresh, with a warning saying why."""
    checkpoints = PassCheckpoints(tmp_path / "c", {"run": 1})
    checkpoints.save("pass", 4, lambda: {"conv4": np.zeros(3)}, last=True)
    with open(tmp_path / "c" / "pass" / "4", "wb") as file:
        np.savez(file, leaf0=np.ones(3))
    with pytest.warns(UserWarning, match=r"c/pass/4: written by an earlier version"):
        assert checkpoints.restore("pass", {"conv4": np.zeros(3)}) == (0, None)


def test_discard_removes_only_what_an_earlier_run_recorded(tmp_path):
    saved = PassCheckpoints(tmp_path / "ck", {"run": 1}, every=1)
    saved.save("tally", 1, lambda: {"x": np.arange(3)}, last=True)
    (tmp_path / "ck" / "tally" / "notes.txt").write_text("a user's file")
    PassCheckpoints.discard(tmp_path / "ck")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "ck",
        "ck/tally",
        "ck/tally/notes.txt",
    ]


# Issue 27 (hostile inputs, second round): owned.json and the names in the folder are files
# in OUT, which someone else may have written; nothing outside the folder is removed or
# written through them.
def _victim(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"a user's file")
    return victim


@pytest.mark.parametrize(
    "entry", ["ABSOLUTE", "../victim.txt", "pass/../../victim.txt", {"a": "dict"}, "a/b/c"]
)
def test_a_forged_owned_entry_is_ignored_and_named(tmp_path, entry):
    victim = _victim(tmp_path)
    folder = tmp_path / "c"
    PassCheckpoints(folder, {"run": 1}).save("pass", 1, lambda: _states(1), last=True)
    entry = str(victim) if entry == "ABSOLUTE" else entry
    warned = re.escape(f"{folder / 'owned.json'}: ignored {entry!r}")
    (folder / "owned.json").write_text(json.dumps(["pass/1", entry]))
    with pytest.warns(UserWarning, match=warned):
        checkpoints = PassCheckpoints(folder, {"run": 2})  # another run: its states deleted
    assert not (folder / "pass" / "1").exists()
    checkpoints.remove()
    assert victim.read_bytes() == b"a user's file"
    folder.mkdir(exist_ok=True)
    (folder / "owned.json").write_text(json.dumps([entry]))
    with pytest.warns(UserWarning, match=warned):
        PassCheckpoints.discard(folder)
    assert victim.read_bytes() == b"a user's file"


def test_a_pass_folder_replaced_by_a_link_is_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "1").write_bytes(b"a user's file named like a checkpoint")
    folder = tmp_path / "c"
    PassCheckpoints(folder, {"run": 1}).save("pass", 1, lambda: _states(1), last=True)
    (folder / "pass" / "1").unlink()
    (folder / "pass").rmdir()
    (folder / "pass").symlink_to(elsewhere)
    with pytest.warns(UserWarning, match=r"owned\.json: ignored 'pass/1'"):
        checkpoints = PassCheckpoints(folder, {"run": 2})
    with pytest.raises(DissectError, match=re.escape(f"{folder / 'pass'}: a symbolic link")):
        checkpoints.save("pass", 2, lambda: _states(1), last=True)
    checkpoints.remove()
    assert (elsewhere / "1").read_bytes() == b"a user's file named like a checkpoint"


@pytest.mark.parametrize("name", ["fingerprint.json", "owned.json", "activations.sha256"])
def test_files_of_the_folder_are_replaced_never_written_through_links(tmp_path, name):
    victim = _victim(tmp_path)
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / name).symlink_to(victim)
    checkpoints = PassCheckpoints(folder, {"run": 1})
    checkpoints.check_activations("0" * 64)
    checkpoints.save("pass", 1, lambda: _states(1), last=True)
    assert victim.read_bytes() == b"a user's file"
    assert not (folder / name).is_symlink()


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_a_planted_link_at_a_checkpoints_temporary_name_is_refused(tmp_path, how):
    victim = _victim(tmp_path)
    folder = tmp_path / "c"
    checkpoints = PassCheckpoints(folder, {"run": 1})
    (folder / "pass").mkdir()
    planted = folder / "pass" / ".1.partial"
    if how == "symlink":
        planted.symlink_to(victim)
    else:
        os.link(victim, planted)
    with pytest.raises(DissectError, match=re.escape(f"{planted}: cannot write the checkpoint")):
        checkpoints.save("pass", 1, lambda: _states(1), last=True)
    assert victim.read_bytes() == b"a user's file"


def test_a_killed_saves_temporary_file_is_replaced(tmp_path):
    folder = tmp_path / "c"
    checkpoints = PassCheckpoints(folder, {"run": 1})
    checkpoints.save("pass", 1, lambda: _states(1), last=True)
    (folder / "pass" / ".2.partial").write_bytes(b"half a checkpoint")
    checkpoints._own("pass/.2.partial")  # recorded before it was made, as save does
    resumed = PassCheckpoints(folder, {"run": 1})
    resumed.save("pass", 2, lambda: _states(2), last=True)
    assert sorted(p.name for p in (folder / "pass").iterdir()) == ["2"]
    _equal(resumed.restore("pass", _states(0))[1], _states(2))


def test_remove_keeps_temporary_names_it_cannot_prove_its_own(tmp_path, capsys):
    """remove() deleted a file named .owned.json.partial, a name replace_file never makes
    (a user's, or nobody's); a real leftover of replace_file is named, and both are kept."""
    folder = tmp_path / "c"
    checkpoints = PassCheckpoints(folder, {"run": 1})
    checkpoints.save("pass", 1, lambda: _states(1), last=True)
    for name in (".owned.json.partial", ".owned.json.k1ll3d_x.partial"):
        (folder / name).write_text("kept")
    checkpoints.remove()
    assert ".owned.json.k1ll3d_x.partial left by an interrupted write" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == [
        ".owned.json.k1ll3d_x.partial",
        ".owned.json.partial",
    ]


def test_a_linked_checkpoint_folder_is_refused_with_its_name(probe, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "fingerprint.json").write_text("a user's file")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".checkpoint").symlink_to(elsewhere)
    np.save(tmp_path / "f.npy", dyadic_features(len(probe.planes), (4, 4, 3)))
    args = ["dissect", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
            "--no-progress", "--no-report", "--out", str(out), "--checkpoint-every", "1"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"jaxdissect: error: {out / '.checkpoint'}: a symbolic link" in err, err
    assert sorted(p.name for p in elsewhere.iterdir()) == ["fingerprint.json"]
    assert (elsewhere / "fingerprint.json").read_text() == "a user's file"
    with pytest.raises(DissectError, match=re.escape(f"{out / '.checkpoint'}: a symbolic link")):
        PassCheckpoints.discard(out / ".checkpoint")


def test_a_file_where_the_checkpoint_folder_goes_is_refused_with_its_name(tmp_path):
    (tmp_path / "c").write_text("a user's file")
    with pytest.raises(DissectError, match=re.escape(f"{tmp_path / 'c'}: not a folder")):
        PassCheckpoints(tmp_path / "c", {"run": 1})
    assert (tmp_path / "c").read_text() == "a user's file"
