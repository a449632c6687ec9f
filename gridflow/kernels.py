"""Window kernels for the vote filter.

A kernel is defined on the window cube of radius ``w`` (``2w + 1`` cells per
side, centre included) in any number of dims:

``inverse_distance``
    ``1 / sqrt(1 + |u|^2)``, the reference method's weights;
``box``
    ``1`` everywhere (separable; counted with running sums);
``gaussian``
    ``exp(-|u|^2 / (2 sigma^2))`` (separable);
a user array
    any array with odd sides, one per dim.

Weights are stored on a dyadic grid (multiples of :data:`QUANTUM`; separable
kernels factor by factor, each factor on a power-of-two grid chosen so that
sums of products stay exact). Votes are
sums of 0/1 class indicators times weights, so every vote is an exact
multiple of the quantum, far below 2**53 of them: direct sums in any order,
separable passes, running sums and FFTs (rounded back to the quantum) all
give the same float64 bits. That is what makes results bit-identical for any
chunking, fusion factor and method. The quantisation moves a weight by at
most ``QUANTUM / 2`` (3e-8), far inside the 1e-6 the method is checked to.

This module knows nothing of dask, xarray or Zarr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gridflow.errors import ParameterError

__all__ = ["KERNELS", "QUANTUM", "Kernel", "box", "gaussian", "inverse_distance", "parse_kernel"]

#: Weights are multiples of this (2**-24).
QUANTUM = 2.0**-24


def _quantize(a: np.ndarray, quantum: float) -> np.ndarray:
    return np.round(np.asarray(a, dtype=np.float64) / quantum) * quantum


@dataclass(frozen=True, eq=False)
class Kernel:
    """Quantized window weights, and per-axis factors when separable.

    ``weights[w + u]`` is the weight of the cell at offset ``u`` from the
    centre; correlation, not convolution (the same for symmetric kernels).
    """

    name: str
    weights: np.ndarray
    factors: tuple[np.ndarray, ...] | None = field(default=None)
    is_box: bool = False
    quantum: float = QUANTUM  # every vote is an exact multiple of this

    @property
    def ndim(self) -> int:
        return self.weights.ndim

    @property
    def radius(self) -> tuple[int, ...]:
        """Window radius per dim (the halo depth one step needs)."""
        return tuple(s // 2 for s in self.weights.shape)

    @property
    def separable(self) -> bool:
        return self.factors is not None

    @property
    def digest(self) -> str:
        """A short digest of the weights: what a stage records to tell kernels apart."""
        import hashlib

        return hashlib.sha256(np.ascontiguousarray(self.weights).tobytes()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Kernel({self.name!r}, shape={self.weights.shape}, separable={self.separable})"


def _offsets(window: int, ndim: int) -> np.ndarray:
    """|u|^2 over the window cube."""
    u = np.arange(-window, window + 1, dtype=np.float64)
    grids = np.meshgrid(*([u] * ndim), indexing="ij")
    return sum(g * g for g in grids)


def _separable(name: str, factor: np.ndarray, ndim: int, is_box: bool = False) -> Kernel:
    # Each factor lives on a power-of-two grid q_f, so the outer product and
    # every partial sum of the separable passes are multiples of q_f**ndim.
    # Keep the largest vote (the sum of all weights) under 2**52 quanta.
    total = float(np.sum(factor)) ** ndim
    bits = min(24, int((52 - math.ceil(math.log2(total + 1))) // ndim))
    if bits < 16 and not is_box:
        # Too coarse a grid per factor (many dims): keep the full product on
        # the fine grid instead and give up the separable passes.
        weights = factor
        for _ in range(ndim - 1):
            weights = np.multiply.outer(weights, factor)
        return Kernel(name, _quantize(weights, QUANTUM))
    f = _quantize(factor, 2.0**-bits)
    weights = f
    for _ in range(ndim - 1):
        weights = np.multiply.outer(weights, f)
    return Kernel(name, weights, tuple([f] * ndim), is_box, 2.0 ** (-bits * ndim))


def inverse_distance(window: int, ndim: int) -> Kernel:
    """The reference weights ``1 / sqrt(1 + |u|^2)`` on the window of radius ``window``."""
    w = parse_window(window)
    return Kernel("inverse_distance", _quantize(1.0 / np.sqrt(1.0 + _offsets(w, ndim)), QUANTUM))


def box(window: int, ndim: int) -> Kernel:
    """Weight 1 on the whole window (every labeled neighbour counts the same)."""
    w = parse_window(window)
    return _separable("box", np.ones(2 * w + 1), ndim, is_box=True)


def gaussian(window: int, ndim: int, sigma: float | None = None) -> Kernel:
    """``exp(-|u|^2 / (2 sigma^2))``; ``sigma`` defaults to half the window radius."""
    w = parse_window(window)
    sigma = w / 2 if sigma is None else float(sigma)
    if not sigma > 0:
        raise ParameterError(f"sigma: expected a positive number, got {sigma}")
    u = np.arange(-w, w + 1, dtype=np.float64)
    return _separable("gaussian", np.exp(-(u * u) / (2 * sigma * sigma)), ndim)


KERNELS = {"inverse_distance": inverse_distance, "box": box, "gaussian": gaussian}


def parse_window(window: Any) -> int:
    """A window radius: a positive integer (``10`` means 21 cells per side)."""
    try:
        w = int(window)
    except (TypeError, ValueError):
        raise ParameterError(
            f"window: expected a positive integer radius, got {window!r}"
        ) from None
    if w != window or w < 1:
        raise ParameterError(
            f"window: expected a positive integer radius (10 means 21 cells wide), got {window!r}"
        )
    return w


def parse_kernel(
    kernel: str | np.ndarray | Kernel,
    *,
    window: int | None,
    ndim: int,
    sigma: float | None = None,
) -> Kernel:
    """Canonical :class:`Kernel` from a name, an array or a Kernel.

    Examples
    --------
    >>> parse_kernel("box", window=1, ndim=2).weights.sum()
    np.float64(9.0)
    """
    if isinstance(kernel, Kernel):
        k = kernel
    elif isinstance(kernel, str):
        if kernel not in KERNELS:
            raise ParameterError(
                f"kernel: expected one of {', '.join(KERNELS)} or an array, got {kernel!r}"
            )
        if window is None:
            raise ParameterError("window: expected a positive integer radius, got None")
        k = gaussian(window, ndim, sigma) if kernel == "gaussian" else KERNELS[kernel](window, ndim)
    else:
        arr = np.asarray(kernel, dtype=np.float64)
        if arr.ndim != ndim:
            raise ParameterError(
                f"kernel: expected a {ndim}-D array (one axis per grid dim), got {arr.ndim}-D "
                f"shape {arr.shape}"
            )
        if any(s % 2 == 0 for s in arr.shape):
            raise ParameterError(f"kernel: expected odd sides (2w+1), got shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ParameterError("kernel: expected finite non-negative weights")
        if window is not None and any(s != 2 * int(window) + 1 for s in arr.shape):
            raise ParameterError(
                f"kernel: shape {arr.shape} does not match window {window} "
                f"(expected sides of {2 * int(window) + 1}); omit window or fix the array"
            )
        k = Kernel("array", _quantize(arr, QUANTUM))
    if k.ndim != ndim:
        raise ParameterError(f"kernel: expected {ndim} dims, got a {k.ndim}-D kernel")
    if not np.any(k.weights > 0):
        raise ParameterError("kernel: all weights are zero; nothing would ever vote")
    if k.weights.sum() / k.quantum >= 2.0**52:
        raise ParameterError(
            f"kernel: weights sum to {k.weights.sum():g}, too large for exact votes; "
            "use a smaller window or scale the weights down"
        )
    return k
