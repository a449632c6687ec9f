import json

import numpy as np
import pytest

from gridflow import bin_points, open_grid
from gridflow.errors import StoreError
from gridflow.store import FORMAT_VERSION, grid_spec, summary


@pytest.fixture
def store(tmp_path, rng):
    pts = rng.random((500, 3))
    labels = np.array(["a", "b"])[rng.integers(0, 2, 500)]
    path = tmp_path / "g.zarr"
    bin_points(
        pts,
        path,
        labels=labels,
        columns=["x", "y", "z"],
        bins=(4, 5, 6),
        bounds=(0, 1),
        periodic=[True, False, False],
        chunks=3,
    )
    return path


def test_schema(store):
    ds = open_grid(store)
    assert ds["counts"].dims == ("class", "x", "y", "z")
    assert ds["counts"].dtype == np.uint32
    assert ds["class"].values.tolist() == ["a", "b"]
    np.testing.assert_allclose(ds["y"].values, [0.1, 0.3, 0.5, 0.7, 0.9])
    assert ds["x"].attrs["periodic"] == 1 and ds["y"].attrs["periodic"] == 0
    assert ds["z"].attrs["bins"] == 6 and ds["z"].attrs["bounds"] == [0.0, 1.0]
    assert ds.attrs["gridflow_format"] == FORMAT_VERSION
    spec = grid_spec(ds)
    assert spec.bins == (4, 5, 6) and spec.periodic == (True, False, False)
    assert ds["counts"].data.chunksize == (2, 3, 3, 3)
    assert len(ds.attrs["history"].splitlines()) == 1
    assert " bin " in ds.attrs["history"]


def test_summary_lists_what_info_promises(store):
    text = summary(open_grid(store))
    assert "x" in text and "4 bins" in text and "periodic" in text
    assert "classes (2)" in text and "stages: bin" in text
    ds = open_grid(store)
    for name, n in zip(["a", "b"], ds["counts"].sum(["x", "y", "z"]).values, strict=True):
        assert f"{name}" in text and f"{int(n):,} points" in text


def test_newer_format_is_refused(store):
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["gridflow_format"] = FORMAT_VERSION + 1
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="upgrade gridflow"):
        open_grid(store)


def test_missing_store(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_grid(tmp_path / "nope.zarr")


def test_not_a_zarr_store(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(StoreError, match="not a gridflow store"):
        open_grid(tmp_path / "x.zarr")


# --- data safety (docs/design.md §4.2): the writer's lock, whole stages, self-checked metadata ------


import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

import xarray as xr  # noqa: E402

from gridflow import store as store_mod  # noqa: E402
from gridflow.classify import classify  # noqa: E402
from gridflow.errors import StaleLockWarning, StorageError, StoreBusyError  # noqa: E402


@pytest.fixture
def grid2d(tmp_path, rng):
    pts = rng.random((3000, 2))
    labels = (pts[:, 0] * 3).astype(int)
    path = tmp_path / "g.zarr"
    bin_points(pts, path, labels=labels, bins=24, bounds=(0, 1), periodic=True, chunks=12)
    return path


def _write_lock(store, pid, host=None, started=None):
    lock = os.path.join(store, store_mod.LOCK)
    os.makedirs(lock, exist_ok=True)
    doc = {"pid": pid, "host": host or socket.gethostname(), "process_start": started}
    with open(os.path.join(lock, "zarr.json"), "w") as f:
        json.dump({"zarr_format": 3, "node_type": "group", "attributes": {"gridflow_lock": doc}}, f)
    return lock


def test_a_second_writer_is_refused_with_the_holder_named(grid2d):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(grid2d, holder.pid)
        with pytest.raises(StoreBusyError) as info:
            classify(grid2d, window=1, iterations=1)
        msg = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in msg
        assert f"rm -r {os.path.realpath(grid2d)}/{store_mod.LOCK}" in msg and "\n" not in msg
    finally:
        holder.kill()
        holder.wait()
    # Nothing was written, and the holder's lock is still there.
    assert "classify" not in open_grid(grid2d).attrs["gridflow_stages"]
    assert os.path.isdir(os.path.join(grid2d, store_mod.LOCK))


def test_a_stale_lock_is_taken_over_with_a_warning(grid2d):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(grid2d, dead.pid)
    with pytest.warns(StaleLockWarning, match=f"pid {dead.pid} .* no longer runs"):
        ds = classify(grid2d, window=1, iterations=1)
    assert "classify" in ds.attrs["gridflow_stages"]
    assert not os.path.exists(os.path.join(grid2d, store_mod.LOCK))  # released on exit


def test_a_reused_pid_is_stale(grid2d):
    # Our own pid, but recorded with another process start time: a pid the
    # kernel handed out again after the writer died.
    _write_lock(grid2d, os.getpid(), started="1")
    with pytest.warns(StaleLockWarning):
        classify(grid2d, window=1, iterations=1)


def test_a_lock_of_another_host_counts_until_its_heartbeat_stops(grid2d):
    lock = _write_lock(grid2d, 1, host="node-that-is-not-here")
    with pytest.raises(StoreBusyError, match="on host node-that-is-not-here"):
        classify(grid2d, window=1, iterations=1)
    old = os.stat(os.path.join(lock, "zarr.json")).st_mtime - store_mod.STALE_AFTER - 1
    os.utime(os.path.join(lock, "zarr.json"), (old, old))
    with pytest.warns(StaleLockWarning):
        classify(grid2d, window=1, iterations=1)


def test_the_lock_is_reentrant_and_released(grid2d):
    lock = os.path.join(grid2d, store_mod.LOCK)
    with store_mod.writer_lock(grid2d):
        assert os.path.isdir(lock)
        with store_mod.writer_lock(grid2d):
            classify(grid2d, window=1, iterations=1)
        assert os.path.isdir(lock)
    assert not os.path.exists(lock)


def test_no_lock_in_a_folder_gridflow_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    with (
        pytest.raises(StoreError, match="not a gridflow store"),
        store_mod.writer_lock(tmp_path / "mine"),
    ):
        pass
    assert os.listdir(tmp_path / "mine") == []


def test_every_store_opens_with_consolidated_metadata_and_no_warning(grid2d):
    from gridflow.cluster import cluster
    from gridflow.fractal import fractal

    classify(grid2d, window=1, iterations=2, probabilities=True)
    cluster(grid2d, window=1, iterations=2, min_cells=2)
    fractal(grid2d, iterations=4, burn_in=2, record=2)
    root = json.loads((grid2d / "zarr.json").read_text())
    members = root["consolidated_metadata"]["metadata"]
    for name in ("counts", "label", "probability", "cluster", "fractal", "fractal_frames"):
        assert name in members
        # The consolidated entry is the array's own metadata, as on disk.
        assert members[name] == json.loads((grid2d / name / "zarr.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(grid2d)
    assert {"label", "cluster", "fractal"} <= set(ds.data_vars)


def test_labels_read_as_unlabeled_where_a_chunk_is_missing(grid2d):
    from gridflow.cluster import cluster

    classify(grid2d, window=1, iterations=1)
    cluster(grid2d, window=1, iterations=1, min_cells=2)
    for name in ("label", "cluster"):
        assert json.loads((grid2d / name / "zarr.json").read_text())["fill_value"] == -1
    # (cluster writes no chunk here: this grid is all noise, which is the fill value)
    name = "label"
    meta = json.loads((grid2d / name / "zarr.json").read_text())
    cy, cx = meta["chunk_grid"]["configuration"]["chunk_shape"]
    chunk = sorted((grid2d / name / "c").glob("*/*"))[-1]  # a chunk that was written
    i, j = int(chunk.parent.name), int(chunk.name)
    before = open_grid(grid2d)[name].values[i * cy : (i + 1) * cy, j * cx : (j + 1) * cx]
    assert (before != -1).any()
    chunk.unlink()  # as if it had never been written
    values = open_grid(grid2d)[name].values
    assert (values[i * cy : (i + 1) * cy, j * cx : (j + 1) * cx] == -1).all()
    assert values.dtype.kind == "i"


def _classified_twice(path):
    """A store classified once (window 1), and the result a window-2 run gives."""
    first = classify(path, window=1, iterations=2)
    second = classify(open_grid(path), window=2, iterations=2)
    return first["label"].values, second["label"].values


def test_a_failed_stage_write_leaves_the_previous_stage_valid(grid2d, monkeypatch):
    old, _ = _classified_twice(grid2d)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_zarr", full)
    with pytest.raises(StorageError, match="no space left on device") as info:
        classify(grid2d, window=2, iterations=2)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    ds = open_grid(grid2d)
    assert ds.attrs["gridflow_stages"]["classify"]["window"] == [1, 1]
    np.testing.assert_array_equal(ds["label"].values, old)
    assert not (grid2d / store_mod.STAGING).exists()


def _interrupt_the_swap(monkeypatch, after):
    """Make the stage writer's ``after``-th rename raise, as a kill there would stop it."""
    calls = {"n": 0}
    real = os.rename

    def rename(a, b):
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        real(a, b)

    monkeypatch.setattr(store_mod.os, "rename", rename)


@pytest.mark.parametrize("after", [0, 1, 3, 5])
def test_an_interrupted_swap_reads_as_incomplete_and_resume_finishes_it(grid2d, monkeypatch, after):
    from click.testing import CliRunner

    from gridflow.cli import main
    from gridflow.predict import predict

    _, new = _classified_twice(grid2d)
    _interrupt_the_swap(monkeypatch, after)
    with pytest.raises(KeyboardInterrupt):
        classify(grid2d, window=2, iterations=2)
    monkeypatch.undo()
    ds = open_grid(grid2d)
    assert store_mod.incomplete_stages(ds) == ["classify"]
    assert "classify" not in ds.attrs["gridflow_stages"]
    assert not {"label", "confidence", "density"} & set(ds.variables)  # never half read
    assert "classify (incomplete: rerun it, with --resume)" in summary(ds)
    with pytest.raises(StoreError, match=r"classify stage of the grid is incomplete.*--resume"):
        predict(ds, np.array([[0.5, 0.5]]))
    r = CliRunner().invoke(main, ["--no-progress", "render", str(grid2d), "--out", "x.png"])
    assert r.exit_code == 2 and "incomplete" in r.output and r.output.count("\n") == 1
    # Nothing was checkpointed (the run was one round): --resume starts over.
    out = classify(grid2d, window=2, iterations=2, resume=True)
    np.testing.assert_array_equal(out["label"].values, new)
    assert store_mod.incomplete_stages(out) == []


def test_resume_is_safe_to_always_pass(grid2d, caplog):
    ref = classify(open_grid(grid2d), window=1, iterations=3)
    with caplog.at_level("INFO", logger="gridflow.checkpoint"):
        out = classify(grid2d, window=1, iterations=3, resume=True)
    assert "starting from the beginning" in caplog.text
    np.testing.assert_array_equal(out["label"].values, ref["label"].values)
    lines = len(out.attrs["history"].splitlines())
    caplog.clear()
    with caplog.at_level("INFO", logger="gridflow.checkpoint"):
        again = classify(grid2d, window=1, iterations=3, resume=True)
    assert "is finished; nothing to do" in caplog.text
    assert len(again.attrs["history"].splitlines()) == lines  # nothing ran
    # Other parameters than the finished stage's: a run, from the beginning.
    other = classify(grid2d, window=2, iterations=3, resume=True)
    assert other.attrs["gridflow_stages"]["classify"]["window"] == [2, 2]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda a: a.update(gridflow_stages=["bin"]), "gridflow_stages attribute of type list"),
        (lambda a: a.update(gridflow_format="1"), "format version '1'"),
        (lambda a: a.update(gridflow_format=True), "format version True"),
        (lambda a: a["gridflow_grid"].update(bins=[4, 5, 7]), "records bins"),
        (lambda a: a.update(gridflow_grid="x"), "lacks its grid"),
        (lambda a: a.update(gridflow_incomplete="classify"), "gridflow_incomplete attribute"),
    ],
)
def test_store_metadata_is_checked_against_itself(store, edit, match):
    root = store / "zarr.json"
    doc = json.loads(root.read_text())
    edit(doc["attributes"])
    root.write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=match):
        open_grid(store)


def test_unreadable_root_metadata_is_a_clear_error(store):
    (store / "zarr.json").write_text('{"attributes": {"gridflow_fo')
    with pytest.raises(StoreError, match=r"cannot be read.*damaged"):
        open_grid(store)


def test_a_temporary_sibling_is_never_opened_as_a_store(store, tmp_path):
    import shutil

    tmp = tmp_path / ".g.zarr.tmp-0123456789ab"
    shutil.copytree(store, tmp)
    with pytest.raises(StoreError, match="temporary folder of an interrupted gridflow write"):
        open_grid(tmp)
