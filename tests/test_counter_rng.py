"""Tests of gridflow.counter_rng: exact values, invariance and statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from gridflow import counter_rng
from gridflow.errors import ParameterError

N = 1_000_000
MASK = (1 << 64) - 1


def _splitmix_reference(seed: int, stream: int, index: int) -> int:
    """SplitMix64 with the module's key derivation, in Python integers."""

    def mix(z: int) -> int:
        z &= MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    key = mix(mix(seed + 0x2545F4914F6CDD1D) ^ stream ^ 0xD1B54A32D192ED03)
    return mix(key + index * 0x9E3779B97F4A7C15)


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def test_bits_match_python_integer_reference(xp):
    index = [0, 1, 2, 12345, 2**40 + 7, 2**63 - 1]
    for seed, stream in [(0, 0), (1, 0), (0, 1), (2**64 - 1, 2**63 + 5)]:
        got = _host(counter_rng.random_bits(seed, stream, xp.asarray(index, dtype=xp.uint64)))
        expected = [_splitmix_reference(seed, stream, i) for i in index]
        assert got.tolist() == expected


def test_same_inputs_same_outputs_and_dtypes(xp):
    index = xp.arange(1000)
    for fn, args, dtype in [
        (counter_rng.random_bits, (), np.uint64),
        (counter_rng.uniform, (), np.float64),
        (counter_rng.integers, (6,), np.int64),
    ]:
        a = fn(3, 9, index, *args)
        b = fn(3, 9, index.copy(), *args)
        assert a.dtype == dtype
        assert type(a) is type(index)
        assert (_host(a) == _host(b)).all()
    # The input is not modified by the in-place arithmetic.
    assert (_host(index) == np.arange(1000)).all()


def test_numpy_and_int_dtypes_agree():
    base = counter_rng.random_bits(5, 6, np.arange(100, dtype=np.int64))
    for dtype in (np.int32, np.uint32, np.uint64, np.int16):
        assert (counter_rng.random_bits(5, 6, np.arange(100, dtype=dtype)) == base).all()
    assert (counter_rng.random_bits(np.int64(5), np.uint8(6), list(range(100))) == base).all()


@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4), (2, 0, 3), (2, 3, 5)])
def test_shape_is_preserved(shape):
    index = np.arange(math.prod(shape)).reshape(shape)
    for out in (
        counter_rng.random_bits(1, 2, index),
        counter_rng.uniform(1, 2, index),
        counter_rng.integers(1, 2, index, 6),
        counter_rng.integers(1, 2, index, 8),
    ):
        assert out.shape == shape
    flat = counter_rng.uniform(1, 2, index.reshape(-1))
    assert (counter_rng.uniform(1, 2, index).reshape(-1) == flat).all()


def test_scalar_index():
    whole = counter_rng.uniform(4, 0, np.arange(10))
    assert float(counter_rng.uniform(4, 0, 7)) == whole[7]
    assert int(counter_rng.integers(4, 0, np.int64(7), 10)) == int(
        counter_rng.integers(4, 0, np.arange(10), 10)[7]
    )


@settings(max_examples=40, deadline=None)
@given(
    start=st.integers(0, 200_000),
    length=st.integers(0, 70_000),
    seed=st.integers(0, 2**64 - 1),
    n=st.integers(1, 2**32),
)
def test_any_slice_equals_the_whole(start, length, seed, n):
    whole = np.arange(300_000)
    piece = whole[start : start + length]
    for fn, args in [
        (counter_rng.random_bits, ()),
        (counter_rng.uniform, ()),
        (counter_rng.integers, (n,)),
    ]:
        full = fn(seed, 17, whole, *args)
        assert (fn(seed, 17, piece, *args) == full[start : start + length]).all()


def test_permuted_indices_give_permuted_values():
    index = np.arange(100_000)
    perm = np.random.default_rng(0).permutation(index)
    full = counter_rng.random_bits(0, 0, index)
    assert (counter_rng.random_bits(0, 0, perm) == full[perm]).all()


def test_uniform_range_moments_and_fit():
    u = counter_rng.uniform(0, 0, np.arange(N))
    assert u.min() > 0 and u.max() < 1
    # Standard errors of the mean and of the variance of U(0, 1).
    assert abs(u.mean() - 0.5) < 6 * math.sqrt(1 / 12 / N)
    assert abs(u.var() - 1 / 12) < 6 * math.sqrt(1 / 180 / N)
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    counts = np.bincount((u * 1000).astype(np.int64), minlength=1000)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_uniform_extremes_are_strictly_inside():
    # The conversion step applied to the extreme hash values.
    bits = np.array([0, 1 << 12, 2**64 - 1], dtype=np.uint64)
    out = np.empty(3)
    counter_rng._finish_uniform(np, bits, np.empty_like(bits), out)
    assert out.tolist() == [2**-53, 3 * 2**-53, 1 - 2**-53]
    assert (1 - out).tolist() == [1 - 2**-53, 1 - 3 * 2**-53, 2**-53]


@pytest.mark.parametrize("n", [2, 4, 6, 10])
def test_integers_frequencies(n):
    values = counter_rng.integers(1, 5, np.arange(N), n)
    assert values.min() >= 0 and values.max() < n
    freq = np.bincount(values, minlength=n) / N
    sigma = math.sqrt((1 / n) * (1 - 1 / n) / N)
    assert np.abs(freq - 1 / n).max() < 6 * sigma


@pytest.mark.parametrize("n", [1, 3, 6, 7, 1000, 2**31 + 11, 2**32 - 1, 2**32])
def test_integers_is_floor_of_bits_times_n(n):
    index = np.arange(2000)
    bits = counter_rng.random_bits(9, 1, index)
    got = counter_rng.integers(9, 1, index, n)
    expected = [(int(b) * n) >> 64 for b in bits]
    assert got.tolist() == expected


def test_streams_and_seeds_are_uncorrelated():
    index = np.arange(N)
    base = counter_rng.uniform(0, 0, index)
    others = [
        counter_rng.uniform(0, 1, index),  # next stream
        counter_rng.uniform(1, 0, index),  # next seed
        counter_rng.uniform(1, 1, index),
        counter_rng.uniform(0, 2**32, index),  # stream in the high bits
        counter_rng.uniform(0, 0, index + 1),  # lag 1 in the same stream
    ]
    for other in others:
        assert abs(np.corrcoef(base, other)[0, 1]) < 6 / math.sqrt(N)
    # Distinct streams are not shifted copies of each other either.
    assert not np.isin(counter_rng.random_bits(0, 1, index[:1000]), base).any()


def test_bits_are_balanced():
    bits = counter_rng.random_bits(3, 3, np.arange(200_000))
    ones = np.unpackbits(bits.view(np.uint8).reshape(-1, 8), axis=1).mean(axis=0)
    assert np.abs(ones - 0.5).max() < 6 * math.sqrt(0.25 / bits.size)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: counter_rng.uniform(0, 0, np.array([0.5])), "integer array"),
        (lambda: counter_rng.uniform(True, 0, np.arange(3)), "seed"),
        (lambda: counter_rng.uniform(0, 1.5, np.arange(3)), "stream"),
        (lambda: counter_rng.integers(0, 0, np.arange(3), 0), "n: expected"),
        (lambda: counter_rng.integers(0, 0, np.arange(3), 2**32 + 1), "n: expected"),
        (lambda: counter_rng.integers(0, 0, np.arange(3), 2.0), "n: expected"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ParameterError, match=match):
        call()


def test_numpy_and_cupy_agree(xp):
    index = np.arange(50_000)
    for fn, args in [
        (counter_rng.random_bits, ()),
        (counter_rng.uniform, ()),
        (counter_rng.integers, (6,)),
    ]:
        assert (_host(fn(2, 3, xp.asarray(index), *args)) == fn(2, 3, index, *args)).all()
