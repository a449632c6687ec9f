"""Higher-dimensional classification: gridflow against kNN in 4 to 10 dims, sparse against dense.

Two tables, measured side by side in one run
(``.venv/bin/python benchmarks/bench_highd.py``; ``--quick`` for a fast check):

``highd``
    Per dimension ``d`` in ``--dims`` (default 4, 6, 8, 10): synthetic data of
    :mod:`gridflow.synth` with the Bayes class (what ``gridflow synth --bayes``
    writes: 5 classes, scale 0.15, periodic on ``[0, 1)**d``), one generated
    set split into ``--points`` training points and ``--test`` test points.
    Rows: GridClassifier with its default rule, GridClassifier tuned
    (:meth:`~gridflow.estimators.GridClassifier.tune`, timed with its refit),
    and scikit-learn's KNeighborsClassifier (k = 15, 51, 151). Columns:
    accuracy on the test points beside the Bayes rate (the accuracy of the
    Bayes-optimal class on the same points), fit, predict and fit + predict
    seconds, prediction throughput on ``--queries`` uniform random queries
    (kNN k=15 only, on the first ``--knn-queries`` of them: it is slow), and
    peak memory.
``layout``
    The same vote filter (GridClassifier's: inverse-distance kernel, counts
    seed, periodic, probabilities) on a dense and on a sparse grid of the
    same counts, on a 3-D and a 4-D grid small enough for both (64**3 and
    32**4 cells x 5 classes, ``--points`` points), window 1 and 2, 3
    iterations: :func:`gridflow.bin_points` once per layout, then
    :func:`gridflow.classify` timed on the binned counts; seconds per vote
    step, peak memory, and whether the labels are equal (the sparse labels
    densified with :func:`gridflow.sparse_grid.densify`).

``large``
    ``--large-points`` points (default 1e8) of the same process in 6-D,
    generated as a dask DataFrame (:func:`gridflow.make_points`), binned
    into a sparse store of 24**6 cells x 5 classes on disk
    (``bin_points(layout="sparse")``), then classified from the store by the
    sparse engine (``support="occupied"``, box kernel, w=1, one step from the
    counts, periodic): seconds, peak memory, the occupied cells, and the
    labels and confidence of the corner block of 3**3 x 24**3 cells checked
    against NumPy window sums of its counts (with the periodic halo).

Every row runs in a fresh subprocess of this script (a hidden ``--_worker``
flag) that reports its own peak resident memory (``ru_maxrss`` of
``RUSAGE_SELF``), so that one model's memory does not hide another's. Dask
runs on its threaded scheduler inside that process, as in the other
benchmarks (no cluster). Timings are best of ``--repeat`` runs (default 1)
after an untimed warm-up (gridflow: a fit on a subset of the training points
on the same grid, which loads or compiles its numba kernels); nothing is
asserted.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

#: Seeds of the generated points and of the uniform queries.
DATA_SEED = 11
QUERY_SEED = 12345
CLASSES = 5
SCALE = 0.15
#: Training points of gridflow's untimed warm-up fit (on the full fit's grid).
WARM_POINTS = 20_000
#: Grids of the layout table: (dims, bins per dim).
LAYOUT_GRIDS = ((3, 64), (4, 32))
LAYOUT_WINDOWS = (1, 2)
LAYOUT_ITERATIONS = 3
#: (layout, support) of each run of the layout table: the dense grid, and the
#: sparse one on the reachable cells (the dense result exactly) and on the
#: occupied cells only (empty cells never vote: labels differ by design).
LAYOUT_RUNS = (("dense", "auto"), ("sparse", "reachable"), ("sparse", "occupied"))

#: The large case: dims, bins per dim, points (``--large-points``).
LARGE_DIMS = 6
LARGE_BINS = 24
LARGE_POINTS = 100_000_000

FULL = {
    "points": 1_000_000,
    "test": 100_000,
    "queries": 10_000_000,
    "dims": [4, 6, 8, 10],
    "ks": [15, 51, 151],
}
QUICK = {"points": 200_000, "test": 20_000, "queries": 1_000_000, "dims": [4, 6], "ks": [15, 51]}
#: kNN predicts this many of the queries for its throughput.
KNN_QUERIES = 20_000
#: The kNN whose throughput is measured.
KNN_THROUGHPUT_K = 15


def machine() -> str:
    import _common

    return _common.machine("numpy", "scipy", "dask", "numba", "sparse", "sklearn", "gridflow")


def count(text: str) -> int:
    """An integer flag that may be written 1e6 or 1_000_000."""
    return int(float(text))


# --- the worker: one model, in a fresh process ---------------------------------------------


def peak_mib() -> float:
    """Peak resident memory of this process so far, MiB (ru_maxrss: KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def best(fn: Any, repeat: int) -> tuple[float, Any]:
    from _common import best_of

    return best_of(fn, repeat, warm=False, collect=True)


def load_split(data: str) -> tuple[np.ndarray, ...]:
    return tuple(np.load(os.path.join(data, f"{n}.npy")) for n in ("Xtr", "ytr", "Xte", "yte"))


def grid_estimator(**params: Any) -> Any:
    from gridflow.estimators import GridClassifier

    return GridClassifier(boundary="periodic", bounds=(0, 1), periodic=True, **params)


def work_model(job: dict[str, Any]) -> dict[str, Any]:
    """Fit, predict and measure one row of the highd table."""
    import dask

    import gridflow.estimators as est

    dask.config.set(scheduler="threads")
    Xtr, ytr, Xte, yte = load_split(job["data"])
    n, d = Xtr.shape
    start = peak_mib()  # interpreter, libraries and the loaded split
    repeat = job["repeat"]
    out: dict[str, Any] = {"start_mib": start}
    if job["kind"] == "knn":
        from sklearn.neighbors import KNeighborsClassifier

        def fit() -> Any:
            return KNeighborsClassifier(n_neighbors=job["k"], n_jobs=-1).fit(Xtr, ytr)

        out["fit_s"], model = best(fit, repeat)
    else:
        # Warm-up on a subset, on the grid the full fit builds: numba kernels load.
        bins = est.default_grid(n, d)[0]
        warm = min(WARM_POINTS, n)
        grid_estimator(bins=bins).fit(Xtr[:warm], ytr[:warm])
        gc.collect()
        if job["kind"] == "tuned":
            out["fit_s"], model = best(lambda: grid_estimator().tune(Xtr, ytr), repeat)
            out["best_params"] = model.best_params_
            out["candidates"] = len(model.tune_results_)
        else:
            out["fit_s"], model = best(lambda: grid_estimator().fit(Xtr, ytr), repeat)
        out["grid"] = {
            "bins": list(model.bins_),
            "window": model.window_,
            "levels": model.levels_,
            "min_votes": model.min_votes_,
            "layout": model.layout_,
            "support": model.support_,
            "steps": model.n_iter_,
        }
    out["predict_s"], found = best(lambda: model.predict(Xte), repeat)
    out["accuracy"] = float(np.mean(found == yte))
    out["peak_mib"] = peak_mib()
    nq = job["queries"]
    if nq:
        Xq = np.random.default_rng(QUERY_SEED).random((nq, d))
        seconds, _ = best(lambda: model.predict(Xq), repeat)
        out["queries"], out["throughput"] = nq, nq / seconds
    return out


def work_layout(job: dict[str, Any]) -> dict[str, Any]:
    """Bin once with one layout, then time classify on the counts (layout table)."""
    import dask

    import gridflow as gf
    from gridflow.sparse_grid import densify, is_sparse

    dask.config.set(scheduler="threads")
    X = np.load(os.path.join(job["data"], "X.npy"))
    y = np.load(os.path.join(job["data"], "y.npy"))
    start = peak_mib()
    t0 = time.perf_counter()
    counts = gf.bin_points(
        X,
        labels=y,
        bins=job["bins"],
        bounds=(0, 1),
        periodic=True,
        classes=range(CLASSES),
        layout=job["layout"],
    ).persist()
    bin_s = time.perf_counter() - t0
    del X, y
    gc.collect()

    def run(iterations: int) -> Any:
        # As GridClassifier.fit classifies (one level: a 3-D or 4-D grid of given bins).
        grid = gf.classify(
            counts,
            kernel="inverse_distance",
            window=job["window"],
            iterations=iterations,
            boundary="periodic",
            seed="counts",
            probabilities=True,
            support=job["support"],
        )
        dask.compute(
            grid["label"].data,
            grid["confidence"].data,
            grid["density"].data,
            grid["probability"].data,
        )
        return grid

    run(1)  # warm-up: numba kernels load
    gc.collect()
    seconds, grid = best(lambda: run(job["iterations"]), job["repeat"])
    stage = grid.attrs["gridflow_stages"]["classify"]
    out = {
        "start_mib": start,
        "peak_mib": peak_mib(),
        "bin_s": bin_s,
        "classify_s": seconds,
        "steps": int(stage["steps"]),
        "support": stage["support"],
        "layout": "sparse" if is_sparse(grid["counts"]) else "dense",
    }
    np.save(job["labels"], densify(grid["label"]))
    return out


def work_large(job: dict[str, Any]) -> dict[str, Any]:
    """Bin ``points`` 6-D points into a sparse store, classify it from the store (large case)."""
    import dask

    import gridflow as gf
    from gridflow.sparse_grid import densify, is_sparse
    from gridflow.sparse_store import stored_cells

    dask.config.set(scheduler="threads")
    n, d, bins = job["points"], LARGE_DIMS, LARGE_BINS
    points = gf.make_points(
        n, dims=d, classes=CLASSES, scale=SCALE, seed=DATA_SEED, npartitions=max(1, n // 2_000_000)
    )
    store = os.path.join(job["tmp"], "large.zarr")
    t0 = time.perf_counter()
    grid = gf.bin_points(
        points, store, bins=bins, bounds=(0, 1), periodic=True, classes=range(CLASSES),
        layout="sparse",
    )  # fmt: skip
    bin_s = time.perf_counter() - t0
    bin_peak = peak_mib()
    report = grid.attrs["gridflow_stages"]["bin"]["report"]
    t0 = time.perf_counter()
    grid = gf.classify(
        store, kernel="box", window=1, iterations=1, seed="counts", support="occupied",
        boundary="periodic",
    )  # fmt: skip
    classify_s = time.perf_counter() - t0
    out = {
        "bin_s": bin_s,
        "bin_peak_mib": bin_peak,
        "classify_s": classify_s,
        "peak_mib": peak_mib(),
        "sparse": bool(is_sparse(grid["counts"]) and is_sparse(grid["label"])),
        "chunks": [int(c[0]) for c in grid["counts"].data.chunks[1:]],
        "binned": int(report["binned"]),
        "occupied": int(stored_cells(store, "label")),
        "cells": bins**d,
    }
    # The corner block (cells 0..2 of the 3 split dims), its halo wrapped: NumPy window sums.
    counts = grid["counts"].data
    ring = [slice(bins - 1, bins), slice(0, 4)]
    dense = densify(
        dask.array.concatenate(
            [
                dask.array.concatenate(
                    [
                        dask.array.concatenate([counts[:, a, b, c] for c in ring], axis=3)
                        for b in ring
                    ],
                    axis=2,
                )
                for a in ring
            ],
            axis=1,
        )
    ).astype(np.int64)
    votes = dense
    for axis in range(1, d + 1):  # box sums, w=1: wrapped along the whole dims
        votes = np.roll(votes, 1, axis) + votes + np.roll(votes, -1, axis)
    core = (slice(None), slice(1, 4), slice(1, 4), slice(1, 4))
    v, held = votes[core], dense[core].sum(axis=0) > 0
    total = v.sum(axis=0)
    ref = np.where(held & (total > 0), v.argmax(axis=0), -1)
    conf = np.where(held & (total > 0), v.max(axis=0) / np.where(total > 0, total, 1), 0)
    out["checked_cells"] = int(held.sum())
    out["labels_equal"] = bool(np.array_equal(densify(grid["label"].data[0:3, 0:3, 0:3]), ref))
    out["confidence_equal"] = bool(
        np.array_equal(densify(grid["confidence"].data[0:3, 0:3, 0:3]), conf.astype(np.float32))
    )
    return out


def worker(spec: str) -> int:
    job = json.loads(spec)
    work = {"layout": work_layout, "large": work_large}.get(job["kind"], work_model)
    try:
        out = work(job)
    except BaseException:
        out = {"error": traceback.format_exc()}
    with open(job["result"], "w") as f:
        json.dump(out, f)
    return 0


# --- the parent: jobs in subprocesses, tables ------------------------------------------------


class Runner:
    """Runs jobs in fresh subprocesses of this script and keeps their failures."""

    def __init__(self, tmp: str, timeout: float | None) -> None:
        self.tmp, self.timeout = tmp, timeout
        self.failures: list[str] = []
        self.jobs = 0

    def __call__(self, what: str, job: dict[str, Any]) -> dict[str, Any]:
        self.jobs += 1
        job = {**job, "result": os.path.join(self.tmp, f"result{self.jobs}.json")}
        cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(job)]
        print(f"[{what}]", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            # The worker's own output (logs, progress) goes to stderr: stdout holds the tables.
            rc = subprocess.run(cmd, stdout=sys.stderr, timeout=self.timeout).returncode
        except subprocess.TimeoutExpired:
            return self.fail(what, f"timed out after {self.timeout:g} s")
        wall = time.perf_counter() - t0
        print(f"[{what}] {wall:.1f} s", file=sys.stderr, flush=True)
        try:
            with open(job["result"]) as f:
                out = json.load(f)
        except (OSError, ValueError):
            return self.fail(what, f"worker exited with status {rc} and no result")
        if "error" in out:
            return self.fail(what, out["error"])
        return out

    def fail(self, what: str, why: str) -> dict[str, Any]:
        print(f"[{what}] FAILED\n{why}", file=sys.stderr, flush=True)
        self.failures.append(f"- {what}:\n\n```\n{why.rstrip()}\n```")
        last = why.strip().splitlines()[-1] if why.strip() else "failed"
        return {"error": last}


def fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def fmt_mib(x: float) -> str:
    return f"{x:,.0f}"


def fmt_rate(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def grid_name(g: dict[str, Any]) -> str:
    bins = g["bins"]
    side = f"{bins[0]}^{len(bins)}" if len(set(bins)) == 1 else "x".join(map(str, bins))
    return (
        f"bins {side}, w={g['window']}, {g['levels']} levels, min_votes {g['min_votes']:g}, "
        f"{g['layout']}/{g['support']}, {g['steps']} step{'s' * (g['steps'] != 1)}"
    )


def model_row(d: int, method: str, bayes: float, r: dict[str, Any]) -> list[Any]:
    if "error" in r:
        return [f"{d}-D", method, f"failed: {r['error']}", f"{bayes:.2%}", *["—"] * 6]
    return [
        f"{d}-D",
        method,
        f"{r['accuracy']:.2%}",
        f"{bayes:.2%}",
        fmt_s(r["fit_s"]),
        fmt_s(r["predict_s"]),
        fmt_s(r["fit_s"] + r["predict_s"]),
        fmt_rate(r.get("throughput")),
        fmt_mib(r["peak_mib"]),
        fmt_mib(r["peak_mib"] - r["start_mib"]),
    ]


def bench_highd(args: argparse.Namespace, run: Runner) -> str:
    from _common import table

    import gridflow as gf

    rows, starts = [], {}
    for d in args.dims:
        process = gf.PointProcess(dims=d, classes=CLASSES, scale=SCALE, seed=DATA_SEED)
        frame = process.sample(0, args.points + args.test, bayes=True)
        cols = [f"x{i}" for i in range(d)]
        X, y = frame[cols].to_numpy(), frame["label"].to_numpy()
        test = slice(args.points, None)
        bayes = float(np.mean(frame["bayes"].to_numpy()[test] == y[test]))
        data = os.path.join(run.tmp, f"highd{d}")
        os.makedirs(data, exist_ok=True)
        split = {"Xtr": X[: args.points], "ytr": y[: args.points], "Xte": X[test], "yte": y[test]}
        for name, a in split.items():
            np.save(os.path.join(data, f"{name}.npy"), np.ascontiguousarray(a))
        del frame, X, y, split
        gc.collect()
        base = {"data": data, "repeat": args.repeat}

        r = run(f"{d}-D gridflow default", {**base, "kind": "default", "queries": args.queries})
        method = "gridflow default" + (f" ({grid_name(r['grid'])})" if "grid" in r else "")
        rows.append(model_row(d, method, bayes, r))
        starts.setdefault(d, r.get("start_mib"))
        if not args.skip_tune:
            r = run(f"{d}-D gridflow tuned", {**base, "kind": "tuned", "queries": args.queries})
            method = "gridflow tuned"
            if "grid" in r:
                best = ", ".join(
                    f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in r["best_params"].items()
                )
                method += (
                    f" (best_params_: {best}, of {r['candidates']} candidates; "
                    f"fit s = tune + refit; {grid_name(r['grid'])})"
                )
            rows.append(model_row(d, method, bayes, r))
        for k in args.ks:
            nq = args.knn_queries if k == KNN_THROUGHPUT_K else 0
            r = run(f"{d}-D kNN k={k}", {**base, "kind": "knn", "k": k, "queries": nq})
            rows.append(model_row(d, f"KNeighborsClassifier k={k}", bayes, r))
            if starts.get(d) is None:
                starts[d] = r.get("start_mib")
    headers = [
        "data",
        "method",
        f"accuracy ({args.test:,} test points)",
        "Bayes rate",
        "fit s",
        f"predict s ({args.test:,} points)",
        "fit + predict s",
        f"throughput, points/s (gridflow: {args.queries:,} uniform queries; "
        f"kNN k={KNN_THROUGHPUT_K}: the first {args.knn_queries:,} of them)",
        "peak RSS MiB",
        "above start MiB",
    ]
    start = ", ".join(f"{d}-D {v:,.0f}" for d, v in starts.items() if v is not None)
    notes = [
        "",
        f"{args.points:,} training points, {CLASSES} classes, scale {SCALE}, periodic on "
        "[0, 1)^d. gridflow is GridClassifier(boundary='periodic', bounds=(0, 1), "
        "periodic=True); kNN is scikit-learn's KNeighborsClassifier(n_neighbors=k, "
        "n_jobs=-1) with its default algorithm ('auto') on the raw coordinates: it ignores "
        "the wrap (points near a face of the box have neighbours across it that kNN "
        "measures as far).",
        "Each row ran in a fresh process. peak RSS: that process's ru_maxrss through fit "
        "and predict on the test points (the throughput run afterwards is not included); "
        "above start: minus its ru_maxrss after importing the libraries and loading the "
        f"split (MiB: {start}). gridflow's timings follow an untimed warm-up fit on "
        f"{WARM_POINTS:,} of the training points on the same grid.",
    ]
    return table(headers, rows) + "\n" + "\n".join(notes)


def compare(dense: np.ndarray, sparse: np.ndarray, where: np.ndarray | None) -> str:
    """Whether the sparse labels equal the dense ones (on the cells ``where``, or all)."""
    if dense.shape != sparse.shape:
        return f"shapes differ: {dense.shape} and {sparse.shape}"
    if where is None:
        differ, of = int(np.count_nonzero(dense != sparse)), "cells"
        total = dense.size
    else:
        differ, of = int(np.count_nonzero(dense[where] != sparse[where])), "cells holding points"
        total = int(where.sum())
    if differ == 0:
        return "equal" if where is None else f"equal on the {total:,} {of}"
    return f"differ in {differ:,} of {total:,} {of}"


def bench_layout(args: argparse.Namespace, run: Runner) -> str:
    from _common import table

    import gridflow as gf

    rows = []
    for d, bins in LAYOUT_GRIDS:
        process = gf.PointProcess(dims=d, classes=CLASSES, scale=SCALE, seed=DATA_SEED)
        frame = process.sample(0, args.points)
        X = frame[[f"x{i}" for i in range(d)]].to_numpy()
        data = os.path.join(run.tmp, f"layout{d}")
        os.makedirs(data, exist_ok=True)
        np.save(os.path.join(data, "X.npy"), X)
        np.save(os.path.join(data, "y.npy"), frame["label"].to_numpy())
        cells = np.floor(X * bins).astype(np.int64) % bins
        flat = np.ravel_multi_index(tuple(cells.T), (bins,) * d)
        held = np.zeros(bins**d, dtype=bool)
        held[flat] = True
        held = held.reshape((bins,) * d)
        occupied = held.mean()
        del frame, X, cells, flat
        gc.collect()
        for w in LAYOUT_WINDOWS:
            dense = None
            for layout, support in LAYOUT_RUNS:
                path = os.path.join(data, f"labels_{layout}_{support}_w{w}.npy")
                job = {
                    "kind": "layout",
                    "data": data,
                    "bins": bins,
                    "layout": layout,
                    "support": support,
                    "window": w,
                    "iterations": LAYOUT_ITERATIONS,
                    "repeat": args.repeat,
                    "labels": path,
                }
                r = run(f"{d}-D {bins} bins w={w} {layout} support={support}", job)
                grid = f"{bins}^{d} x {CLASSES} ({occupied:.1%} occupied)"
                if "error" in r:
                    rows.append([grid, w, layout, f"failed: {r['error']}", *["—"] * 5])
                    continue
                found = np.load(path)
                if layout == "dense":
                    dense, equal = found, "(reference)"
                elif dense is None:
                    equal = "— (no dense run)"
                else:
                    equal = compare(dense, found, held if support == "occupied" else None)
                rows.append(
                    [
                        grid,
                        w,
                        f"{r['layout']} ({r['support']})",
                        fmt_s(r["bin_s"]),
                        fmt_s(r["classify_s"]),
                        f"{r['classify_s'] / max(r['steps'], 1):.3f}",
                        fmt_mib(r["peak_mib"]),
                        fmt_mib(r["peak_mib"] - r["start_mib"]),
                        equal,
                    ]
                )
    headers = [
        "grid",
        "window w",
        "layout (support)",
        "bin s",
        f"classify s ({LAYOUT_ITERATIONS} steps)",
        "s per step",
        "peak RSS MiB",
        "above start MiB",
        "labels",
    ]
    notes = [
        "",
        f"{args.points:,} points of the same process (5 classes, scale {SCALE}); binned once "
        "per run with bin_points(layout=...), then classify(kernel='inverse_distance', "
        "seed='counts', boundary='periodic', probabilities=True) timed until label, "
        "confidence, density and probability are computed, after an untimed 1-step "
        "warm-up. s per step: classify s / steps. labels: the sparse run's labels "
        "densified (gridflow.sparse_grid.densify) against the dense run's: on every cell "
        "with support='reachable' (which promises the dense result), on the cells holding "
        "points with support='occupied' (its empty cells never vote, so the labels of "
        "occupied cells may differ too after the first step).",
    ]
    return table(headers, rows) + "\n" + "\n".join(notes)


def bench_large(args: argparse.Namespace, run: Runner) -> str:
    from _common import table

    job = {"kind": "large", "points": args.large_points, "tmp": run.tmp}
    r = run(f"{args.large_points:.0e} points in {LARGE_DIMS}-D, sparse", job)
    if "error" in r:
        return f"failed: {r['error']}"
    rows = [
        [
            f"{r['binned']:,}",
            f"{LARGE_BINS}^{LARGE_DIMS} = {r['cells']:,}",
            f"{r['occupied']:,} ({r['occupied'] / r['cells']:.1%})",
            "x".join(map(str, r["chunks"])),
            fmt_s(r["bin_s"]),
            fmt_mib(r["bin_peak_mib"]),
            fmt_s(r["classify_s"]),
            fmt_mib(r["peak_mib"]),
            "yes" if r["sparse"] else "NO",
            f"{'equal' if r['labels_equal'] and r['confidence_equal'] else 'DIFFERENT'} "
            f"({r['checked_cells']:,} cells)",
        ]
    ]
    headers = [
        "points",
        "cells",
        "occupied",
        "chunks",
        "bin s",
        "bin peak MiB",
        "classify s",
        "peak RSS MiB",
        "sparse store",
        "corner block vs NumPy",
    ]
    notes = [
        "",
        "make_points (dask, 2e6 points a partition) -> bin_points(layout='sparse') into a "
        "store on disk -> classify(store, kernel='box', window=1, iterations=1, "
        "seed='counts', support='occupied', boundary='periodic'), written to the store. "
        "peak RSS: of the whole process (binning included). The corner block's labels and "
        "confidence against np.roll window sums of its densified counts.",
    ]
    return table(headers, rows) + "\n" + "\n".join(notes)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="highd,layout", help="comma-separated: highd, layout, large")
    p.add_argument("--large-points", type=count, default=LARGE_POINTS, help="large case (1e8)")
    p.add_argument("--points", type=count, default=None, help="training points (default 1e6)")
    p.add_argument("--test", type=count, default=None, help="test points (default 1e5)")
    p.add_argument("--dims", type=int, nargs="+", default=None, help="default 4 6 8 10")
    p.add_argument("--queries", type=count, default=None, help="throughput queries (1e7)")
    p.add_argument("--knn-queries", type=count, default=KNN_QUERIES)
    p.add_argument("--ks", type=int, nargs="+", default=None, help="kNN k (15 51 151)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="points 2e5, test 2e4, queries 1e6, dims 4 6, k 15 and 51 (explicit flags win)",
    )
    p.add_argument("--skip-tune", action="store_true", help="no tuned gridflow rows")
    p.add_argument("--repeat", type=int, default=1, help="best of this many timed runs")
    p.add_argument("--timeout", type=float, default=None, help="seconds per row's process")
    p.add_argument("--out", "--output", dest="out", default=None, help="also write to FILE")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    import _common

    args = parse(argv)
    if args._worker is not None:
        return worker(args._worker)
    cases = args.cases.split(",")
    t0 = time.perf_counter()
    out = [f"Machine: {machine()}", ""]
    with tempfile.TemporaryDirectory(prefix="bench_highd_") as tmp:
        run = Runner(tmp, args.timeout)
        if "highd" in cases:
            out += [
                "### Higher-dimensional classification: gridflow against kNN",
                "",
                bench_highd(args, run),
                "",
            ]
        if "layout" in cases:
            out += [
                "### Sparse against dense grids (the same vote filter)",
                "",
                bench_layout(args, run),
                "",
            ]
        if "large" in cases:
            out += [
                f"### {args.large_points:.0e} points in {LARGE_DIMS}-D on the sparse engine",
                "",
                bench_large(args, run),
                "",
            ]
    if run.failures:
        out += ["### Failures", "", *run.failures, ""]
    out.append(f"Wall time {time.perf_counter() - t0:,.0f} s.")
    return _common.emit("\n".join(out), args.out)


if __name__ == "__main__":
    sys.exit(main())
