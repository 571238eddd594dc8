"""Output sets (``jaxdissect.outdir``): a reader of OUT's names sees one complete set at
every instant of publishing, and only files jaxdissect recorded as its own are deleted."""

import json
import os
import re
import shutil

import pytest

from jaxdissect import outdir
from jaxdissect.errors import DissectError
from jaxdissect.outdir import (
    MANIFEST,
    STORE,
    current_set,
    discard,
    locked,
    new_set,
    publish,
)

OLD = {
    "tally.csv": b"old tally",
    "results.json": b"old results",
    "report.html": b"old report",
    "report/unit-0001.jpg": b"old strip",
}
NEW = {"tally.csv": b"new tally", "results.json": b"new results"}  # as with --no-report
NAMES = ("tally.csv", "results.json", "report.html", "report/unit-0001.jpg")


def _publish(out, files, kind="dissect"):
    with locked(out):
        folder = new_set(out, kind)
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        publish(folder, out)


def _view(out):
    """What a reader of OUT's names sees (None: no file)."""
    return {name: (out / name).read_bytes() if (out / name).is_file() else None for name in NAMES}


def _expected(files):
    return {name: files.get(name) for name in NAMES}


def _operations():
    return ("replace", "rename", "symlink", "unlink", "rmdir", "mkdir")


class Interrupt(BaseException):
    pass


def _interrupt_at(monkeypatch, index):
    """Makes the ``index``-th file-system change raise, as a kill at that instant would end
    the process there."""
    count = [0]
    for name in _operations():
        original = getattr(os, name)

        def wrapped(*args, _original=original, **kwargs):
            count[0] += 1
            if count[0] == index:
                raise Interrupt
            return _original(*args, **kwargs)

        monkeypatch.setattr(os, name, wrapped)
    return count


def test_a_reader_sees_the_old_set_or_the_new_one_at_every_instant(tmp_path, monkeypatch):
    """A kill at each file-system change of publishing leaves OUT's names resolving into
    the previous complete set or the new complete one, never a mixture; the next run
    publishes whole and leaves nothing behind."""
    reference = tmp_path / "reference"
    _publish(reference, OLD)
    counter = _interrupt_at(monkeypatch, 0)  # counts only
    _publish(reference, NEW)
    monkeypatch.undo()
    steps = counter[0]
    assert steps > 5
    seen = set()
    for index in range(1, steps + 1):
        out = tmp_path / f"out{index}"
        _publish(out, OLD)
        _interrupt_at(monkeypatch, index)
        with pytest.raises(Interrupt):
            _publish(out, NEW)
        monkeypatch.undo()
        view = _view(out)
        assert view in (_expected(OLD), _expected(NEW)), index
        seen.add("new" if view == _expected(NEW) else "old")
        _publish(out, NEW)
        assert _view(out) == _expected(NEW)
        store = out / STORE
        folder = current_set(out, "dissect")
        assert sorted(p.name for p in store.iterdir()) == ["dissect", folder.name, "journal.json"]
        assert sorted(p.name for p in out.iterdir()) == [".jaxdissect", ".lock", *sorted(NEW)]
    assert seen == {"old", "new"}  # the interruptions fell on both sides of the switch


def test_the_manifest_tells_a_complete_set(tmp_path):
    _publish(tmp_path / "out", OLD)
    folder = current_set(tmp_path / "out", "dissect")
    manifest = json.loads((folder / MANIFEST).read_text())["files"]
    assert sorted(manifest) == sorted(OLD)
    assert manifest["report/unit-0001.jpg"]["size"] == len(OLD["report/unit-0001.jpg"])
    # A set folder still being written has no manifest, and is not a current set.
    with locked(tmp_path / "out"):
        writing = new_set(tmp_path / "out", "dissect")
        assert not (writing / MANIFEST).exists()
        assert current_set(tmp_path / "out", "dissect") == folder


def test_files_the_user_put_there_are_never_deleted(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "download.partial").write_bytes(b"mine")
    (out / "mine.partial").write_bytes(b"mine")
    (out / "report").mkdir()
    (out / "report" / "notes.txt").write_bytes(b"my notes")
    _publish(out, OLD)
    assert (out / "data" / "download.partial").read_bytes() == b"mine"
    assert (out / "mine.partial").read_bytes() == b"mine"
    moved = out / STORE / "displaced.1" / "report" / "notes.txt"
    assert moved.read_bytes() == b"my notes"  # moved out of the set's way, not deleted
    assert f"to {out / STORE / 'displaced.1'}" in capsys.readouterr().err
    assert _view(out) == _expected(OLD)

    # A file added to a published set's folder outlives the set, kept where it was put.
    (out / "report" / "added.txt").write_bytes(b"added later")
    old_folder = current_set(out, "dissect")
    _publish(out, NEW)
    assert (old_folder / "report" / "added.txt").read_bytes() == b"added later"
    assert not (old_folder / "tally.csv").exists()  # the set's own files are gone
    assert f"kept {old_folder}" in capsys.readouterr().err
    assert _view(out) == _expected(NEW)


def test_an_earlier_versions_plain_files_are_moved_aside(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name, data in OLD.items():  # as the previous version published them
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(data)
    (out / "fingerprint.json").write_bytes(b"{}")
    _publish(out, NEW)
    assert _view(out) == _expected(NEW)  # no report.html of the earlier run beside the new set
    aside = out / STORE / "displaced.1"
    assert (aside / "report.html").read_bytes() == OLD["report.html"]
    assert (aside / "fingerprint.json").read_bytes() == b"{}"
    assert "moved" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["missing", "elsewhere"])
def test_a_link_at_the_next_displaced_name_is_passed_over(tmp_path, capsys, target):
    """A dangling OUT/.jaxdissect/displaced.1 link made _displace fail (FileExistsError,
    a traceback from Python); one to a folder had the user's files moved through it."""
    out = tmp_path / "out"
    (out / STORE).mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / STORE / "displaced.1").symlink_to(tmp_path / target)
    (out / "tally.csv").write_bytes(b"mine")
    _publish(out, NEW)
    assert (out / STORE / "displaced.2" / "tally.csv").read_bytes() == b"mine"
    assert os.readlink(out / STORE / "displaced.1") == str(tmp_path / target)
    assert list(elsewhere.iterdir()) == []
    assert _view(out) == _expected(NEW)


def test_a_killed_journal_write_is_named_never_removed(tmp_path, capsys):
    """A journal.json temporary left by a kill (replace_file's name) was kept silently, for
    ever; nothing proves it jaxdissect's, so it is named on stderr and kept."""
    out = tmp_path / "out"
    (out / STORE).mkdir(parents=True)
    left = out / STORE / ".journal.json.k1ll3d_x.partial"
    left.write_text("{")
    _publish(out, NEW)
    assert f"{left.name} left by an interrupted write of journal.json" in capsys.readouterr().err
    assert left.read_text() == "{"
    assert _view(out) == _expected(NEW)


def test_sets_of_two_kinds_share_out_and_a_name_of_one_is_not_taken_by_the_other(tmp_path):
    out = tmp_path / "out"
    _publish(out, NEW)
    _publish(out, {"formulas.csv": b"f", "formulas.json": b"{}", "formulas.html": b"h"}, "formulas")
    _publish(out, {"formulas.csv": b"g", "formulas.json": b"{}"}, "formulas")  # no page
    assert (out / "formulas.csv").read_bytes() == b"g"
    assert not (out / "formulas.html").exists() and not (out / "formulas.html").is_symlink()
    assert _view(out) == _expected(NEW)
    with pytest.raises(outdir.DissectError, match="already one of the formulas outputs"):
        _publish(out, {"formulas.csv": b"x"}, "dissect")
    assert (out / "formulas.csv").read_bytes() == b"g"


def test_a_set_never_completed_is_cleared_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    _publish(out, OLD)
    with locked(out):
        abandoned = new_set(out, "dissect")  # as a run killed while writing leaves it
        (abandoned / "tally.csv").write_bytes(b"half")
    _publish(out, NEW)
    assert not abandoned.exists()
    assert _view(out) == _expected(NEW)


def test_a_folder_in_the_store_that_is_not_recorded_is_left_alone(tmp_path):
    out = tmp_path / "out"
    _publish(out, OLD)
    stranger = out / STORE / "dissect.9"
    stranger.mkdir()
    (stranger / "x").write_bytes(b"not ours")
    journal = json.loads((out / STORE / "journal.json").read_text())
    journal["next"] = 9  # the next set would take that name
    (out / STORE / "journal.json").write_text(json.dumps(journal))
    _publish(out, NEW)
    assert (stranger / "x").read_bytes() == b"not ours"
    assert current_set(out, "dissect").name == "dissect.10"
    shutil.rmtree(stranger)


@pytest.mark.parametrize("published", ["dissect.1", 5, {"dissect.1": True}])
def test_a_journal_whose_published_is_not_a_list_is_named(tmp_path, published):
    """An AttributeError (str.append) or TypeError (5 in ...) escaped before."""
    out = tmp_path / "out"
    _publish(out, OLD)
    path = out / STORE / "journal.json"
    journal = json.loads(path.read_text())
    journal["published"] = published
    path.write_text(json.dumps(journal))
    with pytest.raises(outdir.DissectError, match=f"{path}: not a journal of jaxdissect's"):
        _publish(out, NEW)
    assert _view(out) == _expected(OLD)


def test_a_published_set_is_never_removed_whole(tmp_path):
    """Even with its manifest gone, a set that was published is removed file by file only:
    a file someone put into it stays."""
    out = tmp_path / "out"
    _publish(out, OLD)
    folder = current_set(out, "dissect")
    (out / "report" / "mine.txt").write_bytes(b"mine")
    (folder / MANIFEST).unlink()
    _publish(out, NEW)
    assert (folder / "report" / "mine.txt").read_bytes() == b"mine"
    assert _view(out) == _expected(NEW)


# Issue 27 (hostile inputs, second round): nothing in OUT leads a removal or a write outside
# it. ``victim`` lies beside OUT: ``OUT/.jaxdissect/../../victim`` names it.
def _victim(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_bytes(b"a user's file")
    return victim


def _forge_journal(out, change):
    path = out / STORE / "journal.json"
    journal = json.loads(path.read_text())
    change(journal)
    path.write_text(json.dumps(journal))


@pytest.mark.parametrize("entry", ["../../victim", "ABSOLUTE", "..", "displaced.1", "dissect.x"])
def test_a_forged_journal_never_removes_what_it_names(tmp_path, capsys, entry):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    (out / "tally.csv").parent.mkdir()
    (out / "tally.csv").write_bytes(b"a user's tally")  # moved into displaced.1
    _publish(out, OLD)
    entry = str(victim) if entry == "ABSOLUTE" else entry
    _forge_journal(out, lambda journal: journal["sets"].update({entry: "dissect"}))
    with pytest.raises(DissectError) as error:
        _publish(out, NEW)
    message = str(error.value)
    assert f"{out / STORE / 'journal.json'}: sets entry {entry!r} is not" in message
    assert (victim / "precious.txt").read_bytes() == b"a user's file"
    assert (out / STORE / "displaced.1" / "tally.csv").read_bytes() == b"a user's tally"
    assert _view(out) == _expected(OLD)  # nothing of the published set was touched either


@pytest.mark.parametrize("entry", ["../victim", "/victim", "report/../.."])
def test_a_forged_journal_link_entry_is_refused(tmp_path, entry):
    out = tmp_path / "out"
    _publish(out, OLD)
    _forge_journal(out, lambda journal: journal["links"].update({entry: "dissect"}))
    with pytest.raises(DissectError, match=rf"journal\.json: links entry '{re.escape(entry)}'"):
        _publish(out, NEW)


def test_discard_refuses_a_forged_journal(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    with locked(out):
        folder = new_set(out, "dissect")
        _forge_journal(out, lambda journal: journal["sets"].update({"../../victim": "dissect"}))
        with pytest.raises(DissectError, match=r"journal\.json: sets entry '\.\./\.\./victim'"):
            discard(folder)
    assert (victim / "precious.txt").read_bytes() == b"a user's file"


def test_a_set_subfolder_replaced_by_a_link_is_not_followed_when_removing(tmp_path, capsys):
    """The manifest lists report/unit-0001.jpg; report/ became a link to the user's folder,
    which holds a file of that name and size: it stays."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "unit-0001.jpg").write_bytes(b"old strip")  # the recorded size
    out = tmp_path / "out"
    _publish(out, OLD)
    folder = current_set(out, "dissect")
    shutil.rmtree(folder / "report")
    (folder / "report").symlink_to(victim)
    _publish(out, NEW)
    assert (victim / "unit-0001.jpg").read_bytes() == b"old strip"
    assert _view(out) == _expected(NEW)


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_the_lock_is_never_written_through_a_planted_link(tmp_path, how):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"a user's file")
    out = tmp_path / "out"
    out.mkdir()
    if how == "symlink":
        (out / ".lock").symlink_to(victim)
    else:
        os.link(victim, out / ".lock")
    with pytest.raises(DissectError, match=re.escape(f"{out / '.lock'}: ")):
        with locked(out):
            pass
    assert victim.read_bytes() == b"a user's file"


def test_the_journal_is_never_written_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"a user's file")
    out = tmp_path / "out"
    (out / STORE).mkdir(parents=True)
    (out / STORE / ".journal.json.partial").symlink_to(victim)  # the name it was written to
    (out / STORE / "journal.json").symlink_to(tmp_path / "absent.json")
    _publish(out, OLD)
    assert victim.read_bytes() == b"a user's file"
    assert not (tmp_path / "absent.json").exists()  # the link was replaced, not followed
    assert _view(out) == _expected(OLD)


def test_a_linked_store_is_refused_with_its_name(tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / STORE).symlink_to(victim)
    with pytest.raises(DissectError, match=re.escape(f"{out / STORE}: not a folder")):
        _publish(out, NEW)
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]


def test_a_removed_lock_goes_with_its_block_and_a_replaced_one_is_not_taken(tmp_path):
    """held_lock(remove=True) (fetch's DIR lock) leaves no file behind; a process that
    opened the file before it was removed is refused once it holds the lock."""
    from jaxdissect.outdir import _still_at, held_lock

    lock = tmp_path / ".x.lock"
    with held_lock(lock, "busy {pid}", "cannot open", remove=True):
        assert lock.read_text() == f"{os.getpid()}\n"
    assert not lock.exists()
    lock.write_text("")
    with open(lock) as opened_before:
        lock.unlink()
        lock.write_text("")  # another process's new lock file at the same path
        assert not _still_at(opened_before, lock)
    with open(lock) as current:
        assert _still_at(current, lock)


@pytest.mark.parametrize("file", ["journal", "manifest"])
def test_a_json_file_nested_too_deeply_is_named_not_a_recursion_error(tmp_path, file):
    """json's RecursionError on a journal or manifest nested 200,000 deep escaped the
    library as a traceback."""
    out = tmp_path / "out"
    _publish(out, OLD)
    deep = "[" * 200_000 + "]" * 200_000
    if file == "journal":
        path = out / STORE / "journal.json"
        path.write_text(deep)
        with pytest.raises(DissectError, match=re.escape(f"{path}: unreadable")):
            _publish(out, NEW)
        assert _view(out) == _expected(OLD)
    else:  # the previous set's: it is not removed file by file, and the new set publishes
        path = current_set(out, "dissect") / MANIFEST
        path.write_text(deep)
        _publish(out, NEW)
        assert _view(out) == _expected(NEW)


def test_notices_naming_a_path_with_a_line_break_stay_one_line(tmp_path, capsys):
    out = tmp_path / "a\nb"
    out.mkdir()
    (out / "report.html").write_bytes(b"mine")  # a user's file at one of the set's names
    _publish(out, {**NEW, "report.html": b"new"})
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a\\nb" in err and "moved report.html" in err, err


def test_a_set_file_rewritten_to_its_recorded_size_is_kept(tmp_path, capsys):
    """Issue 27: a published set's file was removed when its size was the manifest's, so a
    user's edit of the same length (a figure retouched, a byte fixed) was deleted."""
    out = tmp_path / "out"
    _publish(out, OLD)
    old_folder = current_set(out, "dissect")
    (old_folder / "tally.csv").write_bytes(b"my tally!")  # as long as b"old tally"
    _publish(out, NEW)
    assert (old_folder / "tally.csv").read_bytes() == b"my tally!"
    assert not (old_folder / "results.json").exists()
    assert f"kept {old_folder}" in capsys.readouterr().err
