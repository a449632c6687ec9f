"""Strong scaling of classify iterations: 1 and 2 worker processes, unfused and fused.

For each grid, seeded labels (a fixed fraction of cells labeled at random)
are iterated with the vote filter of ``gridflow.engine.vote``:

- on a LocalCluster of 1 and of 2 worker processes (one thread each), with
  one step per round (``fuse=1``: a halo exchange every step) and with all
  the steps the chunks allow fused into one round;
- in one process with the in-memory NumPy reference ``run_numpy`` (the
  distributed run's overhead is measured against it).

Chunks come from the memory planner (``gridflow.engine.planner.plan_filter``) for
the 2-worker cluster, and are the same for every run of a grid. Every run's
labels are checked equal to the NumPy reference's (or, where the grid is too
big for it, to the first distributed run's).
Timings are best of ``--repeat``, per vote step, the results persisted on the
workers (not gathered into this process). The table is printed; the
figures in BENCHMARKS.md come from it. Never fails on a timing.

    python benchmarks/bench_scaling.py
    python benchmarks/bench_scaling.py --grid 4096x4096:5:10 --grid 256x256x256:4:2
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time

import numpy as np


def _grid(text: str) -> tuple[tuple[int, ...], int, int]:
    shape, classes, window = text.split(":")
    return tuple(int(s) for s in shape.split("x")), int(classes), int(window)


def _labels_block(block, shape, nclasses, fraction, seed, block_info=None):
    """Seeded labels of one block: a pure function of the global cell index."""
    from gridflow.counter_rng import uniform

    loc = block_info[None]["array-location"] if block_info else [(0, n) for n in shape]
    index = np.ravel_multi_index(
        np.meshgrid(*[np.arange(a, b) for a, b in loc], indexing="ij"), shape
    )
    u = uniform(seed, 0, index)
    return np.where(u < fraction, (u / fraction * nclasses).astype(np.int32), -1).astype(np.int32)


def seeded_labels(shape, nclasses, chunks=None, fraction=0.05, seed=0):
    """A ``fraction`` of cells labeled at random: NumPy, or a dask array built on the workers."""
    if chunks is None:
        return _labels_block(None, shape, nclasses, fraction, seed)
    import dask.array as da

    return da.map_blocks(
        _labels_block,
        da.empty(shape, chunks=chunks, dtype=np.int8),
        shape,
        nclasses,
        fraction,
        seed,
        dtype=np.int32,
    )


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int32).tobytes()).hexdigest()[:12]


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--grid",
        action="append",
        type=_grid,
        help="SHAPE:CLASSES:WINDOW, e.g. 4096x4096:5:10 (repeatable)",
    )
    parser.add_argument("--iterations", type=int, default=4, help="vote steps per run")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", default="1,2", help="worker processes to try")
    parser.add_argument(
        "--numpy-max-cells",
        type=float,
        default=2**25,
        help="skip the single-process NumPy run above this many cells (it holds the "
        "whole grid's vote planes)",
    )
    args = parser.parse_args()
    grids = args.grid or [((4096, 4096), 5, 10), ((512, 512, 512), 4, 2)]
    workers = [int(w) for w in args.workers.split(",")]

    import dask
    import psutil
    from distributed import wait

    import gridflow
    from gridflow.engine.planner import plan_filter
    from gridflow.engine.vote import run_dask, run_numpy
    from gridflow.kernels import parse_kernel
    from gridflow.runtime import client

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB; Python {sys.version.split()[0]}, "
        f"numpy {np.__version__}, dask {dask.__version__}, gridflow {gridflow.__version__}"
    )
    print(f"{args.iterations} vote steps per run, best of {args.repeat}, seconds per step\n")
    rows = []
    for shape, nclasses, window in grids:
        kernel = parse_kernel("inverse_distance", window=window, ndim=len(shape))
        cells = int(np.prod(shape))
        name = f"{'x'.join(map(str, shape))} x {nclasses} classes, w={window}"
        reference = None
        numpy_step = None
        if cells <= args.numpy_max_cells:
            labels = seeded_labels(shape, nclasses)
            numpy_s, out = best(
                lambda labels=labels, kernel=kernel, nclasses=nclasses: run_numpy(
                    labels, nclasses=nclasses, kernel=kernel, iterations=args.iterations
                ),
                args.repeat,
            )
            reference = digest(out[0])
            numpy_step = numpy_s / args.iterations
            del labels, out
            rows.append((name, "NumPy run_numpy, 1 process", "-", "-", numpy_step, 1.0, "ref"))
            print(f"{name}: numpy {numpy_step:.3f} s/step", flush=True)
        plan = None
        for n in sorted(workers, reverse=True):
            with client(workers=n, threads=1) as c:
                if plan is None:  # planned on the largest cluster, kept for the others
                    memory = min(w["memory_limit"] for w in c.scheduler_info()["workers"].values())
                    plan = plan_filter(
                        shape,
                        nclasses,
                        kernel.radius,
                        iterations=args.iterations,
                        memory=memory,
                        threads=1,
                        total_threads=n,
                    )
                chunks = plan.chunks
                (x,) = dask.persist(seeded_labels(shape, nclasses, chunks))
                for mode, fuse in (("unfused", 1), ("fused", None)):

                    def go(x=x, fuse=fuse, kernel=kernel, nclasses=nclasses):
                        final = run_dask(
                            x,
                            nclasses=nclasses,
                            kernel=kernel,
                            iterations=args.iterations,
                            fuse=fuse,
                        )
                        # Kept on the workers, as a stage that writes its store keeps
                        # them: gathering a 512³ grid into this process costs more than a step.
                        done = dask.persist(final.labels, final.density)
                        wait(done)
                        return done

                    seconds, (lab, _) = best(go, args.repeat)
                    lab = lab.compute()  # outside the timing: for the digest
                    steps_per_round = 1 if fuse == 1 else plan.fuse
                    if (
                        reference is None
                    ):  # no NumPy run: the first distributed run is the reference
                        reference, same = digest(lab), "ref (no NumPy run)"
                    else:
                        same = "yes" if digest(lab) == reference else "NO"
                    step = seconds / args.iterations
                    ratio = step / numpy_step if numpy_step else float("nan")
                    rows.append(
                        (
                            name,
                            f"dask, {n} worker process{'es' if n > 1 else ''}",
                            "x".join(map(str, chunks)),
                            f"{mode} ({steps_per_round}/round)",
                            step,
                            ratio,
                            same,
                        )
                    )
                    print(f"{name}: {n} workers {mode} {step:.3f} s/step", flush=True)
            del x
    print()
    rows.sort(key=lambda r: (r[0], r[1] != "NumPy run_numpy, 1 process", r[1], r[3]))
    print("| grid | run | chunks | rounds | s per step | vs NumPy | labels equal NumPy's |")
    print("|---|---|---|---|---:|---:|---|")
    for name, run, chunks, mode, step, ratio, same in rows:
        r = "-" if ratio != ratio else f"{ratio:.2f}x"
        print(f"| {name} | {run} | {chunks} | {mode} | {step:.3f} | {r} | {same} |")
    # Strong scaling: 1 -> 2 workers per grid and mode.
    print()
    print("| grid | rounds | speed-up 1 -> 2 workers |")
    print("|---|---|---:|")
    for name in dict.fromkeys(r[0] for r in rows):
        for mode in ("unfused", "fused"):
            t = {
                r[1]: r[4]
                for r in rows
                if r[0] == name and r[3].startswith(mode) and r[1].startswith("dask")
            }
            one = next((v for k, v in t.items() if k.startswith("dask, 1 ")), None)
            two = next((v for k, v in t.items() if k.startswith("dask, 2 ")), None)
            if one and two:
                print(f"| {name} | {mode} | {one / two:.2f}x |")


if __name__ == "__main__":
    main()
