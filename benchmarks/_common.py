"""Helpers shared by the benchmark scripts: timing, grids, the machine line and tables."""

from __future__ import annotations

import gc
import importlib
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def best_of(
    fn: Callable[[], Any], repeat: int, *, warm: bool = True, collect: bool = False
) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls of ``fn``, and the last call's result.

    ``warm``: call ``fn`` once first, untimed (numba loads or compiles its
    kernels, FFT plans, kernel spectra). ``collect``: free the previous result
    and collect garbage before each call, for results that fill the memory.
    """
    if warm:
        fn()
    best, out = float("inf"), None
    for _ in range(repeat):
        if collect:
            out = None
            gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    """Counts of shape (classes, *labels.shape): 1 where a cell holds that label."""
    return np.stack([(labels == k).astype(np.uint32) for k in range(classes)])


def grid_from_counts(counts: np.ndarray, chunks: int | tuple[int, ...], bounds=(0, 1)) -> Any:
    """An in-memory counts grid on the periodic box ``bounds`` (dims x0, x1, ...)."""
    import dask.array as da

    from gridflow.grid import GridSpec
    from gridflow.store import counts_dataset

    k = counts.shape[0]
    spec = GridSpec(
        tuple(f"x{i}" for i in range(counts.ndim - 1)),
        bounds=bounds,
        bins=counts.shape[1:],
        periodic=True,
    )
    arr = da.from_array(counts, chunks=(k, *np.broadcast_to(chunks, (counts.ndim - 1,))))
    return counts_dataset(arr, spec, tuple(range(k)), {})


def machine(*packages: str) -> str:
    """CPU, cores, memory, Python and the versions of ``packages`` (import names)."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    names = {"sklearn": "scikit-learn"}
    versions = ", ".join(
        f"{names.get(p, p)} {importlib.import_module(p).__version__}" for p in packages
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB; "
        f"Python {platform.python_version()}, {versions}"
    )


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def emit(text: str, output: str | None) -> int:
    """Print the tables and, with ``output``, also write them to that file."""
    print(text)
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")
    return 0
