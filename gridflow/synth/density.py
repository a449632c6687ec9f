"""The perturbation laws: drawing from them, and the class densities they give.

A coordinate of class ``c`` is a lattice point plus ``gamma * e``, with
``gamma = scale * stretch[c, j]`` and ``e`` standard logistic, uniform on
[-1, 1] or standard Cauchy. :data:`_INVERSE_CDF` turns counter-based uniforms
into ``e``; :data:`_LOG_DENSITY` gives the log-density of one class in one
dim, on the torus (the law wrapped on period 1) or on the lattice
``{-extent, ..., extent}``, exact to 2**-60 relative.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Relative size below which a density term is dropped (2**-60 ~ 8.7e-19).
_LOG_TOL = -60 * math.log(2.0)
# Wrapped logistic: Fourier series from this gamma up, real-space series below.
_FOURIER_MIN_GAMMA = 0.3


# --- perturbation laws ----------------------------------------------------------


def _logistic_inverse_cdf(u: np.ndarray) -> np.ndarray:
    # 1 - u is exact for counter_rng.uniform's values, so this is finite.
    out = np.subtract(1.0, u)
    np.divide(u, out, out=out)
    return np.log(out, out=out)


def _uniform_inverse_cdf(u: np.ndarray) -> np.ndarray:
    return np.subtract(2.0 * u, 1.0, out=u)


def _cauchy_inverse_cdf(u: np.ndarray) -> np.ndarray:
    u -= 0.5
    u *= np.pi
    return np.tan(u, out=u)


_INVERSE_CDF: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "logistic": _logistic_inverse_cdf,
    "uniform": _uniform_inverse_cdf,
    "cauchy": _cauchy_inverse_cdf,
}


# --- class densities per dim ------------------------------------------------------
#
# Each function gets ``u = x - shift`` for one class and dim and the scale
# ``gamma = scale * stretch`` and returns log g(u): on the torus (extent None)
# the perturbation density wrapped on period 1, sum over m of f(u + m); on the
# lattice the average over h in -extent..extent of f(u - h). Both factorise
# over dims because the lattice is a product set.


@functools.lru_cache(maxsize=1024)
def _logistic_series_coefs(gamma: float) -> tuple[float, ...]:
    """b_k = (-1)^(k+1) k / (1 - q^k), q = e^(-1/gamma), for the tail series.

    Term k of the series is at most |b_k| e^(-(1.5 k - 0.5)/gamma) relative
    to the nearest term's share (>= 1/4); stop below 2**-60 of that.
    """
    coefs = []
    k = 1
    while math.log(k / -math.expm1(-k / gamma)) - (1.5 * k - 0.5) / gamma > _LOG_TOL - math.log(
        4.0
    ):
        coefs.append((-1) ** (k + 1) * k / -math.expm1(-k / gamma))
        k += 1
    return tuple(coefs)


@functools.lru_cache(maxsize=1024)
def _logistic_fourier_coefs(gamma: float) -> tuple[float, ...]:
    """2 phi(2 pi k) = 4 a k e^(-a k) / (1 - e^(-2 a k)), a = 2 pi^2 gamma.

    Stops below 2**-60 of the wrapped density, which is above 0.9 for
    gamma >= _FOURIER_MIN_GAMMA.
    """
    a = 2.0 * math.pi**2 * gamma
    coefs = []
    k = 1
    while (coef := 4.0 * a * k * math.exp(-a * k) / -math.expm1(-2.0 * a * k)) > 2.0**-60:
        coefs.append(coef)
        k += 1
    return tuple(coefs)


def _log_wrapped_logistic(u: np.ndarray, gamma: float, extent: None) -> np.ndarray:
    """log of sum over m of f(u + m), f the logistic density of scale gamma.

    Small gamma: with t = |u - round(u)| in [0, 1/2], the three nearest terms
    (m = 0 and the two neighbours) are exact and the others are the series
    f(v) = (1/gamma) sum_k (-1)^(k+1) k e^(-k v / gamma) summed over m in
    closed form (geometric series), all divided by e^(-t/gamma) so nothing
    underflows. Large gamma: the Fourier series 1 + 2 sum phi(2 pi k)
    cos(2 pi k u) with phi(w) = pi gamma w / sinh(pi gamma w), by Clenshaw.
    Both are truncated at 2**-60 relative.
    """
    t = np.abs(u - np.rint(u))
    if gamma >= _FOURIER_MIN_GAMMA:
        # Clenshaw: b_k = coef_k + 2 cos(theta) b_(k+1) - b_(k+2), then
        # sum_k coef_k cos(k theta) = cos(theta) b_1 - b_2.
        cos = np.cos(2.0 * math.pi * t)
        two_cos = 2.0 * cos
        b1, b2 = np.zeros_like(t), np.zeros_like(t)
        for coef in reversed(_logistic_fourier_coefs(gamma)):
            b2 *= -1.0
            b2 += two_cos * b1
            b2 += coef
            b1, b2 = b2, b1
        cos *= b1
        cos -= b2
        cos += 1.0
        return np.log(cos, out=cos)

    q = math.exp(-1.0 / gamma)
    coefs = _logistic_series_coefs(gamma)
    w = np.exp(t * (-1.0 / gamma))  # the nearest term e^(-t/gamma)
    p = np.exp(t * (2.0 / gamma) - 1.0 / gamma)  # e^(-(1-t)/gamma) / w
    r_near = w * p  # e^(-d/gamma) of the neighbour at distance d = 1 - t
    r_far = w * q  # ... and at distance 1 + t
    total = np.square(1.0 + w)
    np.reciprocal(total, out=total)
    total += p / np.square(1.0 + r_near)
    total += q / np.square(1.0 + r_far)
    if coefs:
        # The translates beyond the neighbours: sum_k coef_k y^k / w with
        # y = e^(-(2 - t)/gamma) = q r_near and e^(-(2 + t)/gamma) = q r_far.
        r_near *= q
        total += p * _horner([q * c for c in coefs], r_near)
        r_far *= q
        total += _horner([q * q * c for c in coefs], r_far)
    out = np.log(total, out=total)
    out -= t * (1.0 / gamma) + math.log(gamma)
    return out


def _horner(coefs: Sequence[float], y: np.ndarray) -> np.ndarray:
    """sum_k coefs[k] * y**k for k = 0 .. len(coefs) - 1 (at least one)."""
    acc = coefs[-1] * y if len(coefs) > 1 else np.full_like(y, coefs[0])
    for coef in reversed(coefs[1:-1]):
        acc += coef
        acc *= y
    if len(coefs) > 1:
        acc += coefs[0]
    return acc


def _log_lattice_logistic(u: np.ndarray, gamma: float, extent: int) -> np.ndarray:
    """log of the mean over h in -extent..extent of f(u - h), f logistic.

    Sums the lattice points around the nearest one ``h0`` until the terms
    fall below 2**-60 of it, relative to the nearest term so nothing
    underflows. The ratio of the term at distance d to e^(-t/gamma) is
    e^(-(d - t)/gamma) / (1 + e^(-d/gamma))**2.
    """
    h0 = np.clip(np.rint(u), -extent, extent)
    delta = u - h0
    t = np.abs(delta)
    side = np.where(delta < 0, -1.0, 1.0)
    # Lattice points left on the near side (towards u) and the far side of h0.
    room_near = extent - side * h0
    room_far = extent + side * h0
    q = math.exp(-1.0 / gamma)
    window = min(2 * extent, math.ceil(gamma * (-_LOG_TOL + math.log(4.0) - math.log1p(-q))) + 1)
    w = np.exp(-t / gamma)
    # Near-side points exist only when |delta| <= 1/2 (h0 was not clipped).
    p = np.exp((2.0 * np.minimum(t, 0.5) - 1.0) / gamma)
    total = 1.0 / np.square(1.0 + w)
    for k in range(1, window + 1):
        near = p * q ** (k - 1)  # e^(-(k - t)/gamma) / w
        term = near / np.square(1.0 + w * near)
        term[room_near < k] = 0.0
        total += term
        far = q**k  # e^(-(k + t)/gamma) / w
        term = far / np.square(1.0 + w * far)
        term[room_far < k] = 0.0
        total += term
    out = np.log(total, out=total)
    out -= t / gamma
    out -= math.log(gamma) + math.log(2 * extent + 1)
    return out


def _log_wrapped_uniform(u: np.ndarray, gamma: float, extent: None) -> np.ndarray:
    """Uniform on [-gamma, gamma] wrapped: count of translates covering u."""
    delta = u - np.rint(u)
    count = np.floor(gamma - delta) - np.ceil(-gamma - delta) + 1.0
    out = np.log(np.maximum(count, 0.0))
    out -= math.log(2.0 * gamma)
    return out


def _log_lattice_uniform(u: np.ndarray, gamma: float, extent: int) -> np.ndarray:
    """Uniform on [-gamma, gamma]: count of lattice points within gamma of u."""
    top = np.minimum(np.floor(u + gamma), extent)
    bottom = np.maximum(np.ceil(u - gamma), -extent)
    out = np.log(np.maximum(top - bottom + 1.0, 0.0))
    out -= math.log(2.0 * gamma) + math.log(2 * extent + 1)
    return out


def _log_sinh(y: float) -> float:
    return y - math.log(2.0) + math.log1p(-math.exp(-2.0 * y)) if y > 20 else math.log(math.sinh(y))


def _log_wrapped_cauchy(u: np.ndarray, gamma: float, extent: None) -> np.ndarray:
    """Wrapped Cauchy on period 1: sinh(2 pi gamma) / (cosh(2 pi gamma) - cos(2 pi u)).

    Written as sinh(y) cosh(y) / (sinh(y)**2 + sin(pi u)**2) with y = pi gamma,
    which neither cancels near u = 0 nor overflows for large gamma.
    """
    y = math.pi * gamma
    log_sinh = _log_sinh(y)
    log_cosh = y - math.log(2.0) + math.log1p(math.exp(-2.0 * y))
    sin = np.abs(np.sin(math.pi * (u - np.rint(u))))
    out = np.logaddexp(2.0 * log_sinh, 2.0 * np.log(sin))
    np.subtract(log_sinh + log_cosh, out, out=out)
    return out


def _log_lattice_cauchy(u: np.ndarray, gamma: float, extent: int) -> np.ndarray:
    """Cauchy: every lattice point counts (heavy tails), so this costs O(extent) per point."""
    total = np.zeros_like(u)
    for h in range(-extent, extent + 1):
        d = u - h
        d *= d
        d += gamma * gamma
        total += np.reciprocal(d, out=d)
    out = np.log(total, out=total)
    out += math.log(gamma / math.pi) - math.log(2 * extent + 1)
    return out


_LOG_DENSITY: dict[tuple[str, bool], Callable[[np.ndarray, float, Any], np.ndarray]] = {
    ("logistic", True): _log_wrapped_logistic,
    ("logistic", False): _log_lattice_logistic,
    ("uniform", True): _log_wrapped_uniform,
    ("uniform", False): _log_lattice_uniform,
    ("cauchy", True): _log_wrapped_cauchy,
    ("cauchy", False): _log_lattice_cauchy,
}
