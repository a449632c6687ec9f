"""Classification speed and accuracy: gridflow vs the reference code and kNN.

Three tables, measured in one run (``make bench`` runs
``.venv/bin/python benchmarks/bench_classify.py``):

``reference``
    The reference method's own configuration (400 x 400 cells, 5 classes,
    window 20, 3 passes, inverse-distance weights) on the reference input
    ``shared/reference/granville_gd_400_w20.npz``: gridflow's wall time for
    ``classify`` (labels and density computed), against the time the
    reference implementation recorded for itself, and whether the labels
    agree wherever the reference's top vote is unique.
``window``
    Seconds per iteration against the window radius (1, 3, 10, 30) on a
    4096 x 4096 x 5-class grid of synthetic points, for one chunk per grid
    (steps wrap around the periodic grid) and for 1024-cell chunks (halos).
``knn``
    Accuracy (with the Bayes rate beside it) and fit + predict time of
    gridflow and of scikit-learn's KNeighborsClassifier (k = 1, 5, 15, 51,
    151) on the same split of synthetic points with overlapping classes, in
    2-D and 3-D, and prediction throughput on query points. kNN's
    throughput is measured on a subsample of the queries (it is slow) and
    reported per second; the table says how many it predicted.

Timings are best of ``--repeat`` runs after a warm-up; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Any

import _common
import dask
import numpy as np
from _common import best_of, grid_from_counts, one_hot, table

import gridflow as gf

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.path.join(HERE, "..", "..", "shared", "reference", "granville_gd_400_w20.npz")


def machine() -> str:
    return _common.machine("numpy", "scipy", "dask", "sklearn", "gridflow")


# --- the reference configuration ---------------------------------------------------


def bench_reference(repeat: int) -> str:
    z = np.load(REFERENCE)
    bitmap = z["input_bitmap"]
    counts = one_hot(bitmap, 5)
    ds = grid_from_counts(counts, 400)
    w, nloop = int(z["params"][4]), int(z["params"][5])

    def run() -> Any:
        out = gf.classify(ds, window=w, iterations=nloop)
        return dask.compute(out["label"].data, out["density"].data, scheduler="threads")

    seconds, (labels, density) = best_of(run, repeat)
    ref_labels = z["labels"].astype(np.int64)
    from gridflow.engine.vote import run_numpy
    from gridflow.kernels import parse_kernel

    L0 = bitmap.astype(np.int32)
    L0[L0 == 255] = -1
    _, _, votes = run_numpy(
        L0, nclasses=5, kernel=parse_kernel("inverse_distance", window=w, ndim=2), iterations=nloop
    )
    top = np.sort(votes, axis=0)[-2:]
    unique = top[1] > top[0]
    agree = np.mean(labels[unique] == ref_labels[unique])
    rel = np.max(np.abs(density - z["density"]) / z["density"])
    ref_seconds = float(z["seconds"])
    rows = [
        [
            "400x400, 5 classes, w=20, 3 passes",
            f"{ref_seconds:.1f}",
            f"{seconds * 1000:.1f}",
            f"{ref_seconds / seconds:,.0f}x",
            f"{agree:.4%} of {unique.sum():,} cells",
            f"{rel:.1e}",
        ]
    ]
    return table(
        [
            "configuration",
            "reference s",
            "gridflow ms",
            "speed-up",
            "labels equal (unique top vote)",
            "density max rel. diff",
        ],
        rows,
    )


# --- seconds per iteration against the window ------------------------------------------


def bench_window(repeat: int, size: int, points: int) -> str:
    process = gf.PointProcess(dims=2, classes=5, scale=0.15, seed=7)
    frame = process.sample(0, points)
    base = gf.bin_points(
        frame, bins=size, bounds=(0, 1), periodic=True, classes=range(5), chunks=size
    )
    counts = base["counts"].values
    del frame, base
    gc.collect()
    rows = []
    for chunks in (size, 1024):
        ds = grid_from_counts(counts, chunks)
        for w in (1, 3, 10, 30):

            def run(n: int, ds: Any = ds, w: int = w) -> float:
                t0 = time.perf_counter()
                out = gf.classify(ds, window=w, iterations=n)
                dask.compute(out["label"].data, out["density"].data)
                return time.perf_counter() - t0

            run(1)  # warm-up
            one = min(run(1) for _ in range(repeat))
            three = min(run(3) for _ in range(repeat))
            per_step = (three - one) / 2
            rows.append(
                [
                    f"{size}x{size}x5",
                    "one chunk (wraps)" if chunks == size else f"{chunks} chunks (halos)",
                    w,
                    f"{one:.2f}",
                    f"{per_step:.2f}",
                ]
            )
    return table(
        ["grid", "chunking", "window w", "1 iteration s", "each further iteration s"], rows
    )


# --- accuracy and time against kNN ----------------------------------------------------


def bench_knn(repeat: int, train: int, queries: int, knn_queries: int) -> str:
    from sklearn.neighbors import KNeighborsClassifier

    from gridflow.estimators import GridClassifier

    rows = []
    for dims, scale in ((2, 0.15), (3, 0.1)):
        process = gf.PointProcess(dims=dims, classes=5, scale=scale, seed=11)
        tr = process.sample(0, train, bayes=True)
        te = process.sample(train, train + 100_000, bayes=True)
        cols = [f"x{i}" for i in range(dims)]
        Xtr, ytr = tr[cols].to_numpy(), tr["label"].to_numpy()
        Xte, yte = te[cols].to_numpy(), te["label"].to_numpy()
        bayes = float(np.mean(te["bayes"].to_numpy() == yte))
        Xq = process.sample(0, queries)[cols].to_numpy()

        def gridflow_fit_predict(data: tuple = (Xtr, ytr, Xte, yte)) -> tuple[float, Any]:
            clf = GridClassifier(boundary="periodic", bounds=(0, 1), periodic=True)
            clf.fit(data[0], data[1])
            return clf.score(data[2], data[3]), clf

        seconds, (acc, clf) = best_of(gridflow_fit_predict, repeat)
        qs, _ = best_of(lambda clf=clf, Xq=Xq: clf.predict(Xq), repeat)
        rows.append(
            [
                f"{dims}-D",
                f"gridflow (bins {clf.bins_}, w={clf.window_})",
                f"{acc:.2%}",
                f"{bayes:.2%}",
                f"{seconds:.2f}",
                f"{queries / qs / 1e6:.2f} M/s ({queries:,} queries)",
            ]
        )
        for k in (1, 5, 15, 51, 151):
            knn = KNeighborsClassifier(n_neighbors=k, n_jobs=-1)
            t0 = time.perf_counter()
            knn.fit(Xtr, ytr)
            knn_acc = knn.score(Xte, yte)
            fit_predict = time.perf_counter() - t0
            t0 = time.perf_counter()
            knn.predict(Xq[:knn_queries])
            rate = knn_queries / (time.perf_counter() - t0)
            rows.append(
                [
                    f"{dims}-D",
                    f"KNeighborsClassifier k={k}",
                    f"{knn_acc:.2%}",
                    f"{bayes:.2%}",
                    f"{fit_predict:.2f}",
                    f"{rate / 1e6:.3f} M/s ({knn_queries:,} queries)",
                ]
            )
        gc.collect()
    return table(
        [
            "data",
            "method",
            "accuracy (100k test points)",
            "Bayes rate",
            "fit + predict s",
            "prediction throughput",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="reference,window,knn")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--size", type=int, default=4096, help="grid side of the window case")
    p.add_argument("--points", type=int, default=10_000_000, help="points of the window case")
    p.add_argument("--train", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=10_000_000)
    p.add_argument("--knn-queries", type=int, default=100_000)
    p.add_argument("--output", default=None, help="also write the tables to this file")
    args = p.parse_args(argv)
    cases = args.cases.split(",")
    out = [f"Machine: {machine()}", ""]
    with dask.config.set(scheduler="threads"):
        if "reference" in cases:
            print("[reference]", file=sys.stderr)
            out += ["### Reference configuration", "", bench_reference(args.repeat), ""]
        if "window" in cases:
            print("[window]", file=sys.stderr)
            out += [
                "### Seconds per iteration against the window",
                "",
                bench_window(args.repeat, args.size, args.points),
                "",
            ]
        if "knn" in cases:
            print("[knn]", file=sys.stderr)
            out += [
                "### Accuracy and time against kNN",
                "",
                bench_knn(args.repeat, args.train, args.queries, args.knn_queries),
                "",
            ]
    text = "\n".join(out)
    return _common.emit(text, args.output)


if __name__ == "__main__":
    sys.exit(main())
