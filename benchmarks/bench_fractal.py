"""Fractal classifier speed: the reference video's configuration.

800 x 800 cells, 4 classes, 250 iterations of which 50 burn-in, starting
from the majority classes of 100,000 synthetic points (4 superimposed
perturbed lattices on the unit torus, binned into the grid, so most cells
start unlabeled and the burn-in fills them). Measured in one run
(``make bench`` runs ``.venv/bin/python benchmarks/bench_fractal.py``):

- ``gridflow.fractal`` on an in-memory grid in one chunk (no halo, one
  round), in 2 x 2 chunks of 400 (fused ``map_overlap`` rounds with halos),
  and into a Zarr store recording a frame every 10 iterations (what the demo
  does: checkpoints, frames, the store write);
- the compiled kernel alone on the whole grid, one thread, no dask;
- gridflow's array reference (NumPy and :mod:`gridflow.counter_rng`), which
  the compiled path equals bit for bit (checked here);
- a plain NumPy implementation of the same rule with ``np.random`` choices,
  ``np.roll`` and ``np.choose``: the baseline the issue quotes (about 9 s).

Timings are best of ``--repeat`` runs after a warm-up (dask's threaded
scheduler); time per cell-iteration is seconds / (cells x iterations).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Any

import _common
import dask
import numpy as np
from _common import best_of, grid_from_counts, one_hot, table

import gridflow as gf
from gridflow._kernels import fractal as _fractalkernel
from gridflow.fractal import run_reference
from gridflow.store import write_new_store


def machine() -> str:
    return _common.machine("numpy", "numba", "dask", "gridflow")


def start_labels(size: int, classes: int, points: int) -> np.ndarray:
    process = gf.PointProcess(dims=2, classes=classes, scale=0.15, seed=5)
    ds = gf.bin_points(
        process.sample(0, points), bins=size, bounds=(0, 1), periodic=True, classes=range(classes)
    )
    counts = ds["counts"].values
    return np.where(counts.sum(0) > 0, counts.argmax(0), -1).astype(np.int16)


def grid(labels: np.ndarray, classes: int, chunks: int) -> Any:
    return grid_from_counts(one_hot(labels, classes), chunks)


def plain_numpy(labels: np.ndarray, iterations: int, burn_in: int, seed: int) -> np.ndarray:
    """The same rule in plain NumPy: a generator's choices, rolled neighbours."""
    rng = np.random.default_rng(seed)
    cur = labels.copy()
    for t in range(1, iterations + 1):
        choice = rng.integers(0, 4, cur.shape)
        nbs = [np.roll(cur, 1, 0), np.roll(cur, -1, 0), np.roll(cur, 1, 1), np.roll(cur, -1, 1)]
        nb = np.choose(choice, nbs)
        take = nb >= 0
        if t <= burn_in:
            take &= cur < 0
        cur = np.where(take, nb, cur)
    return cur


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=800)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--iterations", type=int, default=250)
    p.add_argument("--burn-in", type=int, default=50)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--output", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    n, k, iters, burn = args.size, args.classes, args.iterations, args.burn_in
    labels = start_labels(n, k, args.points)
    cell_its = labels.size * iters
    kw = {"iterations": iters, "burn_in": burn, "seed": 1}
    rows: list[list[Any]] = []
    results: dict[str, np.ndarray] = {}

    def row(name: str, seconds: float, out: np.ndarray | None, reps: int) -> None:
        rows.append([name, f"{seconds:.3f}", f"{seconds / cell_its * 1e9:.2f}", reps])
        if out is not None:
            results[name] = out
        print(f"  {name}: {seconds:.3f} s", file=sys.stderr)

    with dask.config.set(scheduler="threads"):
        one = grid(labels, k, n)
        s, out = best_of(lambda: gf.fractal(one, **kw)["fractal"].values, args.repeat)
        row(f"gridflow.fractal, one chunk {n}x{n}", s, out, args.repeat)
        half = grid(labels, k, n // 2)
        s, out = best_of(lambda: gf.fractal(half, **kw)["fractal"].values, args.repeat)
        row(f"gridflow.fractal, 2x2 chunks of {n // 2} (halos)", s, out, args.repeat)
        tmp = tempfile.mkdtemp(prefix="bench_fractal_")
        try:
            store = os.path.join(tmp, "grid.zarr")
            write_new_store(grid(labels, k, n), store)

            def to_store() -> np.ndarray:
                gf.fractal(store, record=10, **kw)
                return gf.open_grid(store)["fractal"].values

            s, out = best_of(to_store, args.repeat)
            row(
                "gridflow.fractal into a Zarr store, a frame every 10 iterations",
                s,
                out,
                args.repeat,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def kernel_alone() -> np.ndarray:
        padded = np.pad(labels, 1, mode="wrap")
        hashes = _fractalkernel.global_hashes(labels.shape, (-1, -1), padded.shape)
        return _fractalkernel.run(
            padded, seed=1, first=1, marks=(iters,), burn_in=burn, hashes=hashes, wrap=(True, True)
        )[0]

    s, out = best_of(kernel_alone, args.repeat)
    row("compiled kernel alone (one thread, no dask)", s, out, args.repeat)
    s, out = best_of(lambda: run_reference(labels, **kw), 1, warm=False)
    row("gridflow array reference (NumPy + counter_rng)", s, out, 1)
    s, _ = best_of(lambda: plain_numpy(labels, iters, burn, 1), 1, warm=False)
    row("plain NumPy (np.random choices, np.roll, np.choose)", s, None, 1)

    baseline = float(rows[-1][1])
    for r in rows:
        r.append(f"{baseline / float(r[1]):.1f}x")
    ref = results["gridflow array reference (NumPy + counter_rng)"]
    identical = all(np.array_equal(v, ref) for v in results.values())
    unlabeled_start = float(np.mean(labels < 0))
    unlabeled_end = float(np.mean(ref < 0))
    text = "\n".join(
        [
            f"Machine: {machine()}",
            "",
            f"{n}x{n} cells, {k} classes, {iters} iterations ({burn} burn-in), "
            f"{unlabeled_start:.1%} of cells unlabeled at the start, {unlabeled_end:.2%} at the end; "
            f"gridflow's results bit-identical across rows: {identical}",
            "",
            table(
                [
                    "method",
                    "seconds",
                    "ns per cell-iteration",
                    "best of",
                    "speed-up vs plain NumPy",
                ],
                rows,
            ),
        ]
    )
    return _common.emit(text, args.output)


if __name__ == "__main__":
    sys.exit(main())
