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
