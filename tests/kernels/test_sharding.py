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


# Lowers each per-batch step of both passes on 4 fake devices and prints, per step, the
# result bytes of every collective in XLA's optimized HLO, and one batch's activation bytes.
_STEP_COLLECTIVES = """
import json, re, sys
import jax, numpy as np
from probe_fixture import dyadic_features
from jaxdissect.config import DissectConfig
from jaxdissect.data.broden import open_broden
from jaxdissect.data.cache import load_label_arrays
from jaxdissect.kernels import xla
from jaxdissect.passes import batch_ranges
from jaxdissect.sources import features_source

assert jax.device_count() == 4
COLLECTIVE = re.compile(
    r"= (\\S+?)\\[([0-9,]*)\\][^=]*? (all-gather|all-reduce|reduce-scatter|all-to-all|"
    r"collective-permute|collective-broadcast)(-start)?\\("
)
BYTES = {"f32": 4, "s32": 4, "u32": 4, "pred": 1, "bf16": 2, "f64": 8, "s64": 8, "s8": 1, "u8": 1}

def collectives(text):
    found = []
    for dtype, dims, op, _ in COLLECTIVE.findall(text):
        size = int(np.prod([int(d) for d in dims.split(",") if d])) * BYTES.get(dtype, 8)
        found.append([op, f"{dtype}[{dims}]", size])
    return found

dataset = open_broden(sys.argv[1])
labels = load_label_arrays(dataset, progress=False)
features = dyadic_features(dataset.num_images, (4, 4, 6))
source, shapes = features_source(features, layer="f")
config = DissectConfig(batch_size=8, quantile=0.05, top_images=3, kernel="xla")
backend = xla.backend(config)
ranges = batch_ranges(dataset.num_images, backend.batch_size)
thresholds = backend.thresholds("f", shapes["f"], dataset.num_images, config)
state = thresholds.init()
batch = next(backend.read(source, shapes, ranges, 0, None))
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
text = xla.threshold_step.lower(
    state, batch.acts["f"], batch.valid, batch.indices, mesh=mesh
).compile().as_text()
report = {"batch_bytes": batch.acts["f"].nbytes, "threshold_step": collectives(text)}
# The positive control: the batch replicated onto every device, which must show a gather.
replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
gather = jax.jit(lambda x: x + 1, out_shardings=replicated)
report["control"] = collectives(gather.lower(batch.acts["f"]).compile().as_text())
# Pass 2 on the thresholds pass 1 computes (the whole pass, through the statistic).
for b in backend.read(source, shapes, ranges, 0, None):
    state = thresholds.update(state, b._replace(acts=b.acts["f"]))
found = thresholds.result(thresholds.collapse(state))
tally = backend.tally("f", shapes["f"], found, dataset, labels, config)
counts = tally.init()
batch = next(backend.read(source, shapes, ranges, 0, labels))
constants = tuple(
    jax.device_put(np.asarray(x), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    for x in (
        found.thresholds,
        dataset.label_category.astype(np.int32),
        xla.bilinear_matrix(dataset.label_size[0], 4),
        xla.bilinear_matrix(dataset.label_size[1], 4),
    )
)
text = xla.tally_step.lower(
    counts["device"], constants, batch.acts["f"], batch.labels, batch.valid, mesh=mesh,
    union="paper", mask_dtype=xla.mask_dtype_for_backend(), max_active=None,
).compile().as_text()
report["tally_step"] = collectives(text)
print(json.dumps(report))
"""


def test_per_batch_steps_need_no_collective(probe):
    """Each device folds its rows into its own state: no step of either pass gathers the
    batch (or reduces per-unit maps) across devices. Read from XLA's optimized HLO on 4 fake
    CPU devices, where a function that replicates the batch shows its all-gather (so the
    reading can fail); collectives of scalars (a flag) would be allowed."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]),
    )
    result = subprocess.run(
        [sys.executable, "-c", _STEP_COLLECTIVES, str(probe.directory)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["batch_bytes"] == 8 * 4 * 4 * 6 * 4  # 8 images of (4, 4, 6) float32
    assert ["all-gather", "f32[8,4,4,6]", 3072] in report["control"], report["control"]
    for step in ("threshold_step", "tally_step"):
        large = [c for c in report[step] if not c[1].endswith("[]")]  # scalars are allowed
        assert large == [], f"{step}: {large}"
