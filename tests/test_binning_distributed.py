"""Binning on a real distributed cluster: worker processes with small memory limits."""

import numpy as np
import pytest
from distributed import Client

from gridflow import GridSpec, bin_points
from tests.conftest import local_cluster


@pytest.fixture(scope="module")
def small_workers():
    # Two worker processes of 1 GiB each (a third of it is the imports): less than
    # the 1.34 GB grid below.
    with local_cluster(memory_limit="1GiB") as cluster, Client(cluster) as client:
        yield client


def test_grid_larger_than_a_worker_bins_chunk_by_chunk(small_workers, tmp_path):
    rng = np.random.default_rng(7)
    n = 200_000
    spec = GridSpec(("x", "y"), bounds=(0, 1), bins=(8192, 8192))
    pts = rng.random((n, 2))
    labels = rng.integers(0, 5, n)
    grid_bytes = 5 * spec.ncells * 4
    limit = min(w["memory_limit"] for w in small_workers.scheduler_info()["workers"].values())
    assert grid_bytes > limit

    ds = bin_points(
        pts, tmp_path / "big.zarr", labels=labels, spec=spec, classes=range(5), layout="dense"
    )
    report = ds.attrs["gridflow_stages"]["bin"]["report"]
    assert report["strategy"] == "chunked"
    assert report["binned"] == n
    # No worker died on the way (a restarted worker would have lost its memory).
    assert len(small_workers.scheduler_info()["workers"]) == 2

    # Compare the non-zero cells chunk by chunk with NumPy, never loading the grid.
    flat = labels * spec.ncells + spec.flat_index(pts)
    keys, counts = np.unique(flat, return_counts=True)
    data = ds["counts"].data
    found_keys, found_counts = [], []
    for idx in np.ndindex(*data.numblocks):
        block = data.blocks[idx].compute(scheduler="threads")
        offset = [sum(c[:i]) for c, i in zip(data.chunks, idx, strict=True)]
        nz = np.nonzero(block)
        cls, x, y = (a + o for a, o in zip(nz, offset, strict=True))
        found_keys.append((cls * spec.bins[0] + x) * spec.bins[1] + y)
        found_counts.append(block[nz])
    order = np.argsort(np.concatenate(found_keys))
    np.testing.assert_array_equal(np.concatenate(found_keys)[order], keys)
    np.testing.assert_array_equal(np.concatenate(found_counts)[order], counts)
