"""The README and the docs site, as a reader meets them: every code example runs as written,
every relative link resolves, and the API reference covers every public name.

Examples are fenced blocks. A ``python`` block is executed in a folder holding a small
synthetic probe (``probe/``, 16 images) and features for it (``features.npy``). A ``sh``
block's ``python -m jaxdissect`` lines run through the CLI (placeholders such as DIR and OUT
replaced by test folders, optional [...] parts left out); a block with any other line (a
download, an install, minutes of training) carries a ``<!-- not run by the tests: why -->``
line just above it, and this file checks that it does. Other fences (``text``, ``mermaid``)
are figures, not examples.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxdissect
from jaxdissect.cli import main

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)]
NOT_RUN = re.compile(r"<!-- not run by the tests: (.+?) -->")
# Command lines whose placeholders need files a test cannot make quickly (weights, image
# arrays), a server (fetch: tests/data/test_fetch.py) or a fresh install (precompile:
# tests/test_install.py).
NEEDS_MORE = ("--weights", "--model", "fetch ", "precompile")


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """The page's fenced blocks: (language, code, why it is not run or None)."""
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", page.read_text(), re.S | re.M):
        before = page.read_text()[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.fullmatch(before.strip())
        found.append((match.group(1), match.group(2), reason.group(1) if reason else None))
    return found


def _commands(code: str) -> list[str]:
    """A sh block's lines, continuations joined, comments and optional [...] parts cut."""
    lines = code.replace("\\\n", " ").splitlines()
    cleaned = [re.sub(r"\[[^\[\]]*\]", "", line.split("#")[0]) for line in lines]
    return [re.sub(r"\s+", " ", line).strip() for line in cleaned if line.strip()]


def _runnable(command: str) -> bool:
    return command.startswith("python -m jaxdissect ") and not any(x in command for x in NEEDS_MORE)


PYTHON = [
    pytest.param(page, code, id=f"{_name(page)}:{i}")
    for page in PAGES
    for i, (language, code, reason) in enumerate(_blocks(page))
    if language == "python" and reason is None
]
COMMANDS = [
    pytest.param(command, id=f"{_name(page)}:{command[:60]}")
    for page in PAGES
    for language, code, _ in _blocks(page)
    if language == "sh"
    for command in _commands(code)
    if _runnable(command)
]


def _probe(folder: Path) -> tuple[Path, Path]:
    from jaxdissect.data.synthetic import world

    world.write_probe(folder / "probe", 16, 0, world.WorldConfig(image_size=32), False)
    np.save(folder / "features.npy", np.random.default_rng(0).random((16, 4, 4, 6), np.float32))
    return folder / "probe", folder / "features.npy"


def test_every_block_is_run_or_says_why_not():
    for page in PAGES:
        for language, code, reason in _blocks(page):
            if language == "sh" and reason is None:
                skipped = [c for c in _commands(code) if not _runnable(c)]
                assert not skipped, f"{_name(page)}: {skipped} not run and no reason given"
            if reason is not None:
                assert len(reason) > 20, f"{_name(page)}: say why the block is not run"


def test_the_pages_have_examples():
    assert len(PYTHON) >= 4 and len(COMMANDS) >= 8


@pytest.mark.parametrize(("page", "code"), PYTHON)
def test_python_example_runs_as_written(page, code, tmp_path, monkeypatch, capsys):
    _probe(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    exec(compile(code, str(page), "exec"), namespace)
    out = capsys.readouterr().out
    if "jd.dissect(" in code:  # what the text says the example gives
        assert "unique detectors" in out
        outputs = [p.parent for p in tmp_path.rglob("tally.csv")]
        assert outputs and all((p / "report.html").is_file() for p in outputs)
    if "quantile_statistic" in code:
        assert namespace["thresholds"].dtype == np.float32


@pytest.mark.parametrize("line", COMMANDS)
def test_command_line_runs(line, tmp_path, monkeypatch):
    dataset, features = _probe(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    if line.startswith(("python -m jaxdissect summarize", "python -m jaxdissect report")):
        dissect = ["dissect", "--dataset", str(dataset), "--features", str(features)]
        assert main([*dissect, "--out", str(out), "--no-progress"]) == 0
    names = {
        "DIR": str(dataset),
        "FEATS.npy": str(features),
        "OUT": str(out),
        "TALLY.csv": str(out / "tally.csv"),
        "2000": "12",  # images of a synthetic probe: seconds, not minutes
    }
    args = [names.get(word, word) for word in shlex.split(line)][3:]  # after python -m jaxdissect
    if args[0] == "synthetic":  # a new folder, never the committed docs/synthetic-world.png
        args[args.index("--out") + 1] = str(tmp_path / "new")
    if args[0] == "demo":
        args += ["--images", "60"]  # its 600 images take 10 s; 60 show the same
    assert main(args) == 0


def _links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


def _resolve(page: Path, target: str) -> Path:
    path = (page.parent / target.split("#")[0]).resolve()
    # The docs build serves the studies' figures from experiments/results/ at results/
    # (docs/hooks/results_images.py).
    if not path.exists() and path.is_relative_to(DOCS / "results"):
        path = ROOT / "experiments" / path.relative_to(DOCS)
    return path


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in _links(page):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if not _resolve(page, target).exists():
                broken.append(f"{_name(page)}: {target}")
    assert not broken
    assert sum(len(_links(page)) for page in PAGES) > 50


def test_the_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_api_reference_documents_every_public_name():
    api = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: jaxdissect\.(\w+)$", api, re.M))
    assert documented == set(jaxdissect.__all__)


def test_every_page_is_in_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text()
    listed = set(re.findall(r"^\s*- (?:[^:\n]+: )?(\S+\.md)$", config, re.M))
    assert listed == {p.relative_to(DOCS).as_posix() for p in PAGES[1:]}


def test_the_site_builds_strictly_and_offline(tmp_path):
    """``make docs`` as pytest sees it: warnings (a broken link or anchor, an API name that
    does not resolve) fail the build."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
    built = subprocess.run(
        [*command, "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert all(f'id="jaxdissect.{name}"' in api for name in jaxdissect.__all__)
    assert (tmp_path / "site" / "results" / "training_dynamics" / "unique_detectors.png").is_file()
