"""Binning from Parquet files on disk against reading the same files with pyarrow alone.

A batch job's points live in Parquet files, so binning is bounded by how
fast they are read. This script writes ``--points`` labeled 2-D points
(float64 x, y uniform in [0, 1), int64 label 0..4,
``numpy.random.default_rng(0)``) as ``--files`` Parquet files into a
temporary folder (``--dir``, default beside the system's temporary files),
then times, side by side:

- pyarrow alone: ``pyarrow.dataset.dataset(folder).to_table()`` with the
  three columns, every file and row group (the bytes any reader must decode);
- ``gridflow.bin_points(folder, store, bins=1024, bounds=(0, 1))`` into a
  Zarr store on the same disk, on gridflow's default in-process cluster;
- the same with 2 worker processes.

Both read the files from the page cache after the first pass (the table says
whether the cache was dropped: as root the script writes
``/proc/sys/vm/drop_caches`` before each timed run, so the reads come from the
disk). Points/s, MB/s of Parquet read and gridflow's time over pyarrow's are
printed; gridflow's counts are checked against ``numpy.bincount`` of the same
points. Never fails on a timing.

    python benchmarks/bench_parquet.py                     # 1e8 points, 50 files
    python benchmarks/bench_parquet.py --points 1e7 --files 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine


def _write(folder: str, points: int, files: int, bins: int) -> np.ndarray:
    """Write the files; return the expected (5, bins, bins) counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    expected = np.zeros(5 * bins * bins, np.int64)
    per = -(-points // files)
    for i in range(files):
        n = min(per, points - i * per)
        x, y = rng.random(n), rng.random(n)
        label = rng.integers(0, 5, n)
        cells = (label * bins + (x * bins).astype(np.int64)) * bins + (y * bins).astype(np.int64)
        expected += np.bincount(cells, minlength=expected.size)
        table = pa.table({"x": x, "y": y, "label": label})
        pq.write_table(table, os.path.join(folder, f"part-{i:04d}.parquet"))
    return expected.reshape(5, bins, bins)


def _drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=float, default=1e8)
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--bins", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where to write the files (a local disk)")
    args = ap.parse_args()
    points = int(args.points)

    import pyarrow.dataset as pads

    import gridflow as gf
    from gridflow.runtime import client

    root = tempfile.mkdtemp(prefix="gf-bench-parquet-", dir=args.dir)
    folder = os.path.join(root, "points")
    os.makedirs(folder)
    ok = True
    try:
        t0 = time.perf_counter()
        expected = _write(folder, points, args.files, args.bins)
        wrote = time.perf_counter() - t0
        nbytes = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        print(f"Machine: {machine('numpy', 'pyarrow', 'dask', 'distributed', 'numba')}")
        print(f"Command: python benchmarks/bench_parquet.py {' '.join(sys.argv[1:])}".rstrip())
        print(
            f"Data: {points:,} points in {args.files} Parquet files, {nbytes / 1e6:,.0f} MB "
            f"on disk (written in {wrote:.0f} s); {args.bins}² x 5 cells"
        )
        print()
        print("| reader | cache dropped | best s | points/s | MB/s of Parquet | vs pyarrow |")
        print("|---|---|---:|---:|---:|---:|")

        def timed(fn):
            best, cold = float("inf"), True
            for _ in range(args.repeat):
                cold &= _drop_caches()
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            return best, cold

        def read():
            table = pads.dataset(folder, format="parquet").to_table(columns=["x", "y", "label"])
            assert table.num_rows == points

        store = os.path.join(root, "g.zarr")

        def bin_():
            ds = gf.bin_points(
                folder, store, bins=args.bins, bounds=(0, 1), overwrite=True, columns=["x", "y"]
            )
            return ds

        base, cold = timed(read)
        rows = [("pyarrow dataset.to_table (3 columns)", base, cold)]
        for name, kw in (("in-process", {}), ("2 worker processes", {"workers": 2, "threads": 1})):
            with client(**kw):
                bin_()  # warm: numba loads its kernels in each process
                best, cold = timed(bin_)
            counts = gf.open_grid(store)["counts"].values
            equal = np.array_equal(counts, expected)
            ok &= equal
            rows.append(
                (f"gridflow.bin_points, {name}{'' if equal else ' (COUNTS DIFFER)'}", best, cold)
            )
        for name, best, cold in rows:
            print(
                f"| {name} | {'yes' if cold else 'no'} | {best:.2f} | {points / best:,.0f} "
                f"| {nbytes / 1e6 / best:,.0f} | {best / base:.2f}x |"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
