import tracemalloc
import warnings

import numpy as np
import pytest

from gridflow import bin_points
from gridflow.classify import classify
from gridflow.engine.planner import filter_task_bytes, plan_filter
from gridflow.engine.vote import fused_steps
from gridflow.errors import MemoryPlanWarning
from gridflow.kernels import parse_kernel


@pytest.mark.parametrize(
    ("ndim", "chunk", "nclasses", "window", "steps"),
    [(2, 160, 5, 3, 2), (2, 96, 3, 2, 4), (2, 128, 8, 6, 1), (3, 24, 4, 2, 2)],
)
def test_estimate_bounds_the_measured_peak_of_a_block(rng, ndim, chunk, nclasses, window, steps):
    kernel = parse_kernel("inverse_distance", window=window, ndim=ndim)
    side = chunk + 2 * steps * window
    labels = rng.integers(-1, nclasses, size=(side,) * ndim).astype(np.int32)
    # Run once first: numba's import and compilation are not the block's.
    fused_steps(labels, None, nclasses=nclasses, kernel=kernel, steps=steps, first_step=1)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fused_steps(
            labels,
            None,
            nclasses=nclasses,
            kernel=kernel,
            steps=steps,
            first_step=1,
            final_votes=True,
        )
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    estimate = filter_task_bytes((chunk,) * ndim, nclasses, (window,) * ndim, steps)
    assert peak <= estimate <= 2.5 * peak


def test_plan_keeps_chunks_that_fit_and_limits_fusion_to_the_budget():
    shape, radius = (4096, 4096), (10, 10)
    roomy = plan_filter(shape, 5, radius, iterations=8, chunks=(512, 512), memory=8e9, threads=2)
    assert roomy.fits and roomy.chunks == (512, 512) and roomy.fuse == 8
    # Less memory: the same chunks, fewer steps per round.
    tight = plan_filter(shape, 5, radius, iterations=8, chunks=(512, 512), memory=3e8, threads=2)
    assert tight.chunks == (512, 512) and 1 <= tight.fuse < 8
    assert tight.worker_bytes <= 0.6 * 3e8
    # Even one step does not fit: smaller chunks.
    small = plan_filter(shape, 5, radius, iterations=8, chunks=(2048, 2048), memory=2e8, threads=2)
    assert small.fits and small.chunks[0] < 2048 and small.worker_bytes <= 0.6 * 2e8


def test_plan_warns_before_a_run_that_cannot_fit():
    with pytest.warns(MemoryPlanWarning, match="memory: a worker needs about"):
        plan = plan_filter((4096, 4096), 50, (40, 40), iterations=3, memory=1e6, threads=4)
    assert not plan.fits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan_filter((4096, 4096), 50, (40, 40), iterations=3, memory=1e6, threads=4, warn=False)


def test_classify_with_planned_chunks_gives_the_same_result(rng):
    pts = rng.random((5000, 2))
    labels = (pts[:, 1] * 3).astype(int)
    ds = bin_points(pts, labels=labels, bins=(60, 50), bounds=(0, 1), periodic=True, chunks=60)
    whole = classify(ds, window=3, iterations=4, boundary="open")
    for chunks in ("auto", 16, (25, 13)):
        out = classify(ds, window=3, iterations=4, boundary="open", chunks=chunks)
        np.testing.assert_array_equal(out["label"].values, whole["label"].values)
        np.testing.assert_array_equal(out["density"].values, whole["density"].values)
    assert classify(ds, window=3, iterations=2, chunks=16)["label"].data.chunksize == (16, 16)
