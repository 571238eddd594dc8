"""The CPU tally kernel (``cpu_tally``): NetDissect-Lite's PIL resize reproduced bit for bit,
and bad label indices refused before anything is counted."""

import numpy as np
import pytest
from probe_fixture import pil_upsample, reference_tally
from test_tally import _both_kernels

from jaxdissect.errors import DissectError


@pytest.mark.parametrize("union", ["paper", "lite"])
@pytest.mark.parametrize("shape", [(5, 7, 4), (1, 1, 3), (3, 16, 2), (7, 7, 6)])
def test_cpu_kernel_equals_pil_loop_on_real_valued_maps(probe, union, shape):
    """Enlarging by scales that are not powers of two, values that round: the CPU kernel
    reproduces NetDissect-Lite's PIL resize bit for bit."""
    features = np.random.default_rng(3).gamma(2.0, size=(12, *shape)).astype(np.float32)
    results, thresholds = _both_kernels(probe, features, union)
    reference = reference_tally(features, thresholds, probe, union, upsample=pil_upsample)
    for got, want in zip(results["cpu"], reference, strict=True):
        np.testing.assert_array_equal(got, want)
    assert results["cpu"][1].sum() > 0


def test_cpu_kernel_refuses_indices_out_of_range():
    from jaxdissect.stats.cpu_tally import axis_cells, cpu_tally_batch

    totals = (np.zeros(4, np.int64), np.zeros((2, 4), np.int64), np.zeros((2, 1), np.int64))
    acts = np.ones((1, 2, 2, 2), np.float32)
    planes = np.full((1, 1, 4, 4), 2, np.uint8)
    cells = axis_cells(4, 2), axis_cells(4, 2)
    common = dict(thresholds=np.zeros(2, np.float32), label_category=np.zeros(4, np.int64))
    with pytest.raises(DissectError, match="`labels`: slot index 2 >= 2 slots"):
        cpu_tally_batch(
            totals,
            acts,
            slot_planes=planes,
            slot_labels=np.array([[0, 3]]),
            image_labels=np.zeros((1, 1), np.int64),
            rows=cells[0],
            columns=cells[1],
            union="paper",
            **common,
        )
    with pytest.raises(DissectError, match="`labels`: image-level label numbers must lie in"):
        cpu_tally_batch(
            totals,
            acts,
            slot_planes=planes,
            slot_labels=np.array([[0, 3, 1]]),
            image_labels=np.array([[9]]),
            rows=cells[0],
            columns=cells[1],
            union="paper",
            **common,
        )
    assert not any(t.any() for t in totals)  # nothing was counted


def test_slot_areas_equal_bincount():
    """Pixels per slot, counted by runs: blocky planes (runs across rows and planes), noise
    (a new run at almost every pixel), one-pixel and empty planes, a read-only memory map's
    type; against np.bincount."""
    from bench.workload import broden_like
    from jaxdissect.stats.cpu_tally import _slot_areas

    rng = np.random.default_rng(5)
    blocky = broden_like(6, 0, 32).slot_planes
    blocky.flags.writeable = False
    for planes in (
        blocky,
        rng.integers(0, blocky.max() + 1, blocky.shape).astype(np.uint8),
        np.full((3, 2, 1, 1), 7, np.uint8),
        np.zeros((2, 0, 4, 4), np.uint8),
    ):
        slots = int(planes.max(initial=0)) + 2
        expected = [np.bincount(image.ravel(), minlength=slots) for image in planes]
        np.testing.assert_array_equal(_slot_areas(planes, slots), expected)
