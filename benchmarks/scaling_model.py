"""A model of classify's vote rounds on a cluster, calibrated here and checked against runs here.

The model prices one round of ``f`` fused steps on a grid cut into blocks
(chunks and ``f`` from gridflow's own memory planner, ``plan_filter``):

    compute   = waves x (cells of a haloed block) x f x cell_s
                (waves = ceil(blocks / cores the workers' threads can use))
    scheduler = tasks x task_s          (one central scheduler: serial)
    halo      = the remote share of the halo bytes of a node's blocks / link
    round     = max(compute, scheduler, halo) + round_s   (transfers and
                scheduling overlap the blocks' compute)
    stage     = rounds + stage_s + cells x stage_cell_s / cores
                (read, majority, write; stage_s: graph, plan, metadata)

Tasks per round are a block's own task and its halo slabs (``3**d - 1``
pieces, the dense engine's ``rounds.block_round``) plus the write and stats
tasks of the stage. A worker holds its share of the labels (int32) and
density (float64) between rounds, plus ``threads`` haloed blocks' working
sets (the planner's ``task_bytes``).

Every constant is measured on this machine before the predictions:

- ``cell_s``: seconds per haloed cell and step of the vote step (one block
  of the case's chunk, one thread, ``gridflow.engine.vote.fused_steps``);
- ``task_s``: scheduler seconds per task (2,000 tiny tasks through a
  2-process LocalCluster);
- ``link``: bytes/s between two worker processes (a 64 MB array moved);
- ``stage_s`` and ``stage_cell_s``: classify's cost beyond the rounds, fixed
  and per cell (one-step classifies in-process on 512² and 1024², minus
  their modeled rounds).

``--check`` then runs ``gridflow.classify`` in-process and on 1, 2 and 4
worker processes (the runs of ``benchmarks/bench_distributed.py``) and prints
predicted against measured seconds. The projection table prices a 3-D grid,
4 classes, w=2, 10 steps, from 1e8 to 1e11 cells on 1 to 256 nodes of
``--node-cores`` cores and ``--node-memory`` GB, linked at ``--link-gbs``
GB/s (the defaults: a 32-core node with 128 GB on 100 Gb/s InfiniBand), with
the term that bounds each figure.

    python benchmarks/scaling_model.py --check
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine

#: Round latency beyond its tasks: persisting the round, the per-step counts'
#: round trip to the client, graph submission (seconds).
ROUND_S = 0.02
#: Tasks of the stage around the rounds, per block: read counts, majority,
#: summarise, three writes, the per-step counts.
STAGE_TASKS_PER_BLOCK = 8


@dataclass
class Constants:
    cell_s: float
    task_s: float
    link: float
    stage_s: float
    stage_cell_s: float


@dataclass
class Case:
    shape: tuple[int, ...]
    nclasses: int
    window: int
    iterations: int
    chunks: tuple[int, ...] | None = None  # None: the planner's


@dataclass
class Prediction:
    seconds: float
    per_step: float
    rounds: int
    tasks_per_round: int
    worker_bytes: float
    bound: str


def _kernel(case: Case):
    from gridflow.kernels import parse_kernel

    return parse_kernel("inverse_distance", window=case.window, ndim=len(case.shape))


def _plan(case: Case, workers: int, threads: int, memory: float):
    from gridflow.engine.planner import plan_filter

    k = _kernel(case)
    return plan_filter(
        case.shape,
        case.nclasses,
        k.radius,
        iterations=case.iterations,
        chunks=case.chunks,
        memory=memory,
        threads=threads,
        total_threads=workers * threads,
        keep_chunks=case.chunks is not None,
        warn=False,
    )


def predict(
    case: Case, c: Constants, nodes: int, workers: int, threads: int, memory: float,
    cores: int, stage: bool = True,
) -> Prediction:  # fmt: skip
    """Seconds of classify's rounds (and the stage around them) on ``nodes`` nodes of
    ``cores`` cores, each running ``workers`` workers of ``threads`` threads."""
    plan = _plan(case, nodes * workers, threads, memory)
    radius = _kernel(case).radius
    chunk = plan.chunks
    blocks = math.prod(math.ceil(n / s) for n, s in zip(case.shape, chunk, strict=True))
    split = [math.ceil(n / s) > 1 for n, s in zip(case.shape, chunk, strict=True)]
    cells = math.prod(case.shape)
    total_threads = nodes * workers * threads
    parallel = min(total_threads, nodes * cores)
    remote = 1.0 - 1.0 / (nodes * workers)  # the share of a block's halo held elsewhere
    f = max(1, min(plan.fuse, case.iterations))
    rounds = math.ceil(case.iterations / f)
    seconds, bounds = 0.0, []
    for r in range(rounds):
        steps = min(f, case.iterations - r * f)
        haloed = math.prod(
            s + 2 * steps * w * sp for s, w, sp in zip(chunk, radius, split, strict=True)
        )
        waves = math.ceil(blocks / parallel)
        compute = waves * haloed * steps * c.cell_s
        pieces = 3 ** sum(split)
        tasks = blocks * pieces + (blocks * STAGE_TASKS_PER_BLOCK if r == rounds - 1 else blocks)
        scheduler = tasks * c.task_s
        # Halo bytes (int32 labels; uint32 counts on the first round) of a node's blocks.
        halo_cells = haloed - math.prod(chunk)
        per_cell = 4 * (1 + (case.nclasses if r == 0 else 0))
        halo = remote * halo_cells * per_cell * blocks / nodes / c.link
        terms = {"compute": compute, "scheduler": scheduler, "halo": halo}
        seconds += max(terms.values()) + ROUND_S
        bounds.append(max(terms, key=terms.get))
    if stage:
        seconds += c.stage_s + cells * c.stage_cell_s / parallel
    state = cells * 12 / (nodes * workers)
    return Prediction(
        seconds=seconds,
        per_step=seconds / case.iterations,
        rounds=rounds,
        tasks_per_round=blocks * 3 ** sum(split),
        worker_bytes=state + plan.worker_bytes,
        bound=max(set(bounds), key=bounds.count),
    )


# --- calibration ----------------------------------------------------------------------


def _cell_seconds(case: Case, chunk: tuple[int, ...], fuse: int) -> float:
    """Seconds per haloed cell and step of fused_steps on one block, one thread."""
    import numba

    from gridflow.engine.vote import fused_steps

    numba.set_num_threads(1)
    k = _kernel(case)
    steps = max(1, min(fuse, case.iterations))
    shape = tuple(s + 2 * steps * r for s, r in zip(chunk, k.radius, strict=True))
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(shape) < 0.2, rng.integers(0, case.nclasses, shape), -1)
    labels = labels.astype(np.int32)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        fused_steps(labels, None, nclasses=case.nclasses, kernel=k, steps=steps, first_step=1)
        best = min(best, time.perf_counter() - t)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return best / (math.prod(shape) * steps)


def _cluster_constants() -> tuple[float, float]:
    """(scheduler seconds per task, bytes/s between two worker processes)."""
    from distributed import wait

    from gridflow.runtime import client

    with client(workers=2, threads=1) as c:
        w = sorted(c.scheduler_info()["workers"])
        wait(c.map(_noop, range(200), pure=False))
        t = time.perf_counter()
        wait(c.map(_noop, range(2000), pure=False))
        task_s = (time.perf_counter() - t) / 2000
        big = c.submit(np.ones, 8 << 20, workers=[w[0]], pure=False)  # 64 MB
        wait(big)
        wait(c.submit(_noop, 0, workers=[w[1]], pure=False))
        t = time.perf_counter()
        wait(c.submit(_nbytes, big, workers=[w[1]], pure=False))
        link = (8 << 20) * 8 / (time.perf_counter() - t)
    return task_s, link


def _noop(x):
    return x


def _nbytes(a):
    return a.nbytes


def _store(root: str, case: Case, chunks: int) -> str:
    import dask

    import gridflow as gf

    pts = os.path.join(root, f"pts-{case.shape[0]}")
    store = os.path.join(root, f"g-{case.shape[0]}.zarr")
    if not os.path.exists(store):
        gf.write_points(pts, 2 * math.prod(case.shape), dims=len(case.shape), classes=case.nclasses)
        with dask.config.set(scheduler="threads"):
            gf.bin_points(pts, store, bins=case.shape[0], chunks=chunks)
    return store


def _classify_seconds(store: str, root: str, case: Case, repeat: int = 2) -> float:
    import gridflow as gf

    work = os.path.join(root, "work.zarr")
    best = float("inf")
    for i in range(repeat + 1):  # the first call warms the workers' kernels
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(store, work)
        t = time.perf_counter()
        gf.classify(work, window=case.window, iterations=case.iterations)
        if i:
            best = min(best, time.perf_counter() - t)
    return best


def _resources() -> tuple[int, float]:
    import psutil

    return os.cpu_count() or 1, psutil.virtual_memory().total * 0.8


# --- main -------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="run the cases here and compare")
    ap.add_argument("--node-cores", type=int, default=32)
    ap.add_argument("--node-memory", type=float, default=128, help="GB")
    ap.add_argument("--link-gbs", type=float, default=12.5, help="GB/s between nodes")
    args = ap.parse_args()

    from gridflow.runtime import client

    cores, memory = _resources()
    print(f"Machine: {machine('numpy', 'scipy', 'dask', 'distributed', 'numba')}")
    print(f"Command: python benchmarks/scaling_model.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    checks = [
        (Case((1024, 1024), 5, 10, 10, (256, 256)), 256),
        (Case((4096, 4096), 5, 10, 10, (1024, 1024)), 1024),
    ]
    task_s, link = _cluster_constants()
    cell = {}
    for case, _ in checks:
        plan = _plan(case, 2, 1, memory / 2)
        cell[case.shape] = _cell_seconds(case, plan.chunks, plan.fuse)
    root = tempfile.mkdtemp(prefix="gf-scaling-")
    rows = []
    try:
        # stage_s, stage_cell_s: one-step classifies in-process on 512² and 1024²,
        # minus their modeled rounds: a line through the two.
        case0, chunks0 = checks[0]
        beyond = []
        for side in (512, 1024):
            one = Case((side, side), case0.nclasses, case0.window, 1, case0.chunks)
            with client():
                measured1 = _classify_seconds(_store(root, one, chunks0), root, one)
            c0 = Constants(cell[case0.shape], task_s, link, 0.0, 0.0)
            rounds1 = predict(one, c0, 1, 1, cores, memory, cores, stage=False).seconds
            beyond.append((side * side, max(0.0, measured1 - rounds1)))
        (n1, s1), (n2, s2) = beyond
        stage_cell_s = max(0.0, (s2 - s1) / (n2 - n1)) * cores
        stage_s = max(0.0, s1 - n1 * stage_cell_s / cores)
        print(
            f"Constants measured here: cell_s {', '.join(f'{s[0]}²: {v * 1e9:.1f} ns' for s, v in cell.items())}; "
            f"task_s {task_s * 1e6:.0f} µs; link {link / 1e9:.2f} GB/s (loopback); "
            f"stage_s {stage_s:.2f} s, stage_cell_s {stage_cell_s * 1e9:.0f} ns "
            f"(one-step classifies: {s1:.2f} s beyond the rounds on 512², {s2:.2f} s on 1024²)"
        )
        print()
        if args.check:
            print("| case | cluster | predicted s | measured s | measured / predicted |")
            print("|---|---|---:|---:|---:|")
            for case, chunks in checks:
                store = _store(root, case, chunks)
                consts = Constants(cell[case.shape], task_s, link, stage_s, stage_cell_s)
                for workers in (0, 1, 2, 4):
                    threads = cores if workers == 0 else max(1, cores // workers)
                    procs = max(1, workers)
                    kw = {} if workers == 0 else {"workers": workers, "threads": threads}
                    # Several processes on this machine share its cores.
                    pred = predict(case, consts, 1, procs, threads, memory / procs, cores)
                    with client(**kw):
                        got = _classify_seconds(store, root, case)
                    name = "in-process" if workers == 0 else f"{workers} proc x {threads} thr"
                    rows.append(got / pred.seconds)
                    print(
                        f"| {case.shape[0]}² x {case.nclasses}, w={case.window}, "
                        f"{case.iterations} steps, chunks {chunks} | {name} | {pred.seconds:.2f} "
                        f"| {got:.2f} | {got / pred.seconds:.2f} |",
                        flush=True,
                    )
            print()
        # The projection: 3-D, 4 classes, w=2, 10 steps, on nodes of the given size.
        proj_cell = _cell_seconds(Case((256,) * 3, 4, 2, 10), (128,) * 3, 4)
        consts = Constants(proj_cell, task_s, args.link_gbs * 1e9, stage_s, stage_cell_s)
        nodes_list = [1, 4, 16, 64, 256]
        print(
            f"Projection: 3-D, 4 classes, w=2, 10 steps; nodes of {args.node_cores} cores "
            f"(one worker of {args.node_cores} threads), {args.node_memory:g} GB, "
            f"{args.link_gbs:g} GB/s; cell_s {proj_cell * 1e9:.1f} ns measured on 128³ blocks."
        )
        print()
        print(
            "| cells | "
            + " | ".join(f"{n} nodes: s/step, tasks/round, GB/worker" for n in nodes_list)
            + " |"
        )
        print("|---|" + "---|" * len(nodes_list))
        for exp in (8, 9, 10, 11):
            side = round((10**exp) ** (1 / 3))
            case = Case((side,) * 3, 4, 2, 10)
            cells_ = []
            for n in nodes_list:
                p = predict(
                    case, consts, n, 1, args.node_cores, args.node_memory * 1e9 * 0.8,
                    args.node_cores,
                )  # fmt: skip
                fits = p.worker_bytes < args.node_memory * 1e9 * 0.8
                cells_.append(
                    f"{p.per_step:.3g}, {p.tasks_per_round:,}, {p.worker_bytes / 1e9:.3g}"
                    f"{'' if fits else ' (does not fit)'} [{p.bound}]"
                )
            print(f"| 1e{exp} ({side}³) | " + " | ".join(cells_) + " |")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if rows:
        print()
        print(f"measured / predicted: {min(rows):.2f} to {max(rows):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
