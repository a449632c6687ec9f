"""Binning throughput: gridflow.bin_points vs datashader vs plain NumPy.

Measures how many labeled points per second each method turns into per-class
count grids, all side by side in one run on the same in-memory data
(``numpy.random.default_rng(0)``: float64 coordinates uniform in [0, 1),
integer labels 0..4):

* 2-D, 1024 x 1024 cells, 5 classes, bounds [0, 1]^2:

  - ``gridflow.bin_points`` on a dict of NumPy columns (``classes=range(5)``)
    and on a pandas DataFrame with a categorical label column;
  - datashader ``Canvas.points`` with ``count_cat("label")`` and with
    ``by("label", count())`` on the same DataFrame (datashader's edge handling
    differs slightly from gridflow's; that does not matter for throughput);
  - ``np.histogramdd`` over (x, y, label), timed on the first points/10 points
    because it is slow (its points/s comes from that sample);
  - ``np.bincount`` over raveled cell indices computed with NumPy, a plain
    NumPy reference (truncation equals floor here: every coordinate is >= 0).

* 3-D, 256 x 256 x 256 cells, 5 classes: gridflow (dict of columns),
  ``np.histogramdd`` (on points/10) and ``np.bincount``; datashader is 2-D only.

Each method is warmed up once on a small slice (numba compiles gridflow's and
datashader's kernels on first use), then timed ``--repeat`` times; the table
reports the best time. The speed-up column is relative to datashader
``count_cat`` for 2-D and to ``np.histogramdd`` for 3-D. Outside the timing,
gridflow's counts are checked once per case: they must sum to the number of
points and equal the ``np.bincount`` result cell for cell. Timings are only
reported, never asserted on.

Run it with ``make bench`` (which runs ``.venv/bin/python
benchmarks/bench_binning.py``), or directly, e.g.::

    .venv/bin/python benchmarks/bench_binning.py --points 2000000 --repeat 1
    .venv/bin/python benchmarks/bench_binning.py --cases 2d --output bench.md

With the default 100 million points a full run takes a few minutes and peaked at
about 15 GiB resident memory on a 2-core, 24 GiB machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import _common
import numpy as np
import pandas as pd

NCLASSES = 5
CLASS_NAMES = [f"class{k}" for k in range(NCLASSES)]
BINS_2D = 1024
BINS_3D = 256
WARMUP_POINTS = 20_000
HISTOGRAMDD_FRACTION = 10  # np.histogramdd runs on points // 10


@dataclass
class Row:
    """One line of the results table."""

    case: str
    method: str
    points: int | None = None
    seconds: float | None = None
    note: str = ""  # shown instead of the numbers when seconds is None
    baseline: bool = False  # the row the speed-ups of its case are relative to

    @property
    def mpts(self) -> float | None:
        if self.seconds is None or self.points is None:
            return None
        return self.points / self.seconds / 1e6


# --- helpers -----------------------------------------------------------------


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls of ``fn`` and the last call's result.

    Each method warms up separately, on a slice; each run starts after the
    previous result is freed.
    """
    return _common.best_of(fn, repeat, warm=False, collect=True)


def free() -> None:
    gc.collect()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine_line() -> str:
    """CPU model, cores, memory and library versions of this machine."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine() or "unknown CPU"
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        mem_text = f"{mem:.1f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        mem_text = "unknown RAM"
    libs = ", ".join(
        f"{name} {_version(name)}"
        for name in ("numpy", "numba", "dask", "datashader", "pandas", "gridflow")
    )
    return (
        f"Machine: {cpu} ({platform.machine()}, {platform.system()}), "
        f"{os.cpu_count()} CPUs (os.cpu_count()), {mem_text}; "
        f"Python {platform.python_version()}; {libs}"
    )


def make_points(n: int, ndim: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``ndim`` float64 columns uniform in [0, 1) and int64 labels 0..4."""
    rng = np.random.default_rng(0)
    cols = [rng.random(n) for _ in range(ndim)]
    labels = rng.integers(0, NCLASSES, n)
    return cols, labels


def bincount_counts(cols: Sequence[np.ndarray], labels: np.ndarray, nbins: int) -> np.ndarray:
    """Counts of shape (class, *dims) with raveled indices and ``np.bincount``."""
    flat = labels.astype(np.int64)
    for c in cols:
        flat *= nbins
        flat += (c * nbins).astype(np.int64)  # == floor(c * nbins) for c >= 0
    counts = np.bincount(flat, minlength=NCLASSES * nbins ** len(cols))
    return counts.reshape((NCLASSES,) + (nbins,) * len(cols))


def histogramdd_counts(cols: Sequence[np.ndarray], labels: np.ndarray, nbins: int) -> np.ndarray:
    sample = np.column_stack([*cols, labels])
    hist, _ = np.histogramdd(
        sample,
        bins=(nbins,) * len(cols) + (NCLASSES,),
        range=((0, 1),) * len(cols) + ((-0.5, NCLASSES - 0.5),),
    )
    return hist


def check_gridflow(ds: Any, n: int, reference: np.ndarray | None, what: str) -> None:
    """Raise unless gridflow binned all ``n`` points into ``reference``'s cells."""
    counts = np.asarray(ds["counts"].data.compute())
    total = int(counts.sum(dtype=np.uint64))
    if total != n:
        raise AssertionError(f"{what}: counts sum to {total:,}, expected {n:,}")
    if reference is not None:
        if counts.shape != reference.shape:
            raise AssertionError(
                f"{what}: counts have shape {counts.shape}, np.bincount {reference.shape}"
            )
        if not np.array_equal(counts, reference):
            bad = int(np.count_nonzero(counts != reference))
            raise AssertionError(f"{what}: {bad:,} cells differ from np.bincount")
    print(f"{what}: counts match ({total:,} points)", flush=True)


def check_total(counts: np.ndarray, n: int, what: str) -> None:
    total = int(counts.sum())
    if total != n:
        raise AssertionError(f"{what}: counts sum to {total:,}, expected {n:,}")


# --- timing steps shared by the cases -----------------------------------------


def time_bincount(
    tag: str, case: str, cols: list[np.ndarray], labels: np.ndarray, nb: int, repeat: int
) -> tuple[Row, np.ndarray]:
    """The ``np.bincount`` row, and its counts: the reference for gridflow."""
    w = slice(None, WARMUP_POINTS)
    log(f"[{tag}] np.bincount")
    bincount_counts([c[w] for c in cols], labels[w], nb)
    t, reference = best_of(partial(bincount_counts, cols, labels, nb), repeat)
    return Row(case, "np.bincount on raveled indices (NumPy reference)", len(labels), t), reference


def time_gridflow_columns(
    tag: str,
    case: str,
    cols: list[np.ndarray],
    labels: np.ndarray,
    nb: int,
    reference: np.ndarray,
    repeat: int,
) -> Row:
    """gridflow on a dict of arrays, its counts checked against ``reference``."""
    w = slice(None, WARMUP_POINTS)
    log(f"[{tag}] gridflow (dict of arrays)")
    gridflow_columns([c[w] for c in cols], labels[w], nb)
    t, ds = best_of(partial(gridflow_columns, cols, labels, nb), repeat)
    row = Row(case, "gridflow.bin_points (dict of NumPy arrays)", len(labels), t)
    check_gridflow(ds, len(labels), reference, f"{tag} gridflow (dict of arrays)")
    del ds
    free()
    return row


def time_histogramdd(
    tag: str,
    case: str,
    cols: list[np.ndarray],
    labels: np.ndarray,
    nb: int,
    repeat: int,
    *,
    baseline: bool = False,
) -> Row:
    """``np.histogramdd``, timed on the first points/HISTOGRAMDD_FRACTION points."""
    w = slice(None, WARMUP_POINTS)
    m = len(labels) // HISTOGRAMDD_FRACTION
    log(f"[{tag}] np.histogramdd on {m:,} points")
    histogramdd_counts([c[w] for c in cols], labels[w], nb)
    t, hist = best_of(partial(histogramdd_counts, [c[:m] for c in cols], labels[:m], nb), repeat)
    row = Row(case, f"np.histogramdd (on points/{HISTOGRAMDD_FRACTION})", m, t, baseline=baseline)
    check_total(hist, m, f"{tag} np.histogramdd")
    del hist
    free()
    return row


# --- cases -------------------------------------------------------------------


def gridflow_columns(cols: Sequence[np.ndarray], labels: np.ndarray, nbins: int) -> Any:
    """``gridflow.bin_points`` on a dict of columns x, y[, z] and label."""
    import gridflow

    points = dict(zip("xyz", cols, strict=False))
    points["label"] = labels
    return gridflow.bin_points(points, bins=nbins, bounds=(0, 1), classes=range(NCLASSES))


def gridflow_frame(df: pd.DataFrame, nbins: int) -> Any:
    """``gridflow.bin_points`` on a DataFrame with a categorical label column."""
    import gridflow

    return gridflow.bin_points(df, bins=nbins, bounds=(0, 1))


def run_2d(n: int, repeat: int) -> list[Row]:
    import datashader as dsh

    case = f"2-D {BINS_2D}x{BINS_2D}, {NCLASSES} classes"
    nb = BINS_2D
    log(f"[2-D] generating {n:,} points")
    cols, labels = make_points(n, 2)
    w = slice(None, WARMUP_POINTS)

    # np.bincount first: its counts are the reference for gridflow.
    bincount_row, reference = time_bincount("2-D", case, cols, labels, nb, repeat)
    rows = [time_gridflow_columns("2-D", case, cols, labels, nb, reference, repeat)]

    # The DataFrame shared by gridflow and datashader.
    categorical = pd.Categorical.from_codes(labels, categories=CLASS_NAMES)
    df = pd.DataFrame({"x": cols[0], "y": cols[1], "label": categorical}, copy=False)
    warm = df.iloc[w]

    log("[2-D] gridflow (pandas DataFrame, categorical labels)")
    gridflow_frame(warm, nb)
    t, ds = best_of(partial(gridflow_frame, df, nb), repeat)
    rows.append(Row(case, "gridflow.bin_points (pandas DataFrame, categorical label)", n, t))
    check_gridflow(ds, n, reference, "2-D gridflow (pandas DataFrame)")
    del ds, reference
    free()

    canvas = dsh.Canvas(plot_width=nb, plot_height=nb, x_range=(0, 1), y_range=(0, 1))
    for method, agg, baseline in (
        ("datashader Canvas.points, count_cat", dsh.count_cat("label"), True),
        ("datashader Canvas.points, by(label, count())", dsh.by("label", dsh.count()), False),
    ):
        log(f"[2-D] {method}")
        canvas.points(warm, "x", "y", agg=agg)
        t, image = best_of(partial(canvas.points, df, "x", "y", agg=agg), repeat)
        rows.append(Row(case, method, n, t, baseline=baseline))
        total = int(np.asarray(image.data).sum(dtype=np.uint64))
        print(f"2-D {method}: counted {total:,} of {n:,} points (not checked)", flush=True)
        del image
        free()
    del df, warm, categorical
    free()

    rows.append(time_histogramdd("2-D", case, cols, labels, nb, repeat))
    rows.append(bincount_row)
    del cols, labels
    free()
    return rows


def run_3d(n: int, repeat: int) -> list[Row]:
    case = f"3-D {BINS_3D}x{BINS_3D}x{BINS_3D}, {NCLASSES} classes"
    nb = BINS_3D
    log(f"[3-D] generating {n:,} points")
    cols, labels = make_points(n, 3)

    bincount_row, reference = time_bincount("3-D", case, cols, labels, nb, repeat)
    rows = [time_gridflow_columns("3-D", case, cols, labels, nb, reference, repeat)]
    del reference
    free()

    rows.append(Row(case, "datashader", note="n/a (2-D only)"))
    rows.append(time_histogramdd("3-D", case, cols, labels, nb, repeat, baseline=True))
    rows.append(bincount_row)
    del cols, labels
    free()
    return rows


CASES: dict[str, Callable[[int, int], list[Row]]] = {"2d": run_2d, "3d": run_3d}


# --- report ------------------------------------------------------------------


def markdown_table(rows: list[Row], repeat: int) -> str:
    header = (
        f"| case | method | points | seconds (best of {repeat}) | M points/s "
        "| speed-up vs datashader count_cat (2-D) / np.histogramdd (3-D) |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|"]
    baselines = {r.case: r.mpts for r in rows if r.baseline and r.mpts}
    for r in rows:
        if r.seconds is None:
            lines.append(f"| {r.case} | {r.method} | - | {r.note} | - | - |")
            continue
        base = baselines.get(r.case)
        speedup = f"{r.mpts / base:.2f}x" if base and r.mpts else "-"
        lines.append(
            f"| {r.case} | {r.method} | {r.points:,} | {r.seconds:.3f} | {r.mpts:.1f} | {speedup} |"
        )
    return "\n".join(lines)


def key_ratio(rows: list[Row]) -> str | None:
    """gridflow 2-D (best row) M points/s over datashader count_cat M points/s."""
    grid = [r.mpts for r in rows if r.case.startswith("2-D") and r.method.startswith("gridflow")]
    shader = [r.mpts for r in rows if r.case.startswith("2-D") and r.baseline]
    grid = [g for g in grid if g]
    if not grid or not shader or not shader[0]:
        return None
    best = max(grid)
    return (
        f"Key ratio (2-D): gridflow best {best:.1f} M points/s / datashader count_cat "
        f"{shader[0]:.1f} M points/s = {best / shader[0]:.2f}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--points", type=int, default=100_000_000, help="points per case (default 100,000,000)"
    )
    p.add_argument("--repeat", type=int, default=3, help="timed runs per method; best is reported")
    p.add_argument("--cases", default="2d,3d", help="comma-separated cases: 2d, 3d (default both)")
    p.add_argument("--output", metavar="FILE.md", help="also write the table to this file")
    args = p.parse_args(argv)
    args.cases = [c.strip().lower() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown or not args.cases:
        p.error(f"--cases: expected some of {', '.join(CASES)}, got {args.cases or 'none'}")
    if args.points < HISTOGRAMDD_FRACTION * 10:
        p.error(f"--points: expected at least {HISTOGRAMDD_FRACTION * 10}, got {args.points}")
    if args.repeat < 1:
        p.error(f"--repeat: expected at least 1, got {args.repeat}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[Row] = []
    for name in args.cases:
        rows.extend(CASES[name](args.points, args.repeat))
        free()

    table = markdown_table(rows, args.repeat)
    machine = machine_line()
    ratio = key_ratio(rows)
    report = "\n".join([table, "", machine, *([ratio] if ratio else [])])
    print()
    print(report, flush=True)
    if args.output:
        with open(args.output, "w") as f:
            f.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
