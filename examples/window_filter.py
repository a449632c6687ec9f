"""Window filters of stored layers: where does one class outweigh the other?

Two overlapping clouds of points (classes 0 and 1) are binned into a
24 x 48 grid store. :func:`gridflow.window_filter` then correlates an
expression of the stored class layers with a window kernel and writes the
result into the store beside the counts:

- ``contrast``: the windowed sum of ``counts[0]**2 - counts[1]**2`` (a box
  window of radius 2, nothing beyond the edges): positive where class 0
  dominates its neighbourhood, negative where class 1 does. Integer values
  and integer weights: every cell is exact.
- ``total`` and ``zeros``: the points, and the class-0 points, in the same
  windows, through the Dataset accessor ``ds.gridflow.filter``; their
  ratio is class 0's share of each neighbourhood.

Printed: the sign map of ``contrast`` (``+`` class 0, ``-`` class 1,
``.`` a tie or no points), its corner values (sums over the 3 x 3 cells
of the grid that a corner's window covers), and the range of the share.

Run::

    python examples/window_filter.py [--store grid.zarr]

It takes a second or two; without ``--store`` the store is a temporary one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

import numpy as np


def make_points(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two gaussian clouds in [0, 2] x [0, 4], overlapping in the middle."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    centres = np.array([[0.8, 1.4], [1.2, 2.6]])
    points = centres[labels] + rng.normal(scale=0.45, size=(n, 2))
    return np.clip(points, [0, 0], [2, 4]), labels


def run(store: str) -> dict[str, Any]:
    """Bin, filter twice; the store's filter outputs as arrays."""
    import gridflow

    points, labels = make_points()
    gridflow.bin_points(
        points, store, labels=labels, bins=(24, 48), bounds=[(0, 2), (0, 4)], overwrite=True
    )
    ds = gridflow.window_filter(
        store,
        "counts[0]**2 - counts[1]**2",
        kernel="box",
        window=2,
        boundary="open",
        name="contrast",
    )
    window = {"kernel": "box", "window": 2, "boundary": "open"}
    ds = ds.gridflow.filter("counts[0] + counts[1]", name="total", **window)
    ds = ds.gridflow.filter("counts[0]", name="zeros", **window)
    total = ds["total"].values
    return {
        "contrast": ds["contrast"].values,
        "total": total,
        "share": np.divide(
            ds["zeros"].values, total, out=np.full(total.shape, np.nan), where=total > 0
        ),
        "counts": ds["counts"].values,
        "outputs": sorted(ds.attrs["gridflow_stages"]["filter"]["outputs"]),
    }


def sign_map(values: np.ndarray) -> str:
    """One character per cell: a row per cell of the first dim, the second across."""
    chars = np.where(values > 0, "+", np.where(values < 0, "-", "."))
    return "\n".join("".join(row) for row in chars)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="grid store to write (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.store or os.path.join(tmp, "grid.zarr"))
    contrast = result["contrast"]
    print("windowed sum of counts[0]**2 - counts[1]**2 (box, radius 2, open boundary):")
    print(sign_map(contrast))
    corners = [contrast[0, 0], contrast[0, -1], contrast[-1, 0], contrast[-1, -1]]
    print("corner values:", ", ".join(f"{v:g}" for v in corners))
    share = result["share"]
    print(
        f"class 0 share of the points in a window: {np.nanmin(share):.3f} .. {np.nanmax(share):.3f}"
    )
    print("filter outputs in the store:", ", ".join(result["outputs"]))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
