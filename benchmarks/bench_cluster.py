"""Clustering quality and time: gridflow vs KMeans, GaussianMixture and HDBSCAN.

Data: five classes of :mod:`gridflow.synth` points (logistic perturbations,
one lattice point per class, ``modulo=False``: blobs in the plane or in
space), their centres evenly spaced on a circle of radius 0.3 (in 3-D also
0.15 above or below the plane). ``separated``: scale 0.02 (adjacent centres
about 10 standard deviations apart); ``overlapping``: scale 0.05 (about 4).
Every method clusters the same points; the adjusted Rand index compares its
clusters with the generating classes (noise, -1, counts as one more
cluster).

Methods:

``gridflow``
    ``GridClusterer()`` with its defaults (a grid of about 16 points per
    cell, a density window of about 500 points, 32 levels, the most
    persistent cut, every cell filled): binning, clustering and reading the
    cluster of every point. It finds the number of clusters itself.
``KMeans``, ``GaussianMixture``
    scikit-learn, told the true number of classes (5); ``n_init=1``,
    ``random_state=0``. GaussianMixture is fitted on at most
    ``--gmm-points`` points (the first ones) and predicts all of them.
``HDBSCAN``
    ``sklearn.cluster.HDBSCAN(min_cluster_size=n // 100, min_samples=10)`` on
    the first ``--hdbscan-points`` points only (it needs minutes for 10^5
    points and grows faster than n log n); its index is on those points. It
    finds the number of clusters itself. The first points are the same for
    every size, so it runs once per data set.

A second table times HDBSCAN alone on the first ``--hdbscan-scaling``
points of the 2-D separated data (its growth decides what the full size
would cost), next to gridflow on the same points.

Timings are one run after a warm-up (numba compiles gridflow's binning
kernel on first use); nothing is asserted. ``make bench`` runs
``.venv/bin/python benchmarks/bench_cluster.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Any

import _common
import dask
import numpy as np
from _common import table

import gridflow as gf
from gridflow.synth import PointProcess

CLASSES = 5
SCALES = {"separated": 0.02, "overlapping": 0.05}


def process(dims: int, scale: float) -> PointProcess:
    angle = 2 * np.pi * np.arange(CLASSES) / CLASSES
    shifts = np.full((CLASSES, dims), 0.5)
    shifts[:, 0] += 0.3 * np.cos(angle)
    shifts[:, 1] += 0.3 * np.sin(angle)
    if dims == 3:
        shifts[:, 2] += 0.15 * np.array([1, -1, 1, -1, 0])
    return PointProcess(
        dims=dims, classes=CLASSES, scale=scale, seed=1, extent=0, modulo=False, shifts=shifts
    )


def points(dims: int, scale: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    frame = process(dims, scale).sample(0, n)
    X = frame[[f"x{i}" for i in range(dims)]].to_numpy()
    return np.ascontiguousarray(X), frame["label"].to_numpy()


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run_gridflow(X: np.ndarray) -> tuple[float, np.ndarray, str]:
    seconds, est = timed(lambda: gf.GridClusterer().fit(X))
    bins = "x".join(map(str, est.bins_))
    return seconds, est.labels_, f"gridflow (bins {bins}, w={est.window_}, level {est.level_})"


def run_kmeans(X: np.ndarray) -> tuple[float, np.ndarray]:
    from sklearn.cluster import KMeans

    seconds, km = timed(lambda: KMeans(CLASSES, n_init=1, random_state=0).fit(X))
    return seconds, km.labels_


def run_gmm(X: np.ndarray, fit_points: int) -> tuple[float, np.ndarray]:
    from sklearn.mixture import GaussianMixture

    def fit_predict() -> np.ndarray:
        gmm = GaussianMixture(CLASSES, random_state=0).fit(X[:fit_points])
        return gmm.predict(X)

    return timed(fit_predict)


def run_hdbscan(X: np.ndarray) -> tuple[float, np.ndarray]:
    from sklearn.cluster import HDBSCAN

    est = HDBSCAN(min_cluster_size=max(5, len(X) // 100), min_samples=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the 'copy' default is changing
        seconds, est = timed(lambda: est.fit(X))
    return seconds, est.labels_


def n_found(labels: np.ndarray) -> str:
    found = len(np.unique(labels[labels >= 0]))
    noise = float(np.mean(labels < 0))
    return f"{found}" + (f" + {noise:.1%} noise" if noise > 0 else "")


def machine() -> str:
    return _common.machine("numpy", "scipy", "dask", "sklearn", "gridflow")


def bench(sizes: list[int], dims_list: list[int], kinds: list[str], args: Any) -> str:
    from sklearn.metrics import adjusted_rand_score as ari

    rows = []
    for dims in dims_list:
        gf.GridClusterer().fit(points(dims, 0.02, 10_000)[0])  # warm-up
        for kind in kinds:
            scale = SCALES[kind]
            hdb = None
            for n in sizes:
                X, y = points(dims, scale, n)
                name = f"{dims}-D {kind}"
                print(f"[{name}, {n:,} points]", file=sys.stderr)
                seconds, labels, label = run_gridflow(X)
                rows.append(
                    [name, f"{n:,}", label, f"{n:,}", n_found(labels), ari(y, labels), seconds]
                )
                seconds, labels = run_kmeans(X)
                rows.append(
                    [name, f"{n:,}", "KMeans (k=5)", f"{n:,}", n_found(labels), ari(y, labels), seconds]
                )  # fmt: skip
                fit = min(n, args.gmm_points)
                seconds, labels = run_gmm(X, fit)
                rows.append(
                    [name, f"{n:,}", f"GaussianMixture (k=5, fitted on {fit:,})", f"{n:,}",
                     n_found(labels), ari(y, labels), seconds]
                )  # fmt: skip
                m = min(n, args.hdbscan_points)
                reused = hdb is not None and hdb[0] == m
                if not reused:
                    seconds, labels = run_hdbscan(X[:m])
                    hdb = (m, seconds, labels, ari(y[:m], labels))
                label = f"HDBSCAN (first {m:,} points{', the run above' if reused else ''})"
                rows.append([name, f"{n:,}", label, f"{m:,}", n_found(hdb[2]), hdb[3], hdb[1]])
                del X, y
    for r in rows:
        r[5] = f"{r[5]:.4f}"
        r[6] = f"{r[6]:.2f}"
    return table(
        ["data", "points", "method", "clustered points", "clusters", "ARI", "seconds"], rows
    )


def bench_scaling(sizes: list[int]) -> str:
    from sklearn.metrics import adjusted_rand_score as ari

    X, y = points(2, SCALES["separated"], max(sizes))
    gf.GridClusterer().fit(X[:10_000])  # warm-up
    rows = []
    for m in sizes:
        print(f"[HDBSCAN scaling, {m:,} points]", file=sys.stderr)
        seconds, labels = run_hdbscan(X[:m])
        gf_seconds, gf_labels, _ = run_gridflow(X[:m])
        rows.append(
            [f"{m:,}", f"{seconds:.2f}", f"{ari(y[:m], labels):.4f}", f"{gf_seconds:.2f}",
             f"{ari(y[:m], gf_labels):.4f}"]
        )  # fmt: skip
    return table(
        ["points (2-D separated)", "HDBSCAN s", "HDBSCAN ARI", "gridflow s", "gridflow ARI"], rows
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000000,10000000", help="numbers of points")
    p.add_argument("--dims", default="2,3")
    p.add_argument("--kinds", default="separated,overlapping")
    p.add_argument("--hdbscan-points", type=int, default=100_000)
    p.add_argument("--gmm-points", type=int, default=1_000_000)
    p.add_argument("--hdbscan-scaling", default="10000,30000,100000", help="'' to skip")
    p.add_argument("--output", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    kinds = args.kinds.split(",")
    with dask.config.set(scheduler="threads"):
        out = [f"Machine: {machine()}", "", bench(sizes, dims, kinds, args)]
        if args.hdbscan_scaling:
            scaling = [int(float(s)) for s in args.hdbscan_scaling.split(",")]
            out += ["", bench_scaling(scaling)]
    text = "\n".join(out)
    return _common.emit(text, args.output)


if __name__ == "__main__":
    sys.exit(main())
