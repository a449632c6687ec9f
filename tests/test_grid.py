import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from gridflow.errors import ParameterError
from gridflow.grid import GridSpec, infer_bounds


def test_cell_index_hand_checked():
    spec = GridSpec(("x", "y"), bounds=[(0, 1), (-2, 2)], bins=(4, 2))
    pts = np.array(
        [
            [0.0, -2.0],  # lower corner
            [0.25, 0.0],  # on inner edges: upper cell
            [1.0, 2.0],  # v == hi falls in the last cell
            [0.999, 1.999],
            [1.0000001, 0.0],  # out of range
            [np.nan, 0.0],
            [0.5, np.inf],
        ]
    )
    assert spec.cell_index(pts).tolist() == [
        [0, 0],
        [1, 1],
        [3, 1],
        [3, 1],
        [-1, -1],
        [-1, -1],
        [-1, -1],
    ]
    assert spec.flat_index(pts).tolist() == [0, 3, 7, 7, -1, -1, -1]


def test_periodic_wraps_modulo_the_period():
    spec = GridSpec(("x",), bounds=(0, 1), bins=4, periodic=True)
    pts = np.array([[1.0], [1.3], [-0.1], [-3.9], [5.0], [np.inf], [np.nan]])
    assert spec.cell_index(pts)[:, 0].tolist() == [0, 1, 3, 0, 0, -1, -1]


def test_tiny_negative_on_periodic_dim_is_last_cell():
    spec = GridSpec(("x",), bounds=(0, 1), bins=8, periodic=True)
    # fmod(-1e-20, 1) + 1 rounds to 1.0: the value is just below the seam.
    assert spec.cell_index(np.array([[-1e-20]]))[0, 0] == 7


def test_centers_and_edges():
    spec = GridSpec(("x", "y"), bounds=[(0, 1), (10, 20)], bins=(4, 5))
    np.testing.assert_allclose(spec.centers("x"), [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(spec.centers(1), [11, 13, 15, 17, 19])
    e = spec.edges("y")
    assert e[0] == 10 and e[-1] == 20 and len(e) == 6


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-3.7, 11.3), (0.1, 0.7), (1e6, 1e6 + 3)])
@pytest.mark.parametrize("bins", [1, 3, 7, 10, 1000])
def test_edges_agree_with_cell_index_at_every_edge(bounds, bins):
    spec = GridSpec(("x",), bounds=bounds, bins=bins)
    e = spec.edges(0)
    # The edge itself, and the floats on either side of it.
    vals = np.concatenate([e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf)])
    vals = vals[(vals >= bounds[0]) & (vals <= bounds[1])]
    cells = spec.cell_index(vals[:, None])[:, 0]
    expect = np.clip(np.searchsorted(e, vals, side="right") - 1, 0, bins - 1)
    assert np.array_equal(cells, expect)
    assert np.all(np.diff(e) > 0)


def test_json_round_trip():
    spec = GridSpec(("a", "b", "c"), bounds=[0, 1, -1, 1, 5, 6], bins=[3, 4, 5], periodic=[1, 0, 1])
    again = GridSpec.from_json(spec.to_json())
    assert again == spec
    assert again.periodic == (True, False, True)
    assert again.bounds == ((0.0, 1.0), (-1.0, 1.0), (5.0, 6.0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bins": 0}, "bins"),
        ({"bins": -4}, "bins"),
        ({"bins": (3, 4, 5)}, "bins"),
        ({"bins": 2.5}, "bins"),
        ({"bounds": (1, 1)}, "lo < hi"),
        ({"bounds": (2, 1)}, "lo < hi"),
        ({"bounds": (0, np.inf)}, "non-finite"),
        ({"bounds": (0, 1, 2)}, "pair"),
        ({"bounds": "a,b"}, "bounds"),
    ],
)
def test_bad_parameters(kwargs, match):
    args = {"dims": ("x", "y"), "bounds": (0, 1), "bins": 4} | kwargs
    with pytest.raises(ParameterError, match=match):
        GridSpec(**args)


def test_duplicate_dims_rejected():
    with pytest.raises(ParameterError, match="unique"):
        GridSpec(("x", "x"), bounds=(0, 1), bins=4)


def test_string_forms_from_the_cli():
    spec = GridSpec(("x", "y"), bounds="0,1,0,2", bins="400,300", periodic="true,false")
    assert spec.bins == (400, 300)
    assert spec.bounds == ((0.0, 1.0), (0.0, 2.0))
    assert spec.periodic == (True, False)


def test_infer_bounds_one_pass_ignores_nan_and_inf():
    df = pd.DataFrame({"x": [0.5, np.nan, 2.0, np.inf], "y": [-1.0, 3.0, -np.inf, 1.0]})
    assert infer_bounds(df, ["x", "y"]) == ((0.5, 2.0), (-1.0, 3.0))
    ddf = dd.from_pandas(df, npartitions=3)
    assert infer_bounds(ddf, ["x", "y"]) == ((0.5, 2.0), (-1.0, 3.0))


def test_infer_bounds_of_a_constant_column_is_a_unit_interval():
    df = pd.DataFrame({"x": [2.0, 2.0]})
    assert infer_bounds(df, ["x"]) == ((1.5, 2.5),)


@pytest.mark.parametrize("periodic", [False, True])
def test_compiled_flat_index_equals_the_array_rule(periodic, rng):
    # The one-pass kernel must give the bits of the per-dim NumPy rule,
    # edge values, NaN, infinities and far-away points included.
    spec = GridSpec(
        ("a", "b", "c"), bounds=[(-1.5, 2.0), (0, 1), (3, 10)], bins=(7, 5, 13), periodic=periodic
    )
    lo, hi = np.array(spec.bounds).T
    pts = rng.uniform(lo - 0.2 * (hi - lo), hi + 0.2 * (hi - lo), (5000, 3))
    pts[:300, 0] = rng.choice(spec.edges("a"), 300)
    pts[300:600, 2] = rng.choice(spec.edges("c"), 300)
    pts[600:610] = np.nan
    pts[610:620, 1] = np.inf
    pts[620:630, 2] = -np.inf
    pts[630:640, 0] = 1e300
    cells = spec.cell_index(pts)
    expected = np.where(cells[:, 0] < 0, -1, np.ravel_multi_index(cells.T.clip(0), spec.bins))
    got = spec.flat_index(pts)
    assert np.array_equal(got, expected)
    assert np.array_equal(spec.flat_index(np.asfortranarray(pts)), expected)
    assert (got >= 0).sum() > 1000 and (got < 0).sum() >= 30
