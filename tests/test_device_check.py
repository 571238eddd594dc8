"""The accelerator check runs end to end at toy sizes on the CPU, so that it is ready the
day a GPU is lent (bench/device_check.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

from bench import device_check

ROOT = Path(__file__).resolve().parent.parent
SMOKE = """
import sys
from bench import device_check
code = device_check.main(sys.argv[1:])
print("parent imported jax:", "jax" in sys.modules)
sys.exit(code)
"""


def test_device_check_smoke_runs_every_part_without_jax_in_the_parent(tmp_path):
    out = tmp_path / "check.txt"
    args = ["--smoke", "--out", str(out), "--workdir", str(tmp_path / "w")]
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    done = subprocess.run(
        [sys.executable, "-c", SMOKE, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    text = out.read_text()
    assert done.returncode == 0, done.stderr + text
    # A JAX backend in the parent would hold most of a GPU's memory while the parts run.
    assert "parent imported jax: False" in done.stdout
    lines = text.splitlines()
    assert lines[0].startswith("# python -m bench.device_check --smoke")
    assert "device cpu (cpu, 1 device(s)); jax " in lines[1]
    for part in "abcde":
        assert sum(line.startswith(f"({part})") for line in lines) == 1, text
    assert "xla and cpu tally.csv byte-identical" in text
    # On the CPU the stacked forward is lax.map, whose bits equal one model's.
    assert "(e) 3 resnet20-cifar10 checkpoints in one pass (lax.map)" in text
    assert "checkpoint s2's tally.csv byte-identical to its own run's" in text
    assert "FAILED" not in text and "TIMED OUT" not in text


def test_a_part_past_the_deadline_times_out_and_the_file_keeps_every_part(tmp_path, monkeypatch):
    out = tmp_path / "check.txt"
    seen = []

    def first(work, pick, env, deadline):
        return ["(a) done"]

    def slow(work, pick, env, deadline):
        seen.append(out.read_text())  # written after the part before
        device_check._python(["-c", "import time; time.sleep(60)"], env, deadline)

    def late(work, pick, env, deadline):
        device_check._python(["-c", "pass"], env, deadline)

    monkeypatch.setattr(device_check, "PARTS", (first, slow, late))
    monkeypatch.setattr(device_check, "_device", lambda env, deadline: "test device")
    start = time.monotonic()
    code = device_check.main(["--smoke", "--out", str(out), "--deadline-s", "3"])
    # 3 s of deadline, a child's start and the parts' own work: far less than the sleep's 60.
    assert time.monotonic() - start < 30
    assert code == 1
    assert seen[0].splitlines()[2:] == ["(a) done"]
    lines = out.read_text().splitlines()
    assert "device test device" in lines[1]
    assert lines[2] == "(a) done"
    assert lines[3].startswith("slow: TIMED OUT after ")
    assert lines[4].startswith("late: TIMED OUT after ")
    assert len(lines) == 5


def test_without_git_the_commit_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no git on it
    assert device_check._commit() == "unknown"
