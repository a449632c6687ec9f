"""Colour quantization by density clustering, next to k-means.

The classic k-means task: redraw an image with a few colours. Here the
pixels of scikit-image's astronaut (512 x 512) are points in RGB space,
binned into a 3-D grid of colour counts; gridflow clusters the grid by
density (:func:`gridflow.cluster`: filtered density, equalized levels,
connected components, every cell filled with a cluster) and each pixel takes
the mean colour of its cluster. scikit-learn's KMeans then quantizes the same
pixels with the same number of colours.

Printed: for each method the number of colours, the reconstruction error
(the sum over pixels of the squared RGB distance to the pixel's colour, the
cost k-means minimises, and its mean per pixel) and the seconds taken
(gridflow: binning, clustering and reading each pixel's cluster; KMeans: fit
and predict). Saved: the three images side by side.

Run::

    python examples/color_quantization.py [--small] [--out color_quantization.png]

``--small`` uses every fourth pixel in each direction (128 x 128) and a
coarser grid: a few seconds. Needs scikit-image, scikit-learn and matplotlib
(``pip install -e '.[examples]'``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np


def quantize_gridflow(
    pixels: np.ndarray, *, bins: int, window: int, levels: int, min_cells: int
) -> tuple[np.ndarray, np.ndarray, float, dict[str, Any]]:
    """Cluster ids per pixel, the colour of each cluster, seconds, and the stage record."""
    import gridflow as gf

    t0 = time.perf_counter()
    grid = gf.bin_points(
        pixels, labels=np.zeros(len(pixels), dtype=np.int64), bins=bins, bounds=(0, 256)
    )
    grid = gf.cluster(
        grid,
        window=window,
        iterations=3,
        levels=levels,
        method="distinct",
        seed="counts",
        min_cells=min_cells,
        boundary="open",
        fill=True,
    )
    ids = gf.predict(grid, pixels, variable="cluster").codes
    colours = _means(pixels, ids)
    seconds = time.perf_counter() - t0
    return ids, colours, seconds, grid.attrs["gridflow_stages"]["cluster"]


def quantize_kmeans(pixels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    from sklearn.cluster import KMeans

    t0 = time.perf_counter()
    km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(pixels)
    ids = km.predict(pixels)
    seconds = time.perf_counter() - t0
    return ids, km.cluster_centers_, seconds


def _means(pixels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Mean colour of each cluster: the colour that minimises its squared error."""
    k = int(ids.max()) + 1
    sums = np.stack([np.bincount(ids, weights=pixels[:, c], minlength=k) for c in range(3)], 1)
    return sums / np.maximum(np.bincount(ids, minlength=k), 1)[:, None]


def reconstruction_error(pixels: np.ndarray, ids: np.ndarray, colours: np.ndarray) -> float:
    """Sum over pixels of the squared RGB distance to the pixel's colour."""
    return float(((pixels - colours[ids]) ** 2).sum())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="128 x 128 pixels, a coarser grid")
    parser.add_argument("--bins", type=int, default=None, help="Bins per RGB axis (32; small 16).")
    parser.add_argument("--window", type=int, default=1, help="Density window radius.")
    parser.add_argument("--levels", type=int, default=32, help="Equalized density levels.")
    parser.add_argument(
        "--min-cells", type=int, default=None, help="Smallest cluster (5; small 3)."
    )
    parser.add_argument("--out", default="color_quantization.png", help="Image file to write.")
    args = parser.parse_args(argv)

    import skimage.data

    image = skimage.data.astronaut()
    if args.small:
        image = image[::4, ::4]
    bins = args.bins or (16 if args.small else 32)
    min_cells = args.min_cells or (3 if args.small else 5)
    pixels = image.reshape(-1, 3).astype(np.float64)

    ids, colours, seconds, stage = quantize_gridflow(
        pixels, bins=bins, window=args.window, levels=args.levels, min_cells=min_cells
    )
    k = len(colours)
    km_ids, km_colours, km_seconds = quantize_kmeans(pixels, k)
    rows = [
        ("gridflow.cluster", k, reconstruction_error(pixels, ids, colours), seconds),
        ("sklearn KMeans", k, reconstruction_error(pixels, km_ids, km_colours), km_seconds),
    ]
    print(
        f"{image.shape[0]} x {image.shape[1]} pixels; gridflow: {bins}^3 bins, window "
        f"{args.window}, {args.levels} levels, level {stage['cut_level']} cut"
    )
    print(f"{'method':<18} {'colours':>7} {'squared error':>15} {'per pixel':>10} {'seconds':>8}")
    for name, n, sse, s in rows:
        print(f"{name:<18} {n:>7} {sse:>15.4g} {sse / len(pixels):>10.1f} {s:>8.2f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = image.shape
    panels = [
        ("original", image),
        (f"gridflow, {k} colours", colours[ids].reshape(shape).round().astype(np.uint8)),
        (f"KMeans, {k} colours", km_colours[km_ids].reshape(shape).round().astype(np.uint8)),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (title, img) in zip(axes, panels, strict=True):
        ax.imshow(img)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    plt.close(fig)
    print(f"wrote {os.path.abspath(args.out)}")
    return {"rows": rows, "ids": ids, "colours": colours, "pixels": pixels, "out": args.out}


if __name__ == "__main__":
    main(sys.argv[1:])
