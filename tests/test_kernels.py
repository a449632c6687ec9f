import numpy as np
import pytest

from gridflow.errors import ParameterError
from gridflow.kernels import QUANTUM, parse_kernel


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_inverse_distance_is_the_reference_weight_on_the_window(ndim):
    k = parse_kernel("inverse_distance", window=3, ndim=ndim)
    assert k.weights.shape == (7,) * ndim and not k.separable
    u = np.indices((7,) * ndim) - 3
    exact = 1 / np.sqrt(1 + (u**2).sum(0))
    np.testing.assert_allclose(k.weights, exact, atol=QUANTUM / 2, rtol=0)
    assert np.all(np.mod(k.weights / k.quantum, 1) == 0)


@pytest.mark.parametrize("ndim", [1, 2, 3, 5])
def test_separable_kernels_factor_exactly(ndim):
    g = parse_kernel("gaussian", window=2, ndim=ndim, sigma=1.5)
    if g.separable:
        outer = g.factors[0]
        for f in g.factors[1:]:
            outer = np.multiply.outer(outer, f)
        assert np.array_equal(outer, g.weights)
    else:  # too many dims for exact separable passes: the full product on the fine grid
        assert g.quantum == QUANTUM
    assert np.all(np.mod(g.weights / g.quantum, 1) == 0)
    u = np.indices((5,) * ndim) - 2
    np.testing.assert_allclose(g.weights, np.exp(-(u**2).sum(0) / (2 * 1.5**2)), atol=2e-5)
    b = parse_kernel("box", window=2, ndim=ndim)
    assert b.is_box and np.all(b.weights == 1)


def test_user_arrays():
    arr = np.arange(9.0).reshape(3, 3)
    k = parse_kernel(arr, window=None, ndim=2)
    assert k.radius == (1, 1) and np.array_equal(k.weights, arr)


@pytest.mark.parametrize(
    ("kernel", "window", "match"),
    [
        ("inverse_distance", 0, "window"),
        ("inverse_distance", -2, "window"),
        ("inverse_distance", 2.5, "window"),
        ("nope", 3, "kernel: expected one of"),
        (np.ones((4, 4)), None, "odd sides"),
        (np.ones((3, 3, 3)), None, "2-D array"),
        (np.ones((3, 3)), 2, "does not match window"),
        (np.zeros((3, 3)), None, "all weights are zero"),
        (-np.ones((3, 3)), None, "non-negative"),
    ],
)
def test_bad_kernels(kernel, window, match):
    with pytest.raises(ParameterError, match=match):
        parse_kernel(kernel, window=window, ndim=2)
