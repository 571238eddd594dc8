import jax
import numpy as np
import pytest
from PIL import Image

from jaxdissect.stats.upsample import bilinear_matrix


@pytest.mark.parametrize("small,large", [(7, 112), (4, 16), (6, 113), (13, 56), (5, 5)])
def test_matches_jax_image_resize_and_pil(small, large):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(small, small + 1)).astype(np.float32)
    rows, cols = bilinear_matrix(large, small), bilinear_matrix(large + 3, small + 1)
    ours = rows.astype(np.float64) @ a @ cols.T.astype(np.float64)
    by_jax = np.asarray(jax.image.resize(a, (large, large + 3), "linear"))
    by_pil = np.asarray(Image.fromarray(a, mode="F").resize((large + 3, large), Image.BILINEAR))
    np.testing.assert_allclose(ours, by_jax, atol=1e-5)
    np.testing.assert_allclose(ours, by_pil, atol=1e-5)


def test_rows_sum_to_one_and_edges_clamp():
    m = bilinear_matrix(16, 4)
    np.testing.assert_allclose(m.sum(1), 1.0)
    assert m[0, 0] == 1.0 and m[-1, -1] == 1.0


def test_pil_coefficients_are_the_bilinear_rule_when_enlarging():
    """The report and the CPU tally (PIL's float64 coefficients) and the XLA tally (float32
    matrices) resize by the same rule: equal within float32 rounding of weights <= 1."""
    from jaxdissect.stats.upsample import resize_matrix

    for out_size, in_size in [(16, 4), (112, 7), (113, 7), (224, 14), (7, 7)]:
        np.testing.assert_allclose(
            resize_matrix(out_size, in_size), bilinear_matrix(out_size, in_size), atol=2**-24
        )
