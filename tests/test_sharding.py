"""The data axis shards over a Mesh: 8 fake CPU devices give exactly one device's results."""

import os
import subprocess
import sys

import numpy as np
import pytest
from probe_fixture import dyadic_features

from jaxdissect.cli import main


def _run_with_devices(devices, args, env_extra):
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        **env_extra,
    )
    code = (
        "import sys, jax; from jaxdissect.cli import main; "
        f"assert jax.device_count() == {devices}; sys.exit(main(sys.argv[1:]))"
    )
    subprocess.run([sys.executable, "-c", code, *args], env=env, check=True, capture_output=True)


def _dissect_args(probe, tmp_path):
    """The CLI arguments shared by these tests, on 12 images of dyadic features."""
    np.save(tmp_path / "f.npy", dyadic_features(12, (4, 4, 6)))
    paths = ["--dataset", str(probe.directory), "--features", str(tmp_path / "f.npy")]
    return ["dissect", *paths, "--quantile", "0.05", "--no-progress"]


def test_eight_devices_equal_one(probe, tmp_path):
    common = _dissect_args(probe, tmp_path)
    assert main([*common, "--out", str(tmp_path / "one"), "--batch-size", "5"]) == 0
    _run_with_devices(  # the sharded XLA kernel (one process on CPU would pick "cpu")
        8,
        [*common, "--out", str(tmp_path / "eight"), "--batch-size", "8", "--kernel", "xla"],
        {"JAXDISSECT_CACHE": str(tmp_path / "cache8")},
    )
    for name in ("tally.csv", "results.json"):  # also different batch sizes (5 and 8)
        one = (tmp_path / "one" / name).read_text()
        eight = (tmp_path / "eight" / name).read_text()
        assert one == eight
    one, eight = (
        np.load(tmp_path / "one" / "counts.npz"),
        np.load(tmp_path / "eight" / "counts.npz"),
    )
    for name in ("thresholds", "label_area", "intersection", "unit_area"):
        np.testing.assert_array_equal(one[name], eight[name])


def test_same_command_twice_gives_identical_files(probe, tmp_path, capsys):
    common = _dissect_args(probe, tmp_path)
    for run in ("a", "b"):
        assert main([*common, "--out", str(tmp_path / run)]) == 0
    assert "peak memory: host" in capsys.readouterr().out
    for name in ("tally.csv", "results.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_two_processes_give_the_same_tally(probe, tmp_path):
    """jax.distributed on localhost: each process reads its rows of each batch, the states
    are reduced across processes (gloo), and process 0 writes what one process writes."""
    import socket

    common = [
        *_dissect_args(probe, tmp_path),
        "--batch-size",
        "4",
        "--no-report",
    ]
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    code = "import sys; from jaxdissect.cli import main; sys.exit(main(sys.argv[1:]))"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                *common,
                "--out",
                str(tmp_path / "multi"),
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    single = (tmp_path / "single" / "tally.csv").read_bytes()
    assert (tmp_path / "multi" / "tally.csv").read_bytes() == single


@pytest.mark.parametrize(
    "killed_in", ["thresholds-cpu", "thresholds-xla", "tally-cpu", "tally-xla"]
)
def test_killed_dissection_resumes_to_identical_files(probe, tmp_path, killed_in):
    import signal
    import time

    common = [
        *_dissect_args(probe, tmp_path),
        "--batch-size",
        "1",
        "--checkpoint-every",
        "1",
        "--no-report",
        "--kernel",
        killed_in.split("-")[1],
    ]
    assert main([*common, "--out", str(tmp_path / "whole")]) == 0
    assert not (tmp_path / "whole" / ".checkpoint").exists()  # removed once written
    code = "import sys; from jaxdissect.cli import main; sys.exit(main(sys.argv[1:]))"
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *common, "--out", str(out)],
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        steps = [
            p.name for p in (out / ".checkpoint" / killed_in).glob("[0-9]*") if p.name.isdigit()
        ]
        if steps and max(int(s) for s in steps) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "results.json").exists() and not (out / "tally.csv").exists()
    assert main([*common, "--out", str(out)]) == 0
    for name in ("tally.csv", "results.json"):
        whole = (tmp_path / "whole" / name).read_text().replace(str(tmp_path / "whole"), "OUT")
        resumed = (out / name).read_text().replace(str(out), "OUT")
        assert whole == resumed


def _peak_memory_of_dissection(probe_dir, features, out):
    """Peak resident bytes of a CLI dissection in a fresh process (/proc's VmHWM, which
    starts afresh at exec; ru_maxrss would count the forked copy of this test process)."""
    code = (
        "import re, sys; from jaxdissect.cli import main; code = main(sys.argv[1:]); "
        "status = open('/proc/self/status').read(); "
        "print('PEAK', int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) * 1024); "
        "sys.exit(code)"
    )
    args = ["dissect", "--dataset", str(probe_dir), "--features", str(features)]
    args += ["--out", str(out), "--batch-size", "2", "--no-progress", "--no-report"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        # glibc otherwise keeps freed 16 MB batches in its heap after raising its mmap
        # threshold, and the peak then measures that retention (0.1-0.4 GB) more than use.
        env=dict(os.environ, JAX_PLATFORMS="cpu", MALLOC_MMAP_THRESHOLD_=str(2**20)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "results.json").is_file()
    return int(result.stdout.split("PEAK")[-1])


def test_features_larger_than_the_memory_used(tmp_path):
    """A 1.68 GB features file (200 images of 64x64x512) dissects in little more memory than
    a tenth of it (20 images): activations are read batch by batch and at most a few steps
    are queued, so they are never held. The small run also pays the one-time costs
    (compiling the kernels), so the difference isolates what grows with the data."""
    from jaxdissect.data.synthetic import world

    peaks, sizes = [], []
    for count in (20, 200):
        probe_dir = tmp_path / f"probe{count}"
        world.write_probe(probe_dir, count, 0, world.WorldConfig(image_size=32), progress=False)
        path = tmp_path / f"acts{count}.npy"
        shape = (count, 64, 64, 512)
        acts = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        rng = np.random.default_rng(0)
        for i in range(count):
            acts[i] = rng.random((64, 64, 512), np.float32)
        acts.flush()
        del acts
        peaks.append(_peak_memory_of_dissection(probe_dir, path, tmp_path / f"out{count}"))
        sizes.append(path.stat().st_size)
    # Measured growth: 0.07-0.09 GB; holding the activations would add all 1.5 GB.
    assert peaks[1] - peaks[0] < 0.4 * (sizes[1] - sizes[0]), (peaks, sizes)
