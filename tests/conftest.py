from pathlib import Path

import numpy as np
import pytest

from gridflow.grid import GridSpec


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


DATA = Path(__file__).parent / "data"


def reference(name: str) -> dict[str, np.ndarray]:
    """The arrays of one reference output in tests/data (see tests/data/README.md).

    A missing file fails the test: these fixtures are part of the repository.
    """
    path = DATA / name
    if not path.is_file():
        pytest.fail(f"reference fixture {path} is missing (see tests/data/README.md)")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def reference_counts(points: np.ndarray, labels: np.ndarray, spec: GridSpec, nclasses: int):
    """Per-class counts with np.histogramdd on the grid's exact edges.

    Periodic dims are wrapped into [lo, hi) first; rows without a cell are
    left out, as gridflow drops them.
    """
    pts = np.array(points, dtype=np.float64, copy=True)
    for i, (lo, hi) in enumerate(spec.bounds):
        if spec.periodic[i]:
            t = np.fmod(pts[:, i] - lo, hi - lo)
            t = np.where(t < 0, t + (hi - lo), t)
            pts[:, i] = lo + t
    keep = spec.cell_index(points)[:, 0] >= 0
    edges = [spec.edges(i) for i in range(spec.ndim)]
    out = np.zeros((nclasses, *spec.shape), dtype=np.int64)
    for k in range(nclasses):
        sel = keep & (labels == k)
        if sel.any():
            cells = spec.cell_index(points[sel])
            np.add.at(out[k], tuple(cells.T), 1)
            hist, _ = np.histogramdd(pts[sel], bins=edges)
            if not any(spec.periodic):
                assert np.array_equal(hist.astype(np.int64), out[k]), "edges disagree"
    return out


def local_cluster(**kwargs):
    """Two single-threaded worker processes on localhost, no dashboard (``kwargs`` add to it).

    Use as ``with local_cluster() as cluster, Client(cluster): ...``.
    """
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        **kwargs,
    )


def has_cuda_device() -> bool:
    """Whether CuPy imports and sees a CUDA device (the gpu tests run; else they skip)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device
        return False


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module an engine test runs on: NumPy, and CuPy where a CUDA device exists.

    The ``cupy`` case carries the ``gpu`` mark and is skipped, saying why, on
    a machine without CuPy or a device (CI), so one test body serves both.
    """
    if request.param == "numpy":
        return np
    cupy = pytest.importorskip("cupy", reason="the gpu case needs CuPy (gridflow[gpu])")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("the gpu case needs a CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError:
        pytest.skip("the gpu case needs a CUDA device")
    return cupy


def to_host(a):
    """A NumPy copy of an array of any backend (CuPy arrays leave the device)."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def same_partition(a, b):
    """True when a and b split the cells the same way (ids may differ); -1 must match."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if not np.array_equal(a < 0, b < 0):
        return False
    m = a >= 0
    pairs = set(zip(a[m].tolist(), b[m].tolist(), strict=True))
    return len(pairs) == len(set(a[m].tolist())) == len(set(b[m].tolist()))
