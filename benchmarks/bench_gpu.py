"""The GPU backend against the CPU path and against CuPy's own ndimage, side by side.

Run on a machine with an NVIDIA GPU (``bash benchmarks/gpu_check.sh`` runs it
after the GPU tests); ``--quick`` shrinks every case (a smoke test that also
runs without a device: the GPU columns then say why they are empty).

Cases, each timed after an untimed warm-up, device work between two
``cupy.cuda.Device().synchronize()`` calls, inputs already in place (on the
device for the GPU columns, in host memory for the CPU column):

``vote``
    One vote step (votes, argmax with ties to the lowest class, total) on
    4096**2 cells x 5 classes (w = 3, 10, 30) and 512**3 x 4 (w = 2), every
    cell labeled at random, periodic: gridflow's engine on CuPy arrays
    (``gridflow.engine.vote.vote`` + ``decide``, the method it picks),
    gridflow's fused direct kernel (``gridflow._kernels.cuda_vote.window_votes``
    + ``decide``, small windows), the peer (``cupyx.scipy.ndimage.correlate``
    of each class's one-hot plane, ``mode="wrap"``, then ``argmax``), and the
    CPU engine; whether the GPU labels equal the CPU's.
``reference``
    The reference configuration: 400**2 x 5 classes of
    ``shared/reference/granville_gd_400_w20.npz``, w = 20, 3 passes, as
    ``fused_steps`` on the device (no dask) and as ``gridflow.classify(...,
    backend="cupy")``; against the reference implementation's recorded 153 s.
``binning``
    1e9 uniform 2-D points (generated on the device in batches) counted into
    4096**2 x 5 cells (``gridflow._kernels.cuda_cells.count``), against the
    CPU kernel on 1e7 points; the counts of one batch compared.
``predict``
    1e9 query points: cell index and gather of a 4096**2 label grid
    (``cuda_cells.cells`` + ``gather``), against the CPU path on 1e7.
``fractal``
    800**2 cells, 250 iterations (``gridflow.fractal``) on both backends;
    labels compared.
``pipeline``
    ``examples/pipeline.yaml`` through ``gridflow --scheduler gpu --backend
    cupy run`` and through the CPU run; the two stores' label, density and
    cluster compared.

Nothing is asserted; every comparison is a column. ``--seconds`` bounds the
whole run: a case that would start past it is skipped, and says so.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from _common import machine, table  # noqa: E402

REFERENCE = os.path.join(HERE, "..", "..", "shared", "reference", "granville_gd_400_w20.npz")
FULL = {
    "vote": [
        ((4096, 4096), 5, 3),
        ((4096, 4096), 5, 10),
        ((4096, 4096), 5, 30),
        ((512,) * 3, 4, 2),
    ],
    "bin_points": 1_000_000_000,
    "cpu_points": 10_000_000,
    "batch": 100_000_000,
    "bin_shape": (4096, 4096),
    "fractal": ((800, 800), 250),
}
QUICK = {
    "vote": [((256, 256), 5, 3), ((32,) * 3, 4, 2)],
    "bin_points": 2_000_000,
    "cpu_points": 1_000_000,
    "batch": 1_000_000,
    "bin_shape": (256, 256),
    "fractal": ((64, 64), 20),
}


def device() -> Any:
    """CuPy when a CUDA device is visible, else the reason there is none (a str)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
        return cupy
    except Exception as exc:  # no CuPy, no driver: the GPU columns say so
        return f"no GPU ({type(exc).__name__}: {exc})".splitlines()[0][:80]


def gpu_seconds(cp: Any, fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Best device seconds of ``fn`` (after an untimed call), and its last result."""
    out = fn()
    cp.cuda.Device().synchronize()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        cp.cuda.Device().synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def cpu_seconds(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    out = fn()  # warm: numba kernels load, FFT plans
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def ms(s: float | None) -> str:
    return "—" if s is None else f"{s * 1e3:,.2f}"


def rate(n: int, s: float | None) -> str:
    return "—" if s is None or s <= 0 else f"{n / s:,.3g}"


def host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


# --- cases ------------------------------------------------------------------------


def case_vote(cfg: dict, cp: Any) -> str:
    from gridflow.engine.vote import decide, vote
    from gridflow.kernels import parse_kernel

    rows = []
    rng = np.random.default_rng(0)
    why = f" ({cp})" if isinstance(cp, str) else ""
    for shape, nclasses, w in cfg["vote"]:
        k = parse_kernel("inverse_distance", window=w, ndim=len(shape))
        labels = rng.integers(0, nclasses, shape, dtype=np.int32)
        wrap = (True,) * len(shape)
        cpu_s, (cpu_labels, _) = cpu_seconds(
            lambda labels=labels, k=k, nclasses=nclasses, wrap=wrap: decide(
                vote(labels, nclasses, k, "auto", None, wrap)
            )
        )
        engine_s = fused_s = peer_s = None
        equal = "—"
        if not isinstance(cp, str):
            import cupyx.scipy.ndimage as ndi

            from gridflow._kernels import cuda_vote

            dev = cp.asarray(labels)
            engine_s, (gl, _) = gpu_seconds(
                cp, lambda dev=dev, k=k, nclasses=nclasses, wrap=wrap: decide(
                    vote(dev, nclasses, k, "auto", None, wrap)
                )
            )  # fmt: skip
            if k.weights.size <= 21**3:  # the fused direct kernel: small windows
                fused_s, (fl, _) = gpu_seconds(
                    cp,
                    lambda dev=dev, k=k, nclasses=nclasses, wrap=wrap: cuda_vote.decide(
                        cuda_vote.window_votes(dev, k.weights, nclasses, wrap, False)
                    ),
                )
            else:
                fl = gl
            weights = cp.asarray(k.weights)

            def peer(dev=dev, weights=weights, nclasses=nclasses) -> Any:
                planes = [
                    ndi.correlate((dev == c).astype(cp.float64), weights, mode="wrap")
                    for c in range(nclasses)
                ]
                return cp.stack(planes).argmax(axis=0)

            peer_s, _ = gpu_seconds(cp, peer)
            same = np.array_equal(host(gl), cpu_labels) and np.array_equal(host(fl), cpu_labels)
            equal = "equal" if same else "DIFFERENT"
        rows.append(
            [
                f"{'x'.join(map(str, shape))} x {nclasses}",
                w,
                ms(engine_s),
                ms(fused_s),
                ms(peer_s),
                ms(cpu_s),
                "—" if engine_s is None else f"{cpu_s / min(engine_s, fused_s or engine_s):,.0f}x",
                equal,
            ]
        )
    return table(
        [
            "grid",
            "w",
            "gridflow engine ms (GPU)",
            "fused kernel ms (GPU)",
            "cupyx correlate + argmax ms (GPU)",
            "CPU engine ms",
            "GPU vs CPU",
            f"labels vs CPU{why}",
        ],
        rows,
    )


def case_reference(cfg: dict, cp: Any) -> str:
    import gridflow as gf
    from gridflow.engine.vote import fused_steps
    from gridflow.kernels import parse_kernel

    if not os.path.exists(REFERENCE):
        return f"the reference input {REFERENCE} is missing"
    z = np.load(REFERENCE)
    bitmap = z["input_bitmap"]
    labels = bitmap.astype(np.int32)
    labels[labels == 255] = -1
    w, nloop = int(z["params"][4]), int(z["params"][5])
    k = parse_kernel("inverse_distance", window=w, ndim=2)

    def steps(a: Any) -> Any:
        return fused_steps(a, None, nclasses=5, kernel=k, steps=nloop, first_step=1, wrap=True)

    cpu_s, cpu_out = cpu_seconds(lambda: steps(labels))
    counts = np.stack([(bitmap == c).astype(np.uint32) for c in range(5)])
    from _common import grid_from_counts

    ds = grid_from_counts(counts, 400)
    rows = []
    dev_s = stage_s = None
    equal = "—"
    if not isinstance(cp, str):
        dev_s, out = gpu_seconds(cp, lambda: steps(cp.asarray(labels)))
        stage_s, got = gpu_seconds(
            cp,
            lambda: gf.classify(ds, window=w, iterations=nloop, backend="cupy")["label"].values,
            repeat=1,
        )
        same = np.array_equal(host(out)[0], cpu_out[0]) and np.array_equal(
            np.asarray(got), cpu_out[0]
        )
        equal = "equal" if same else "DIFFERENT"
    ref = float(z["seconds"])
    rows.append(
        [
            "400x400 x 5, w=20, 3 passes",
            f"{ref:.1f}",
            ms(dev_s),
            "—" if dev_s is None else f"{ref / dev_s:,.0f}x",
            ms(stage_s),
            ms(cpu_s),
            equal,
        ]
    )
    return table(
        [
            "configuration",
            "reference s",
            "fused_steps ms (GPU)",
            "speed-up vs reference",
            "classify(backend='cupy') ms",
            "CPU fused_steps ms",
            "labels vs CPU",
        ],
        rows,
    )


def _spec(shape: tuple[int, ...]) -> Any:
    from gridflow.grid import GridSpec

    dims = tuple(f"x{i}" for i in range(len(shape)))
    return GridSpec(dims, bounds=(0, 1), bins=shape, periodic=(False,) * len(shape))


def case_binning(cfg: dict, cp: Any) -> str:
    from gridflow._kernels import binning as cpu_binning
    from gridflow.binning import _kernel_args

    shape, nclasses = cfg["bin_shape"], 5
    spec = _spec(shape)
    args = _kernel_args(spec)
    rng = np.random.default_rng(1)
    n_cpu = cfg["cpu_points"]
    cols = tuple(rng.random(n_cpu) for _ in shape)
    codes = rng.integers(0, nclasses, n_cpu).astype(np.int64)
    kern = cpu_binning.kernel(len(shape), "dense")

    def cpu() -> np.ndarray:
        grid = np.zeros(nclasses * spec.ncells, np.uint32)
        stats = np.zeros(4 + nclasses, np.int64)
        kern(cols, codes, nclasses, *args, grid, stats)
        return grid

    cpu_s, cpu_grid = cpu_seconds(cpu)
    gpu_s = None
    equal = "—"
    n_gpu = cfg["bin_points"]
    if not isinstance(cp, str):
        from gridflow._kernels import cuda_cells

        batch = min(cfg["batch"], n_gpu)
        dcols = tuple(cp.asarray(c) for c in cols)
        dcodes = cp.asarray(codes)
        grid = cp.zeros(nclasses * spec.ncells, cp.uint32)
        stats = cp.zeros(4 + nclasses, cp.int64)
        cuda_cells.count(dcols, dcodes, nclasses, *args, grid, stats)
        equal = "equal" if np.array_equal(host(grid), cpu_grid) else "DIFFERENT"
        gen = cp.random.default_rng(2)
        bcols = tuple(gen.random(batch) for _ in shape)
        bcodes = gen.integers(0, nclasses, batch).astype(cp.int64)
        grid = cp.zeros(nclasses * spec.ncells, cp.uint32)
        stats = cp.zeros(4 + nclasses, cp.int64)
        batches = -(-n_gpu // batch)
        one, _ = gpu_seconds(
            cp, lambda: cuda_cells.count(bcols, bcodes, nclasses, *args, grid, stats)
        )
        gpu_s = one * batches  # every batch is the same work: counting, not generating
    return table(
        [
            "grid",
            "GPU points",
            "GPU s",
            "GPU points/s",
            "CPU points",
            "CPU s",
            "CPU points/s",
            "counts vs CPU",
        ],
        [
            [
                f"{'x'.join(map(str, shape))} x {nclasses}",
                f"{n_gpu:,}",
                "—" if gpu_s is None else f"{gpu_s:.3f}",
                rate(n_gpu, gpu_s),
                f"{n_cpu:,}",
                f"{cpu_s:.3f}",
                rate(n_cpu, cpu_s),
                equal,
            ]
        ],
    )


def case_predict(cfg: dict, cp: Any) -> str:
    from gridflow._kernels.cells import flat_index

    shape = cfg["bin_shape"]
    spec = _spec(shape)
    rng = np.random.default_rng(3)
    labels = rng.integers(-1, 5, spec.ncells).astype(np.int16)
    n_cpu = cfg["cpu_points"]
    pts = rng.random((n_cpu, len(shape)))

    def cpu() -> np.ndarray:
        idx = flat_index(pts, spec)
        return np.where(idx >= 0, labels[np.maximum(idx, 0)], -1)

    cpu_s, cpu_out = cpu_seconds(cpu)
    gpu_s = None
    equal = "—"
    n_gpu = cfg["bin_points"]
    if not isinstance(cp, str):
        from gridflow._kernels import cuda_cells
        from gridflow.binning import _kernel_args

        args = _kernel_args(spec)
        dlabels = cp.asarray(labels)
        dcols = tuple(cp.asarray(np.ascontiguousarray(pts[:, j])) for j in range(len(shape)))
        got = cuda_cells.gather(dlabels, cuda_cells.cells(dcols, *args), -1)
        equal = "equal" if np.array_equal(host(got), cpu_out) else "DIFFERENT"
        batch = min(cfg["batch"], n_gpu)
        gen = cp.random.default_rng(4)
        bcols = tuple(gen.random(batch) for _ in shape)
        one, _ = gpu_seconds(
            cp, lambda: cuda_cells.gather(dlabels, cuda_cells.cells(bcols, *args), -1)
        )
        gpu_s = one * -(-n_gpu // batch)
    return table(
        ["grid", "GPU queries", "GPU s", "GPU points/s", "CPU queries", "CPU s", "CPU points/s",
         "labels vs CPU"],
        [[f"{'x'.join(map(str, shape))}", f"{n_gpu:,}", "—" if gpu_s is None else f"{gpu_s:.3f}",
          rate(n_gpu, gpu_s), f"{n_cpu:,}", f"{cpu_s:.3f}", rate(n_cpu, cpu_s), equal]],
    )  # fmt: skip


def case_fractal(cfg: dict, cp: Any) -> str:
    import dask

    import gridflow as gf

    shape, iterations = cfg["fractal"]
    rng = np.random.default_rng(5)
    X = rng.random((20_000, 2))
    y = (X[:, 0] + 0.2 * rng.standard_normal(len(X)) > 0.5).astype(int) + (X[:, 1] > 0.5)
    grid = gf.bin_points(X, labels=y, bins=shape, bounds=(0, 1), periodic=True)

    def run(backend: str) -> np.ndarray:
        out = gf.fractal(grid, iterations=iterations, burn_in=iterations // 5, backend=backend)
        (labels,) = dask.compute(out["fractal"].data)
        return host(labels)

    cpu_s, cpu_labels = cpu_seconds(lambda: run("numpy"))
    gpu_s = None
    equal = "—"
    if not isinstance(cp, str):
        gpu_s, got = gpu_seconds(cp, lambda: run("cupy"), repeat=1)
        equal = "equal" if np.array_equal(got, cpu_labels) else "DIFFERENT"
    return table(
        ["grid", "iterations", "GPU s", "CPU s", "labels vs CPU"],
        [
            [
                "x".join(map(str, shape)),
                iterations,
                "—" if gpu_s is None else f"{gpu_s:.3f}",
                f"{cpu_s:.3f}",
                equal,
            ]
        ],
    )


def case_pipeline(cfg: dict, cp: Any) -> str:
    import gridflow as gf

    config = os.path.join(HERE, "..", "examples", "pipeline.yaml")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        stores = {}
        runs = [("CPU", ["run"])]
        if not isinstance(cp, str):
            runs.append(("GPU", ["--scheduler", "gpu", "--backend", "cupy", "run"]))
        for name, argv in runs:
            work = os.path.join(tmp, name)
            os.makedirs(work)
            cmd = [sys.executable, "-m", "gridflow.cli", *argv, config, "--workdir", work]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            found = [
                os.path.join(work, d) for d in os.listdir(work) if d.endswith(".zarr")
            ]  # the pipeline's store
            stores[name] = found[0] if r.returncode == 0 and found else None
            why = "" if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]
            rows.append([name, " ".join(argv), f"{seconds:.1f}", r.returncode, why])
        if stores.get("GPU") and stores.get("CPU"):
            a, b = gf.open_grid(stores["CPU"]), gf.open_grid(stores["GPU"])
            names = [v for v in ("label", "density", "cluster", "fractal") if v in a]
            same = all(np.array_equal(a[v].values, b[v].values) for v in names)
            rows.append(["stores", ", ".join(names), "", "", "equal" if same else "DIFFERENT"])
    return table(["run", "command", "s", "exit", "note"], rows)


CASES = {
    "vote": ("One vote step", case_vote),
    "reference": ("The reference configuration", case_reference),
    "binning": ("Binning", case_binning),
    "predict": ("Prediction", case_predict),
    "fractal": ("Fractal classifier", case_fractal),
    "pipeline": ("A whole pipeline", case_pipeline),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (runs without a GPU too)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--seconds", type=float, default=480.0, help="budget for the whole run")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    cp = device()
    name = cp if isinstance(cp, str) else cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    out = [
        f"Machine: {machine('numpy', 'dask')}; device: {name}",
        "",
    ]
    for key in args.cases.split(","):
        title, fn = CASES[key]
        out += [f"### {title}", ""]
        if time.perf_counter() - t0 > args.seconds:
            out += [f"not run: the {args.seconds:g} s budget was spent", ""]
            continue
        try:
            out += [fn(cfg, cp), ""]
        except Exception:
            out += ["failed:", "", "```", traceback.format_exc().rstrip(), "```", ""]
        print("\n".join(out), flush=True)
        out = []
    print("\n".join([*out, f"Wall time {time.perf_counter() - t0:,.0f} s."]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
