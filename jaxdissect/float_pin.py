"""What decides the floats: the XLA settings that training and the studies pin, and what a
results file records of them.

XLA's CPU code follows the instruction set of the machine it runs on: a wider vector unit
sums in another order, so the same run differs in the 7th digit after one step and its
trajectory parts after a few hundred. Capping the instruction set at AVX2, which every
x86-64 CPU of the last decade has (Intel since 2013, AMD since 2015), makes a run on an
AVX-512 machine compute what an AVX2 machine computes. GPUs need deterministic reductions
for the same reason. A setting the user's XLA_FLAGS already names is left as it is.

``pin_floats()`` must run before JAX starts its backend (flags are read then).
"""

from __future__ import annotations

import os
import platform
import re

# The pinned ceiling; XLA's names: SSE4_2, AVX, AVX2, AVX512, AVX512_VNNI, ...
PINNED_CPU_ISA = "AVX2"
_X86 = ("x86_64", "amd64", "i686", "x86")


def _pins() -> dict[str, str]:
    pins = {"xla_gpu_deterministic_ops": "true"}
    # The flag exists for x86 only; other architectures have one vector width per build.
    if platform.machine().lower() in _X86:
        pins["xla_cpu_max_isa"] = PINNED_CPU_ISA
    return pins


def pin_floats() -> None:
    """Adds each pinned setting to XLA_FLAGS unless XLA_FLAGS already names it."""
    flags = os.environ.get("XLA_FLAGS", "")
    for name, value in _pins().items():
        if name not in flags:
            flags = f"{flags} --{name}={value}".strip()
    os.environ["XLA_FLAGS"] = flags


def cpu_model() -> str | None:
    """The CPU's model name as the OS reports it (None where it does not)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def float_settings() -> dict:
    """What a results file records: the CPU, its architecture and the ISA ceiling XLA ran
    under (None: the machine's own, i.e. not reproducible on another CPU)."""
    found = re.findall(r"--xla_cpu_max_isa=(\S+)", os.environ.get("XLA_FLAGS", ""))
    return {
        "cpu_model": cpu_model(),
        "architecture": platform.machine(),
        "xla_cpu_max_isa": found[-1] if found else None,
    }
