"""classify in one process against 1, 2 and 4 worker processes, with where the time goes.

A user who moves from the default in-process cluster to worker processes
(``gridflow --workers N``, or a SLURM/MPI cluster) should not pay for it. For
each grid this script bins points into a Zarr store once, then runs
``gridflow.classify`` on a copy of it under clusters started by
``gridflow.runtime.client`` exactly as the CLI starts them:

- in-process (the default: one worker, a thread a core);
- 1, 2 and 4 worker processes on this machine (the cores split between them).

Each cluster runs classify twice: the first call pays for loading the
compiled kernels in fresh processes, the second is what every later stage
of a batch job costs (best of ``--repeat``). Both are printed, with the second call's breakdown
from dask's task stream: compute seconds of the round tasks and of the
rest, transfer seconds between workers, and the idle share (wall seconds x
threads not spent computing or transferring: scheduling, serialisation,
waiting on the slowest block). Every run's labels and density are checked
equal, bit for bit, to the in-process run's.

    python benchmarks/bench_distributed.py
    python benchmarks/bench_distributed.py --grid 4096:5:10 --workers 0,2

``--grid BINS:CLASSES:WINDOW`` (2-D, chunks 256 as in the issue's case; ``--chunks``).
Never fails on a timing; exits 1 if a result differs.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine


def _digest(store: str) -> str:
    import gridflow as gf

    ds = gf.open_grid(store)
    h = hashlib.sha256()
    for name in ("label", "density", "confidence"):
        h.update(np.ascontiguousarray(ds[name].values).tobytes())
    return h.hexdigest()[:12]


def _breakdown(records: list[dict], wall: float, threads: int) -> dict[str, float]:
    """Seconds of compute (rounds / other), transfer, and idle thread-seconds."""
    out = collections.Counter()
    for r in records:
        key = r["key"]
        name = key[0] if isinstance(key, tuple) else str(key)
        for s in r["startstops"]:
            span = s["stop"] - s["start"]
            if s["action"] == "compute":
                out["rounds" if name.startswith(("round-", "halo-round-")) else "other"] += span
            elif s["action"] == "transfer":
                out["transfer"] += span
            else:  # disk-read / disk-write of spilled data
                out["spill"] += span
    busy = sum(out.values())
    out["idle"] = max(0.0, wall * threads - busy)
    out["tasks"] = len(records)
    return dict(out)


def _classify_once(base: str, work: str, window: int, iterations: int) -> tuple[float, dict]:
    from distributed import get_task_stream

    import gridflow as gf

    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    with get_task_stream() as ts:
        t0 = time.perf_counter()
        gf.classify(work, window=window, iterations=iterations)
        wall = time.perf_counter() - t0
    return wall, ts.data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", action="append", help="BINS:CLASSES:WINDOW (default 1024:5:10)")
    ap.add_argument("--chunks", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--points", type=float, default=None, help="default: 2 a cell")
    ap.add_argument("--workers", default="0,1,2,4", help="0 = in-process")
    ap.add_argument("--repeat", type=int, default=3, help="later calls; the best is shown")
    args = ap.parse_args()
    grids = args.grid or ["1024:5:10"]
    configs = [int(w) for w in args.workers.split(",")]

    import dask

    import gridflow as gf
    from gridflow.runtime import client

    print(f"Machine: {machine('numpy', 'scipy', 'dask', 'distributed', 'numba')}")
    print(f"Command: python benchmarks/bench_distributed.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    print(
        "| grid | cluster | first call s | later call s | vs in-process | rounds s | other s "
        "| transfer s | idle thread-s | tasks | equal |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    tmp = tempfile.mkdtemp(prefix="gf-bench-dist-")
    cores = os.cpu_count() or 1
    try:
        for text in grids:
            bins, nclasses, window = (int(v) for v in text.split(":"))
            npoints = int(args.points or 2 * bins * bins)
            pts = os.path.join(tmp, "pts")
            gf.write_points(pts, npoints, dims=2, classes=nclasses, seed=0)
            base = os.path.join(tmp, "base.zarr")
            with dask.config.set(scheduler="threads"):
                gf.bin_points(pts, base, bins=bins, chunks=args.chunks)
            reference = None
            inproc = None
            for workers in configs:
                threads = cores if workers == 0 else max(1, cores // workers)
                kw = {} if workers == 0 else {"workers": workers, "threads": threads}
                with client(**kw):
                    work = os.path.join(tmp, f"run{workers}.zarr")
                    first, _ = _classify_once(base, work, window, args.iterations)
                    later, records = min(
                        (
                            _classify_once(base, work, window, args.iterations)
                            for _ in range(args.repeat)
                        ),
                        key=lambda r: r[0],
                    )
                    digest = _digest(work)
                total_threads = threads * max(1, workers)
                b = _breakdown(records, later, total_threads)
                if reference is None:
                    reference, inproc = digest, later
                equal = digest == reference
                ok &= equal
                name = "in-process" if workers == 0 else f"{workers} proc x {threads} thr"
                print(
                    f"| {bins}^2 x {nclasses}, w={window}, chunks {args.chunks} | {name} "
                    f"| {first:.2f} | {later:.2f} | {later / inproc:.2f} "
                    f"| {b.get('rounds', 0):.2f} | {b.get('other', 0):.2f} "
                    f"| {b.get('transfer', 0):.2f} | {b['idle']:.2f} | {b['tasks']} "
                    f"| {'yes' if equal else 'NO'} |",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
