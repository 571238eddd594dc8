"""The formula counts sharded over 4 fake CPU devices equal one device's and the CPU loops'."""

import os
import subprocess
import sys

import numpy as np

SEARCH = """
import sys
import jax
import numpy as np
from jaxdissect.compositional.counting import problem_from_masks, {counter}
from jaxdissect.compositional.exact import exact_search
from jaxdissect.compositional.search import beam_search, choose_candidates
masks = np.load(sys.argv[1])
problem = problem_from_masks(masks["units"], masks["concepts"], np.arange(1, 13), chunk_images=3)
counter = {counter}()
candidates = choose_candidates(problem, 12, counter)
beam = beam_search(problem, candidates, 3, 3, counter)
exact = exact_search(problem, candidates, 3, round_size=4, counter=counter)
arrays = dict(rows=candidates.rows, inter=candidates.intersection, devices=jax.device_count())
arrays.update({{"beam_" + k: v for k, v in beam._asdict().items()}})
arrays.update({{"exact_" + k: v for k, v in exact._asdict().items()}})
np.savez(sys.argv[2], **arrays)
"""


def _search(counter: str, masks, out, devices: int) -> dict:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )
    code = SEARCH.format(counter=counter)
    subprocess.run([sys.executable, "-c", code, masks, out], env=env, check=True)
    return dict(np.load(out))


def test_four_devices_equal_one_and_the_cpu_loops(tmp_path):
    rng = np.random.default_rng(7)
    concepts = rng.random((12, 10, 40)) < rng.uniform(0.05, 0.5, (12, 1, 1))
    units = rng.random((3, 10, 40)) < 0.15
    units[0] |= concepts[0] & ~concepts[1]
    np.savez(tmp_path / "masks.npz", units=units, concepts=concepts)
    # 3 images of 2 words: chunks of 6 words, padded to 8 over 4 devices.
    runs = {
        (counter, devices): _search(
            counter, tmp_path / "masks.npz", tmp_path / f"{counter}{devices}.npz", devices
        )
        for counter, devices in [("xla_counter", 4), ("xla_counter", 1), ("cpu_counter", 1)]
    }
    assert runs["xla_counter", 4]["devices"] == 4
    one = runs["cpu_counter", 1]
    for run in runs.values():
        assert run.keys() == one.keys()
        for name in one:
            if name != "devices":
                np.testing.assert_array_equal(run[name], one[name], err_msg=name)
    # The counts themselves, against NumPy.
    rows = one["rows"]
    for u in range(3):
        for x in range(12):
            assert one["inter"][u, x] == (units[u] & concepts[rows[u, x]]).sum()
