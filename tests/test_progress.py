"""Progress bars: tqdm's live bar on a terminal, a few whole lines in a log."""

import io
import re
from pathlib import Path

import numpy as np
from tqdm import std

from jaxdissect import progress
from jaxdissect.cli import main


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_into_a_log_writes_a_few_lines_not_frames():
    log = io.StringIO()
    for _ in progress.progress_bar(range(20000), file=log, desc="work", unit="it"):
        pass
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3  # the first frame, perhaps one more, and the last
    assert "20000/20000" in lines[-1] and lines[-1].startswith("work")


def test_a_bar_into_a_log_writes_a_line_per_interval(monkeypatch):
    clock = iter(range(0, 10**6, 7))  # every reading of the clock 7 s after the last
    monkeypatch.setattr(std, "time", lambda: next(clock))
    log = io.StringIO()
    bar = progress.progress_bar(total=100, file=log, mininterval=30, maxinterval=30, miniters=1)
    for _ in range(100):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    # 100 updates 7 s apart: a line at most every 30 s, far fewer than the updates.
    assert 10 <= len(lines) <= 30, len(lines)
    assert all("\r" not in line for line in lines)


def test_a_bar_on_a_terminal_is_tqdms_own():
    screen = _Terminal()
    bar = progress.progress_bar(range(5), file=screen, mininterval=0, miniters=1)
    assert progress.progress_bar(file=_Terminal()).mininterval == 0.1  # tqdm's default
    for _ in bar:
        pass
    assert screen.getvalue().count("\r") >= 5  # redrawn in place


def test_every_bar_is_made_by_progress_bar():
    root = Path(__file__).parents[1]
    for folder in ("jaxdissect", "train", "experiments"):
        for path in (root / folder).rglob("*.py"):
            if path.name == "progress.py":
                continue
            assert not re.search(r"^\s*(from tqdm|import tqdm)", path.read_text(), re.M), path


def test_a_dissection_logged_to_a_file_has_no_carriage_returns(probe, tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.random.default_rng(0).normal(size=(12, 4, 4, 3)))
    code = main(
        ["dissect", "--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy"),
         "--out", str(tmp_path / "out"), "--no-report", "--batch-size", "1"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert "\r" not in err
    assert len(err.splitlines()) < 30, err
