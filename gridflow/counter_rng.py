"""Counter-based random numbers: pure functions of ``(seed, stream, index)``.

A stateful generator gives different numbers when the work is split
differently. Here the value drawn for element ``index`` of stream ``stream``
under ``seed`` is a hash of those three integers and nothing else, so results
never depend on chunking, partitioning, worker count, or backend (NumPy and
CuPy run the same integer arithmetic and agree bit for bit).

The hash is SplitMix64: the key ``mix(mix(seed + A) ^ stream ^ B)`` is computed
once per call in Python integers, then ``bits = mix(key + index * G)`` runs
vectorised in wrapping uint64 arithmetic, with ``mix`` the Stafford "variant
13" finaliser (a bijection of 64-bit integers) and ``G`` the odd golden-ratio
constant. For a fixed seed distinct streams get distinct keys (and vice versa)
because both steps are bijections. SplitMix64 passes BigCrush.

Indices are taken modulo 2**64 (negative int64 indices wrap); only use
``index >= 0`` if you want the streams of different callers not to meet.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from gridflow.backend import namespace
from gridflow.errors import ParameterError

__all__ = ["integers", "random_bits", "stream_key", "uniform"]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
# Arbitrary odd salts so that seed 0 / stream 0 do not hash through zero.
_SEED_SALT = 0x2545F4914F6CDD1D
_STREAM_SALT = 0xD1B54A32D192ED03

_U64_GOLDEN = np.uint64(_GOLDEN)
_U64_MIX1 = np.uint64(_MIX1)
_U64_MIX2 = np.uint64(_MIX2)
_U64_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFTS = {k: np.uint64(k) for k in (12, 27, 30, 31, 32)}
# Elements per block on NumPy: three uint64 arrays of this size fit in L2.
_BLOCK = 1 << 15


def _mix_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int (for the per-call key)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _mix_inplace(xp: Any, z: Any, tmp: Any) -> None:
    """SplitMix64 finaliser applied in place to a uint64 array ``z``."""
    for shift, mult in ((30, _U64_MIX1), (27, _U64_MIX2)):
        xp.right_shift(z, _SHIFTS[shift], out=tmp)
        xp.bitwise_xor(z, tmp, out=z)
        xp.multiply(z, mult, out=z)
    xp.right_shift(z, _SHIFTS[31], out=tmp)
    xp.bitwise_xor(z, tmp, out=z)


def _parse_int(value: Any, name: str) -> int:
    """An integer parameter (Python or NumPy int, not bool) as a Python int."""
    if isinstance(value, (bool, np.bool_)):
        raise ParameterError(f"{name}: expected an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ParameterError(f"{name}: expected an integer, got {value!r}") from None


def _key(seed: int, stream: int) -> int:
    seed = _parse_int(seed, "seed")
    stream = _parse_int(stream, "stream")
    inner = _mix_int((seed + _SEED_SALT) & _MASK64)
    return _mix_int(inner ^ (stream & _MASK64) ^ _STREAM_SALT)


def stream_key(seed: int, stream: int) -> int:
    """The 64-bit key of ``(seed, stream)``: ``bits = mix(key + index * G)``.

    For compiled kernels that hash inline: with ``G = 0x9E3779B97F4A7C15``
    and ``mix`` the finaliser described in the module docstring, they
    reproduce :func:`random_bits` bit for bit.

    Examples
    --------
    >>> 0 <= stream_key(42, 7) < 2**64
    True
    """
    return _key(seed, stream)


def _draw(seed: int, stream: int, index: ArrayLike, dtype: Any, finish: Any) -> Any:
    """Hash ``index`` block by block and let ``finish`` turn bits into output.

    ``finish(xp, bits, tmp, out)`` gets a block of hashed uint64 ``bits`` (it
    may overwrite them), a scratch array of the same size, and the matching
    block of the output. On NumPy the blocks are small enough to stay in the
    CPU cache, which halves the time on large arrays; CuPy gets one block.
    """
    key = np.uint64(_key(seed, stream))
    xp = namespace(index)
    idx = xp.asarray(index)
    if idx.dtype.kind not in "iu":
        raise ParameterError(
            f"index: expected an integer array, got dtype {idx.dtype}; pass e.g. np.arange(n)"
        )
    z = idx.astype(xp.uint64)  # always a fresh array: everything below is in place
    out = z if np.dtype(dtype) == np.uint64 else xp.empty(z.shape, dtype=dtype)
    flat_z, flat_out = z.reshape(-1), out.reshape(-1)
    size = flat_z.size
    block = _BLOCK if xp is np else max(size, 1)
    tmp = xp.empty(min(block, size), dtype=xp.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, size, block):
            zb = flat_z[lo : lo + block]
            tb = tmp[: zb.size]
            xp.multiply(zb, _U64_GOLDEN, out=zb)
            xp.add(zb, key, out=zb)
            _mix_inplace(xp, zb, tb)
            finish(xp, zb, tb, flat_out[lo : lo + block])
    return out


def _finish_bits(xp: Any, bits: Any, tmp: Any, out: Any) -> None:
    """The bits are the output (``out`` is ``bits``)."""


def random_bits(seed: int, stream: int, index: ArrayLike) -> Any:
    """64 random bits per index, a pure function of ``(seed, stream, index)``.

    Parameters
    ----------
    seed : int
        The random seed (any integer; taken modulo 2**64).
    stream : int
        Which independent stream to draw from (any integer, modulo 2**64);
        use one stream per purpose (e.g. per iteration or per dim).
    index : array_like of int
        Positions in the stream, any shape, values >= 0. A NumPy or CuPy
        array; the result lives on the same device.

    Returns
    -------
    ndarray of uint64
        Same shape as ``index``. Equal inputs always give equal bits,
        whatever slice of the indices is computed at a time.

    Examples
    --------
    >>> import numpy as np
    >>> bits = random_bits(42, 0, np.arange(5))
    >>> bits.dtype, bits.shape
    (dtype('uint64'), (5,))
    >>> bool((random_bits(42, 0, np.arange(2, 4)) == bits[2:4]).all())
    True
    """
    return _draw(seed, stream, index, np.uint64, _finish_bits)


def _finish_uniform(xp: Any, bits: Any, tmp: Any, out: Any) -> None:
    xp.right_shift(bits, _SHIFTS[12], out=bits)
    # k * 2**-52 + 2**-53 == (k + 0.5) * 2**-52 exactly, in two passes.
    xp.multiply(bits, 2.0**-52, out=out)
    out += 2.0**-53


def uniform(seed: int, stream: int, index: ArrayLike) -> Any:
    """Uniform float64 numbers strictly inside (0, 1), one per index.

    The top 52 bits ``k`` of :func:`random_bits` give ``(k + 0.5) * 2**-52``:
    every value and its complement ``1 - u`` are exact float64 numbers in
    ``[2**-53, 1 - 2**-53]``, so ``log(u)`` and ``log(1 - u)`` are always
    finite. (With 53 bits, ``k + 0.5`` would round up to ``2**53`` for the
    largest ``k``, giving exactly 1.)

    Parameters
    ----------
    seed, stream, index
        As for :func:`random_bits`.

    Returns
    -------
    ndarray of float64
        Same shape as ``index``.

    Examples
    --------
    >>> import numpy as np
    >>> u = uniform(7, 1, np.arange(1000))
    >>> bool(((u > 0) & (u < 1)).all())
    True
    """
    return _draw(seed, stream, index, np.float64, _finish_uniform)


def integers(seed: int, stream: int, index: ArrayLike, n: int) -> Any:
    """Uniform integers in ``[0, n)``, one per index.

    Uses the high 64 bits of the 128-bit product ``bits * n`` (Lemire's
    multiply-shift without rejection): the bias is below ``n / 2**64``
    relative, and exactly zero when ``n`` is a power of two.

    Parameters
    ----------
    seed, stream, index
        As for :func:`random_bits`.
    n : int
        Number of possible values, ``1 <= n <= 2**32``.

    Returns
    -------
    ndarray of int64
        Same shape as ``index``, values in ``0 .. n - 1``.

    Examples
    --------
    >>> import numpy as np
    >>> side = integers(0, 3, np.arange(10_000), 4)  # a face neighbour in 2-D
    >>> sorted(set(side.tolist()))
    [0, 1, 2, 3]
    """
    n = _parse_int(n, "n")
    if not 1 <= n <= 2**32:
        raise ParameterError(f"n: expected 1 <= n <= 2**32 possible values, got {n}")
    # A power of two takes the top log2(n) bits: exactly uniform.
    finish = _top_bits(n.bit_length() - 1) if n & (n - 1) == 0 else _multiply_high(n)
    return _draw(seed, stream, index, np.uint64, finish).view(np.int64)


def _top_bits(nbits: int) -> Any:
    def finish(xp: Any, bits: Any, tmp: Any, out: Any) -> None:
        if nbits == 0:
            bits[...] = 0
        else:
            xp.right_shift(bits, np.uint64(64 - nbits), out=bits)

    return finish


def _multiply_high(n: int) -> Any:
    un = np.uint64(n)

    def finish(xp: Any, bits: Any, tmp: Any, out: Any) -> None:
        # floor(bits * n / 2**64) with bits = hi * 2**32 + lo: for n < 2**32
        # every partial product and their sum stay below 2**64.
        xp.bitwise_and(bits, _U64_LOW32, out=tmp)
        xp.right_shift(bits, _SHIFTS[32], out=bits)
        xp.multiply(bits, un, out=bits)
        xp.multiply(tmp, un, out=tmp)
        xp.right_shift(tmp, _SHIFTS[32], out=tmp)
        xp.add(bits, tmp, out=bits)
        xp.right_shift(bits, _SHIFTS[32], out=bits)

    return finish
