"""Equalization against the reference output and a brute-force rank, for every chunking."""

import sys

import dask.array as da
import numpy as np
import pytest

from gridflow.engine.equalize import density_keys, equalize
from gridflow.errors import InputDataError
from tests.conftest import reference

equalize_mod = sys.modules["gridflow.engine.equalize"]

GRAY = np.array([0, 30, 55, 90, 120, 140, 170, 254])


def test_distinct_levels_reproduce_the_reference_gray_level(monkeypatch):
    z = reference("granville_gd_200_w5.npz")
    eq = equalize(z["density"], method="distinct")
    assert eq.n == 40_000  # every reference density is distinct at 12 digits
    np.testing.assert_array_equal(GRAY[eq.level.compute()], z["gray_level"])
    # The same with blocks, and with the distinct values merged range by range.
    monkeypatch.setattr(equalize_mod, "RANGE_CELLS", 3000)
    eq = equalize(da.from_array(z["density"], chunks=(37, 53)), method="distinct")
    np.testing.assert_array_equal(GRAY[eq.level.compute()], z["gray_level"])


def test_nine_digits_would_merge_distinct_reference_densities():
    # Why DIGITS is 12: the reference's closest densities differ by 8e-11.
    z = reference("granville_gd_200_w5.npz")
    eq = equalize(z["density"], method="distinct", digits=9)
    assert eq.n < 40_000
    assert (GRAY[eq.level.compute()] != z["gray_level"]).sum() > 0


def test_equalization_rule_by_hand():
    x = np.array([0, 0, 0, 0, 0, 0, 1, 2, 3, 4.0])
    # cells: ties share the first rank (1/10), so the plateau stays in level 0.
    assert equalize(x, levels=5, method="cells").level.compute().tolist() == [0] * 6 + [3, 4, 4, 4]
    # distinct: 5 values ranked 1..5 of 5, cut at 0.2, 0.4, 0.6, 0.8.
    assert equalize(x, levels=5, method="distinct").level.compute().tolist() == [1] * 6 + [
        2,
        3,
        4,
        4,
    ]
    got = equalize(np.arange(10.0), levels=[0.05, 0.5], method="cells").level.compute()
    assert got.tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]


def _brute_levels(x, cuts, method, digits=12):
    keys = density_keys(x, digits).ravel()
    u = np.unique(keys)
    if method == "distinct":
        rank = np.searchsorted(u, keys) + 1
        n = len(u)
    else:
        s = np.sort(keys)
        rank = np.searchsorted(s, keys, side="left") + 1
        n = len(keys)
    return np.array([sum(r / n >= q for q in cuts) for r in rank]).reshape(np.shape(x))


@pytest.mark.parametrize("method", ["cells", "distinct"])
@pytest.mark.parametrize("chunks", [(30, 40), (7, 11), (1, 40)])
def test_equalization_is_exact_for_every_chunking(rng, monkeypatch, method, chunks):
    x = rng.random((30, 40)) ** 3
    x[rng.random(x.shape) < 0.3] = 0.0  # a plateau
    x[:5] = np.round(x[:5], 2)  # and many ties
    monkeypatch.setattr(equalize_mod, "RANGE_CELLS", 200)  # several merge ranges
    cuts = (0.08, 0.18, 0.28, 0.42, 0.62, 0.80, 0.95)
    got = equalize(da.from_array(x, chunks=chunks), levels=cuts, method=method).level.compute()
    np.testing.assert_array_equal(got, _brute_levels(x, cuts, method))


def test_density_keys_round_to_twelve_digits(rng):
    x = np.array([1.0, 1.0 + 1e-15, 1.0 + 1e-10, 0.0, -2.5, 1e-300, 99.99999999999999])
    k = density_keys(x)
    assert k[0] == k[1] and k[2] > k[0] and k[3] == 0 and k[4] < 0
    assert k[6] == density_keys(np.array([100.0]))[0]  # rounds up across a power of ten
    y = np.sort(rng.random(1000) * 10.0 ** rng.integers(-5, 5, 1000))
    ky = density_keys(y)
    assert np.all(np.diff(ky) >= 0)
    with pytest.raises(InputDataError, match="NaN"):
        density_keys(np.array([1.0, np.nan]))
