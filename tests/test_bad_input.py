"""Bad input and hostile environments end in one line, exit code 2, nothing written.

Each fault runs the real command line (a subprocess, as a batch job runs it,
or click's runner where nothing runs in Dask tasks) and checks: exit code 2,
exactly one line on stderr, starting with ``error:`` and naming the problem,
no traceback, and nothing at the output path. The library raises a
:class:`~gridflow.errors.GridflowError` (a ``ValueError``) for the same faults.

Read-only and full filesystems are real mounts (tmpfs): the tests run as root
on CI, where ``chmod`` stops nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from gridflow import bin_points, open_grid
from gridflow.cli import main
from gridflow.engine.planner import check_dense_grid, plan_binning
from gridflow.errors import (
    GridflowError,
    GridTooLargeError,
    InputDataError,
    ParameterError,
    StorageError,
)
from gridflow.runtime import ClusterMemory
from tests._cli import cli_env, gridflow_command, pipeline_config, run_in_empty_workdir

# --- helpers ---------------------------------------------------------------------------


def gridflow(
    *args: object, env: dict[str, str] | None = None, level: str = "warning"
) -> subprocess.CompletedProcess:
    """The CLI in a child process, log lines of ``level`` and above on stderr."""
    return subprocess.run(
        gridflow_command("--log-level", level, *args),
        env=cli_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=300,
    )


def gridflow_started(*args: object, level: str = "warning") -> subprocess.Popen:
    """:func:`gridflow` started in the background; :func:`ended` waits for it."""
    return subprocess.Popen(
        gridflow_command("--log-level", level, *args),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ended(job: subprocess.Popen) -> subprocess.CompletedProcess:
    """A background command's end, as :func:`gridflow` reports it."""
    out, err = job.communicate(timeout=300)
    return subprocess.CompletedProcess(job.args, job.returncode, out, err)


def invoke(*args: object):
    return CliRunner().invoke(main, ["--log-level", "warning", *map(str, args)])


def one_error(stderr: str, stdout: str = "", *words: str) -> str:
    """The one ``error:`` line of a failed command, checked for ``words``."""
    assert "Traceback" not in stderr + stdout, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for w in words:
        assert w in line, line
    return line


def failed(r, *words: str) -> str:
    """Exit code 2 and one error line naming ``words`` (a subprocess or a click result)."""
    code = r.returncode if isinstance(r, subprocess.CompletedProcess) else r.exit_code
    assert code == 2, (code, r.stderr, r.stdout)
    return one_error(r.stderr, r.stdout, *words)


def nothing_at(path: Path) -> None:
    """No output, and no temporary sibling of a staged write, at ``path``."""
    assert not path.exists()
    if path.parent.exists():
        assert not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]


def write_points(path: Path, n: int = 2000, *, seed: int = 0, labels=None) -> Path:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x": rng.random(n), "y": rng.random(n)})
    df["label"] = rng.integers(0, 3, n) if labels is None else labels
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    return path


@pytest.fixture
def points(tmp_path) -> Path:
    return write_points(tmp_path / "pts.parquet")


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False):
    """A real tmpfs of ``size`` at ``path`` (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(mount: Path, leave_pages: int) -> None:
    """Take all but ``leave_pages`` pages of a tmpfs."""
    st = os.statvfs(mount)
    keep = max(st.f_bavail - leave_pages, 0) * st.f_frsize
    with open(mount / "filler", "wb") as f:
        f.write(b"\0" * keep)


# --- filesystems that refuse the write -------------------------------------------------


def test_bin_onto_a_read_only_filesystem(tmp_path, points):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        store = ro / "g.zarr"
        r = gridflow("bin", points, store, "--bins", 20)
        failed(r, "read-only filesystem", str(store))
        nothing_at(store)
        with pytest.raises(StorageError, match="read-only"):
            bin_points(points, store, bins=20)


def test_bin_onto_a_full_disk_leaves_nothing(tmp_path, points):
    with tmpfs(tmp_path / "full", "64k") as full:
        store = full / "g.zarr"
        r = gridflow("bin", points, store, "--bins", 40, "--chunks", 10)
        failed(r, "no space left on device", str(store), "free space")
        nothing_at(store)
        assert list(full.iterdir()) == []
        with pytest.raises(StorageError, match="no space left"):
            bin_points(points, store, bins=40, chunks=10)


def test_classify_on_a_full_disk_in_worker_processes(tmp_path, points):
    # The chunks are written by tasks in a worker process: their OSError
    # crosses processes, and neither distributed's "Compute Failed" report nor
    # the cluster's teardown adds a line. (One worker process is enough: it
    # runs a task per core, as two workers together would, and is started,
    # quieted and torn down as each of them would be.)
    source = tmp_path / "g.zarr"
    bin_points(points, source, bins=64, chunks=16)
    with tmpfs(tmp_path / "full", "1m") as full:
        store = full / "g.zarr"
        subprocess.run(["cp", "-r", str(source), str(store)], check=True)
        fill(full, leave_pages=6)
        r = gridflow("--workers", 1, "classify", store, "--window", 1, "--iterations", 2)
        failed(r, "no space left", str(store))
        ds = open_grid(store)  # the store keeps its previous state
        assert "classify" not in ds.attrs["gridflow_stages"] and "label" not in ds


# --- damaged files -----------------------------------------------------------------------


def damage_a_page(path: Path) -> None:
    meta = pq.ParquetFile(path).metadata
    offset = meta.row_group(0).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    for i in range(offset + 40, offset + 200):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def write_plain_parquet(path: Path, n: int = 5000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    table = pa.table({"x": rng.random(n), "y": rng.random(n), "label": rng.integers(0, 3, n)})
    pq.write_table(table, path, compression="snappy")
    return path


def test_parquet_file_with_a_damaged_page(tmp_path):
    bad = write_plain_parquet(tmp_path / "bad.parquet")
    damage_a_page(bad)
    store = tmp_path / "g.zarr"
    for bounds in ([], ["--bounds", "0,1"]):  # the bounds pass, or the binning pass, reads it
        r = gridflow("bin", bad, store, "--bins", 10, *bounds)
        failed(r, f"cannot read {bad} as Parquet", "damaged")
        nothing_at(store)
    with pytest.raises(InputDataError, match="as Parquet"):
        bin_points(str(bad), bins=10)


def test_damaged_file_of_a_parquet_folder_is_named(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(3):
        write_plain_parquet(folder / f"part-{i}.parquet", seed=i)
    damage_a_page(folder / "part-1.parquet")
    store = tmp_path / "g.zarr"
    r = gridflow("bin", folder, store, "--bins", 10)
    failed(r, str(folder / "part-1.parquet"), "damaged")
    nothing_at(store)


@pytest.fixture
def store(tmp_path, points) -> Path:
    path = tmp_path / "grid.zarr"
    bin_points(points, path, bins=20, chunks=10)
    return path


def test_damaged_chunk_of_a_store(store, tmp_path):
    chunk = max(
        (p for p in (store / "counts" / "c").rglob("*") if p.is_file()), key=os.path.getsize
    )
    data = bytearray(chunk.read_bytes())
    for i in range(8, len(data)):
        data[i] ^= 0x5A
    chunk.write_bytes(bytes(data))
    contents = sorted(os.listdir(store))
    # Three runs at once, each on its own copy of the damaged store: in this
    # process, in a worker process, and in a worker process at the info level.
    runs = {  # the options before and after "classify STORE --window 1", the log level
        "here": ([], ["--iterations", 1], "warning"),
        "worker": (["--workers", 1], ["--iterations", 1], "warning"),
        "info": (["--workers", 1], [], "info"),
    }
    jobs = {}
    for name, (workers, more, level) in runs.items():
        copy = tmp_path / f"{name}.zarr"
        shutil.copytree(store, copy)
        args = [*workers, "classify", copy, "--window", 1, *more]
        jobs[name] = copy, gridflow_started(*args, level=level)
    done = {name: (copy, ended(job)) for name, (copy, job) in jobs.items()}
    for name in ("here", "worker"):
        copy, r = done[name]
        failed(r, f"cannot read {copy}", "chunk is damaged")
    for copy, _ in done.values():
        assert "classify" not in open_grid(copy).attrs["gridflow_stages"]
        assert sorted(os.listdir(copy)) == contents  # no lock, staging or checkpoint left
    # At the default level the log lines stay, and the task's error is still one line.
    _, r = done["info"]
    assert r.returncode == 2 and "Traceback" not in r.stderr and "Compute Failed" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: store: cannot read"), r.stderr


def test_damaged_store_metadata(store):
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gr')
    for command in (["info", store], ["classify", store, "--window", 1]):
        r = gridflow(*command)
        failed(r, str(store), "damaged")


# --- labels that cannot be classes ---------------------------------------------------------


@pytest.mark.parametrize("as_folder", [False, True])
def test_csv_files_with_int_labels_in_one_and_strings_in_another(tmp_path, as_folder):
    folder = tmp_path / "csv"
    folder.mkdir()
    a = write_points(folder / "a.csv", 100)
    b = write_points(folder / "b.csv", 100, labels=np.where(np.arange(100) % 2, "cat", "dog"))
    store = tmp_path / "g.zarr"
    source = folder if as_folder else folder / "*.csv"
    r = gridflow("bin", source, store, "--bins", 10)
    failed(r, "'label'", "integers", str(a), "strings", str(b), "one type")
    nothing_at(store)
    # The same values in every file bin fine, from a folder too.
    write_points(b, 100, seed=1)
    r = gridflow("bin", source, store, "--bins", 10)
    assert r.returncode == 0, r.stderr
    assert "binned 200 of 200 rows" in r.stdout


def test_object_npz(tmp_path):
    path = tmp_path / "points.npz"
    np.savez(path, x=np.zeros(5), y=np.zeros(5), label=np.array([{"a": 1}] * 5, dtype=object))
    store = tmp_path / "g.zarr"
    failed(gridflow("bin", path, store, "--bins", 4), "'label'", "dtype object", "strings")
    nothing_at(store)


def test_list_valued_labels(tmp_path):
    path = write_points(tmp_path / "pts.parquet", 50, labels=[[1, 2]] * 50)
    store = tmp_path / "g.zarr"
    failed(gridflow("bin", path, store, "--bins", 4), "'label'", "one integer or string per row")
    nothing_at(store)
    frame = pd.DataFrame({"x": [0.1, 0.2], "y": [0.3, 0.4], "label": [["a"], ["b"]]})
    with pytest.raises(InputDataError, match="per row"):
        bin_points(frame, bins=4, bounds=(0, 1))


def test_more_distinct_labels_than_classes_needs_max_classes(tmp_path):
    n = 3000
    path = write_points(tmp_path / "ids.parquet", n, labels=np.arange(n))  # an id column
    store = tmp_path / "g.zarr"
    line = failed(gridflow("bin", path, store, "--bins", 8), "3,000 distinct values", "--label")
    assert "--max-classes" in line and "1,024" in line
    nothing_at(store)
    with pytest.raises(InputDataError, match="max_classes"):
        bin_points(str(path), bins=8, max_classes=100)
    r = gridflow("bin", path, store, "--bins", 8, "--max-classes", 5000)
    assert r.returncode == 0, r.stderr
    assert open_grid(store).sizes["class"] == n
    failed(
        invoke("bin", path, tmp_path / "h.zarr", "--bins", 8, "--max-classes", 0), "--max-classes"
    )


# --- grids that cannot be -------------------------------------------------------------------


@pytest.fixture
def points3d(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    df = pd.DataFrame(rng.random((500, 3)), columns=["x", "y", "z"])
    df["label"] = rng.integers(0, 3, 500)
    df.to_parquet(tmp_path / "p3.parquet")
    return tmp_path / "p3.parquet"


@pytest.mark.parametrize(
    ("bins", "words"),
    [
        (10_000_000, ["10000000x10000000x10000000 cells", "ZiB"]),  # 656 TiB per class and more
        (2000, ["2000x2000x2000 cells", "29.8 GiB"]),
    ],
)
def test_dense_grid_larger_than_the_workers_is_refused(tmp_path, points3d, bins, words):
    store = tmp_path / "g.zarr"
    dense = ["--layout", "dense"]  # auto would store it sparse (tests/test_sparse_binning.py)
    r = gridflow("--memory-limit", "2GB", "bin", points3d, store, "--bins", bins, *dense)
    line = failed(r, "--bins: a dense grid of", *words, "fewer bins", "--memory-limit", "sparse")
    assert "1 worker of 1.9 GiB" in line
    nothing_at(store)


def test_eight_dims_of_16_bins_is_refused_before_the_data_is_read(tmp_path):
    rng = np.random.default_rng(8)
    frame = pd.DataFrame(rng.random((300, 8)), columns=[f"x{i}" for i in range(8)])
    frame["label"] = pd.Categorical(rng.integers(0, 3, 300))
    frame.to_parquet(tmp_path / "p8.parquet")
    store = tmp_path / "g.zarr"
    r = gridflow(
        "--memory-limit", "2GB", "bin", tmp_path / "p8.parquet", store, "--bins", 16,
        "--layout", "dense",
    )  # fmt: skip
    # Before the pass that finds the classes: one class at least.
    failed(r, "16x16x16x16x16x16x16x16 cells needs at least 16.0 GiB", "1 worker of 1.9 GiB")
    nothing_at(store)


def test_dense_grid_check_counts_the_classes_and_every_worker():
    mem = ClusterMemory(total=2 * 8e9, workers=2, smallest=8e9, threads=4)
    with pytest.raises(
        GridTooLargeError, match=r"x 3 classes needs 48\.0 GiB .*\(2 workers, 14\.9 GiB together\)"
    ):
        check_dense_grid((16,) * 8, 3, memory=mem)
    assert check_dense_grid((400, 400), 5, memory=mem) == 4 * 5 * 400 * 400


def test_binning_plans_one_worker(tmp_path, points):
    mem = ClusterMemory(total=2e9, workers=2, smallest=1e9, threads=1)
    # A grid larger than a worker bins chunk by chunk; one holding a grid per
    # thread (tree) or huge chunks cannot fit a worker.
    assert plan_binning((8192, 8192), 5, (1024, 1024), memory=mem).strategy == "chunked"
    with pytest.raises(GridTooLargeError, match=r"^strategy: the tree strategy"):
        plan_binning((4000, 4000), 3, (1000, 1000), strategy="tree", memory=mem)
    with pytest.raises(GridTooLargeError, match=r"^chunks: chunks of 8000x8000 cells x 3 classes"):
        plan_binning((8000, 8000), 3, (8000, 8000), memory=mem)
    store = tmp_path / "g.zarr"
    base = ["--memory-limit", "1GB", "--threads", 1, "bin", points, store, "--layout", "dense"]
    failed(invoke(*base, "--bins", 4000, "--strategy", "tree"), "--strategy: the tree strategy")
    failed(invoke(*base, "--bins", 8000, "--chunks", 8000), "--chunks: chunks of 8000x8000")
    nothing_at(store)


@pytest.mark.parametrize(
    ("bounds", "words"),
    [
        ("-1e308,1e308", ["--bounds:", "overflows to inf"]),
        ("nan,1", ["--bounds:", "non-finite"]),
        ("0,inf", ["--bounds:", "non-finite"]),
    ],
)
def test_bounds_that_are_not_a_span(tmp_path, points, bounds, words):
    store = tmp_path / "g.zarr"
    failed(invoke("bin", points, store, "--bins", 10, "--bounds", bounds), *words)
    nothing_at(store)


def test_data_whose_span_overflows(tmp_path):
    path = write_points(tmp_path / "wide.parquet", 10)
    frame = pd.read_parquet(path)
    frame.loc[0, "x"], frame.loc[1, "x"] = -1e308, 1e308
    frame.to_parquet(path)
    store = tmp_path / "g.zarr"
    failed(gridflow("bin", path, store, "--bins", 10), "column 'x'", "overflows", "--bounds")
    nothing_at(store)


# --- the cluster ----------------------------------------------------------------------------


def test_unreachable_scheduler_fails_after_the_connect_timeout(tmp_path, points):
    # 30 s by default (distributed.comm.timeouts.connect); shortened here.
    store = tmp_path / "g.zarr"
    r = gridflow(
        "--scheduler",
        "tcp://127.0.0.1:1",
        "bin",
        points,
        store,
        "--bins",
        10,
        env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"},
    )
    failed(r, "--scheduler: cannot reach the Dask scheduler at tcp://127.0.0.1:1 within 1 s")
    nothing_at(store)


@pytest.mark.parametrize("limit", ["lots", "0", "-4GB", "1.5"])
def test_memory_limit_is_checked_when_parsed(tmp_path, points, limit):
    r = invoke("--memory-limit", limit, "bin", points, tmp_path / "g.zarr", "--bins", 10)
    failed(r, "--memory-limit: expected a size like 4GB", repr(limit))


# --- options named as options --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["bin", "{points}", "{out}", "--bins", 0], ["--bins: expected positive integers"]),
        (["bin", "{points}", "{out}", "--bins", 10, "--chunks", 0], ["--chunks: expected"]),
        (["bin", "{points}", "{out}"], ["missing option '--bins'", "--help"]),
        (
            ["cluster", "{store}", "--window", 1, "--min-cells", 0],
            ["--min-cells: expected a positive integer"],
        ),
        (["cluster", "{store}", "--min-cells", 1.5], ["--min-cells: '1.5' is not a valid integer"]),
        (["cluster", "{store}", "--window", 1, "--level", 9], ["--level: expected 'auto' or"]),
        (["fractal", "{store}", "--burn-in", 300], ["--burn-in: expected at most iterations"]),
        (["--workers", 0, "bin", "{points}", "{out}", "--bins", 4], ["--workers: expected"]),
    ],
)
def test_messages_name_the_options(tmp_path, points, store, args, words):
    names = {"{points}": points, "{out}": tmp_path / "new.zarr", "{store}": store}
    r = invoke(*(names.get(a, a) for a in args))
    line = failed(r, *words)
    assert "min_cells" not in line and "burn_in" not in line
    nothing_at(tmp_path / "new.zarr")


# --- the pipeline file accepts what its stages accept ---------------------------------------


def _config(**changes):
    stages = {"stages.cluster": {"window": 1}, "stages.fractal": {"iterations": 10, "burn_in": 2}}
    return pipeline_config(bins=16, chunks=8, iterations=2, fuse=1, **stages, **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stages.cluster.min_cells": 0}, "stages.cluster.min_cells: expected a positive integer"),
        ({"stages.cluster.levels": 1}, "stages.cluster.levels: expected a number of levels"),
        (
            {"stages.cluster.level": 9},
            "stages.cluster.level: expected 'auto' or a level from 0 to 7",
        ),
        (
            {"stages.cluster.connectivity": 3},
            "stages.cluster.connectivity: expected an integer from",
        ),
        ({"stages.classify.tol": 1}, "stages.classify.tol: expected a fraction in [0, 1)"),
        (
            {"stages.classify.kernel": "gaussian", "stages.classify.sigma": 0},
            "stages.classify.sigma: expected a positive number",
        ),
        ({"stages.fractal.burn_in": 20}, "stages.fractal.burn_in: expected at most iterations"),
        ({"stages.synth.scale": 0}, "stages.synth.scale: expected a positive finite number"),
        ({"stages.bin.max_classes": 0}, "stages.bin.max_classes: expected an integer >= 1"),
        ({"stages.evaluate.baseline": "knn"}, "stages.evaluate.train: baseline='knn'"),
        ({"grid.bounds": [-1e308, 1e308]}, "grid.bounds: dim 0 spans"),
        ({"grid.bins": [8, 8, 8]}, "grid.bins: expected 1 or 2 values"),
        ({"scheduler.memory_limit": "lots"}, "scheduler.memory_limit: expected a size like 4GB"),
    ],
)
def test_pipeline_refuses_what_a_stage_would_refuse_before_any_work(tmp_path, changes, message):
    failed(run_in_empty_workdir(invoke, tmp_path, _config(**changes)), message)


def test_pipeline_accepts_what_the_stages_accept(tmp_path):
    config = _config(**{"stages.fractal.seed": -3, "stages.cluster.min_cells": 1})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    r = invoke("run", "--check", path, "--workdir", tmp_path)
    assert r.exit_code == 0, r.output


# --- library errors are gridflow's, and ValueErrors ------------------------------------------


def test_errors_name_their_parameter():
    for error in (GridTooLargeError, StorageError, InputDataError, ParameterError):
        assert issubclass(error, GridflowError) and issubclass(error, ValueError)
    assert ParameterError("min_cells: expected a positive integer").param == "min_cells"
    assert ParameterError("expected", param="bins").param == "bins"
    assert InputDataError("no prefix here").param is None


# --- the compiled-kernel cache ------------------------------------------------------------------

_KERNEL = """
from gridflow._kernels.binning import kernel
print(kernel(2, "dense"))
"""


def test_a_tampered_kernel_cache_file_is_rewritten_not_run(tmp_path):
    env = cli_env(GRIDFLOW_CACHE_DIR=str(tmp_path / "cache"))
    run = [gridflow_command()[0], "-c", _KERNEL]
    subprocess.run(run, env=env, check=True, capture_output=True)
    (cached,) = (tmp_path / "cache" / "kernels").glob("bin_2d_dense_*.py")
    good = cached.read_bytes()
    cached.write_bytes(good + b'\nraise SystemExit("tampered code ran")\n')
    r = subprocess.run(run, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "tampered code ran" not in r.stdout + r.stderr, r.stderr
    assert "does not match its digest" in r.stderr
    assert cached.read_bytes() == good
