"""Scaling over devices: the same Broden-scale dissection on 1, 2, 4, ... devices.

    python -m bench.scaling [--devices 1,2,4,8] [--platform gpu|cpu] [-- BENCH ARGS]

Runs ``bench.tally_accelerator`` (XLA kernel, no baselines) once per device count, each in
its own process that sees only that many devices (``CUDA_VISIBLE_DEVICES`` on GPUs; on CPU,
that many fake devices, which share the cores: a check of the mechanism, not of speed), and
prints each end-to-end time with its speed-up over one device. Counts are identical for
every device count (tested in tests/kernels/test_sharding.py).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys


def run(devices: int, platform: str, bench_args: list[str]) -> float:
    """Seconds of the end-to-end dissection on ``devices`` devices."""
    env = dict(os.environ)
    if platform == "gpu":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(devices)))
    else:
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    command = [sys.executable, "-m", "bench.tally_accelerator", "--kernel", "xla"]
    result = subprocess.run(
        [*command, "--no-baselines", *bench_args], env=env, capture_output=True, text=True
    )
    if result.returncode:
        raise SystemExit(f"{devices} device(s) failed:\n{result.stderr[-3000:]}")
    print(result.stdout, end="")
    match = re.search(r"total, end to end .*?: ([\d.]+) s", result.stdout)
    return float(match.group(1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="1,2,4,8", help="comma-separated counts")
    parser.add_argument(
        "--platform",
        choices=("gpu", "cpu"),
        default="gpu" if shutil.which("nvidia-smi") else "cpu",
    )
    parser.add_argument("bench_args", nargs="*", help="passed to bench.tally_accelerator")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.devices.split(",")]
    seconds = {count: run(count, args.platform, args.bench_args) for count in counts}
    print(f"\n{'devices':>8} {'seconds':>9} {'speed-up':>9}  ({args.platform})")
    for count, value in seconds.items():
        print(f"{count:>8} {value:>9.2f} {seconds[counts[0]] / value:>8.2f}x")


if __name__ == "__main__":
    main()
