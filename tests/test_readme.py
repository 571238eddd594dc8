"""The README's examples, run as written: the Python example, and every
``python -m jaxdissect`` command line of it that runs in seconds on a small probe
(placeholders such as DIR and OUT replaced by test folders, optional [...] parts left out)."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from jaxdissect.cli import main

README = Path(__file__).parent.parent / "README.md"
# Lines whose placeholders need files a test cannot make quickly (weights, image arrays), a
# server (fetch: tests/test_fetch.py) or a fresh install (precompile: tests/test_install.py).
NEEDS_MORE = ("--weights", "--model", "figure", "fetch ", "precompile")


def _probe(tmp_path: Path) -> tuple[Path, Path]:
    from jaxdissect.data.synthetic import world

    world.write_probe(tmp_path / "probe", 16, 0, world.WorldConfig(image_size=32), False)
    np.save(tmp_path / "features.npy", np.random.default_rng(0).random((16, 4, 4, 6), np.float32))
    return tmp_path / "probe", tmp_path / "features.npy"


def test_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no Python example"
    _probe(tmp_path)
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert "unique detectors" in capsys.readouterr().out
    assert (tmp_path / "out" / "tally.csv").is_file()
    assert (tmp_path / "out" / "report.html").is_file()


def test_statistic_example_runs_as_written():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if "quantile_statistic" in b]
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["thresholds"].dtype == np.float32


def _command_lines() -> list[str]:
    """The README's indented ``python -m jaxdissect`` lines, continuation lines joined."""
    text = README.read_text().replace("\\\n", " ")
    lines = re.findall(r"^    python -m jaxdissect (.+)$", text, re.M)
    return [
        re.sub(r"\s+", " ", re.sub(r"\[[^\[\]]*\]", "", line.split("#")[0])).strip()
        for line in lines
    ]


def test_the_readme_has_command_lines():
    assert len(_command_lines()) >= 4


@pytest.mark.parametrize(
    "line", [line for line in _command_lines() if not any(x in line for x in NEEDS_MORE)]
)
def test_command_line_runs(line, tmp_path):
    dataset, features = _probe(tmp_path)
    out = tmp_path / "out"
    if line.startswith(("summarize", "report")):  # these read a finished dissection
        dissect = [
            "dissect",
            "--dataset",
            str(dataset),
            "--features",
            str(features),
            "--out",
            str(out),
        ]
        assert main([*dissect, "--no-progress"]) == 0
    names = {
        "DIR": str(dataset),
        "FEATS.npy": str(features),
        "OUT": str(out),
        "TALLY.csv": str(out / "tally.csv"),
        "2000": "12",  # images of a synthetic probe: seconds, not minutes
    }
    args = [names.get(word, word) for word in shlex.split(line)]
    if args[:2] == ["synthetic", "probe"]:
        args[args.index("--out") + 1] = str(tmp_path / "new-probe")
    assert main(args) == 0
