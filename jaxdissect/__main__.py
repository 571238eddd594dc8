"""``python -m jaxdissect``."""

import os
import sys

from jaxdissect.cli import main

code = main()
# A finished command skips the interpreter's teardown (JAX's and Numba's threads, every
# module's objects: 1-2 s on two busy cores): its files are written and closed by now. Not
# under jax.distributed, whose shutdown at exit the other processes wait for.
jax = sys.modules.get("jax")
if code == 0 and (jax is None or not jax.distributed.is_initialized()):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
sys.exit(code)
