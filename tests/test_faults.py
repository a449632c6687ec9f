"""Faults batch jobs meet: a worker dies, the whole job is killed.

Neither changes a bit of the result, and a resumed run recomputes no round
that was checkpointed before the kill (counted from the stage's rounds log).
"""

import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
from click.testing import CliRunner

from gridflow import bin_points, open_grid
from gridflow.classify import classify
from gridflow.cli import main
from gridflow.runtime import client
from tests._cli import cli_env, gridflow_command, small_pipeline
from tests._stores import assert_same_store


def _marker(store):
    try:
        with open(os.path.join(store, "_gridflow_checkpoint", "classify", "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _wait_for(predicate, timeout=120.0, interval=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def _ended(job):
    """A background process's end, as ``subprocess.run`` reports it."""
    out, err = job.communicate()
    return subprocess.CompletedProcess(job.args, job.returncode, out, err)


def test_killing_a_worker_mid_classification_changes_nothing(tmp_path, rng):
    pts = rng.random((20000, 2))
    labels = (pts[:, 0] * 4).astype(int) % 4
    noise = rng.random(20000) < 0.2
    labels[noise] = rng.integers(0, 4, noise.sum())
    store = tmp_path / "g.zarr"
    bin_points(pts, store, labels=labels, bins=64, bounds=(0, 1), periodic=True, chunks=32)
    reference = classify(open_grid(store), window=2, iterations=10, fuse=1)

    # Two single-threaded workers: one is killed while the other carries on.
    with client(workers=2, threads=1) as c:
        before = c.run(os.getpid)
        result: dict = {}
        run = threading.Thread(
            target=lambda: result.update(ds=classify(str(store), window=2, iterations=10, fuse=1))
        )
        run.start()
        # Mid-run: some rounds are checkpointed and a worker is computing.
        _wait_for(lambda: (_marker(store) or {}).get("step", 0) >= 2)
        busy = _wait_for(lambda: [w for w, tasks in c.processing().items() if tasks])
        os.kill(before[busy[0]], signal.SIGKILL)
        killed_at = _marker(store)["step"]
        run.join(timeout=300)
        assert not run.is_alive()
        after = c.run(os.getpid)
    assert killed_at < 9  # the kill happened before the last round
    assert before[busy[0]] not in after.values()  # that worker process is gone
    out = result["ds"]
    for name in ("label", "density", "confidence"):
        np.testing.assert_array_equal(out[name].values, reference[name].values)
    stage = out.attrs["gridflow_stages"]["classify"]
    assert stage["history"] == reference.attrs["gridflow_stages"]["classify"]["history"]
    # No round was computed twice: one attempt, each step once.
    steps = [s for r in stage["rounds"] for s in range(r["first"], r["last"] + 1)]
    assert steps == list(range(1, 11))


def test_sigkilled_run_resumes_bit_identical_without_recomputing_rounds(tmp_path):
    config = small_pipeline(tmp_path / "pipeline.yaml", bins=48, chunks=24, iterations=12, fuse=1)
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()

    work = tmp_path / "killed"
    work.mkdir()
    store = work / "out" / "grid.zarr"
    job = subprocess.Popen(
        gridflow_command("run", config, "--workdir", work),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: (_marker(store) or {}).get("step", 0) >= 3 or job.poll() is not None)
        os.killpg(job.pid, signal.SIGKILL)  # the whole job, as a scheduler's scancel -s KILL
    finally:
        job.wait()
    assert job.returncode == -signal.SIGKILL, job.stderr.read().decode()
    done = _marker(store)["step"]
    assert 3 <= done < 12
    assert "classify" not in open_grid(store).attrs["gridflow_stages"]

    # The resumed job runs while this process makes the reference: the same
    # pipeline run once, uninterrupted, in its own workdir.
    resumed = subprocess.Popen(
        gridflow_command("run", config, "--workdir", work, "--resume"),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        r = CliRunner().invoke(main, ["run", str(config), "--workdir", str(ref_dir)])
    finally:
        again = _ended(resumed)
    assert r.exit_code == 0, r.output
    assert again.returncode == 0, again.stderr
    assert "synth: done in an earlier run" in again.stdout
    assert "bin: done in an earlier run" in again.stdout
    assert_same_store(ref_dir / "out" / "grid.zarr", store, ignore_rounds=True)
    for name in ("predictions.parquet", "evaluation.json"):
        assert (work / "out" / name).exists()

    rounds = open_grid(store).attrs["gridflow_stages"]["classify"]["rounds"]
    first_run = [r for r in rounds if r["run"] == 1]
    second_run = [r for r in rounds if r["run"] == 2]
    assert first_run and first_run[-1]["last"] == done
    assert second_run[0]["first"] == done + 1  # nothing checkpointed was recomputed
    steps = [s for r in rounds for s in range(r["first"], r["last"] + 1)]
    assert steps == list(range(1, 13))  # every step computed exactly once


# --- one writer per store, whole stages, full and read-only disks (docs/design.md §4.2) -----------

import contextlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from gridflow import store as store_mod  # noqa: E402

# A gridflow process that SIGKILLs itself right before the stage writer's
# (N+1)-th move into or out of the store (N = $KILL_AT), or right before its
# final metadata write (KILL_AT=root): a kill at an exact point of the swap.
_KILLER = """
import os, signal, sys
from gridflow import store
at = os.environ["KILL_AT"]
moves = [0]
rename, write_root = os.rename, store._write_root
def killing_rename(a, b):
    if store.STAGING in str(a) + str(b):
        if at != "root" and moves[0] == int(at):
            os.kill(os.getpid(), signal.SIGKILL)
        moves[0] += 1
    rename(a, b)
def killing_write_root(path, attrs):
    if at == "root" and any(s in attrs.get("gridflow_stages", {}) for s in os.environ["STAGE"].split()):
        os.kill(os.getpid(), signal.SIGKILL)
    write_root(path, attrs)
os.rename = killing_rename
store._write_root = killing_write_root
from gridflow.cli import main
sys.argv = ["gridflow", *sys.argv[1:]]
main()
"""

# A gridflow process whose classify run, once it has checkpointed its first
# round (mid-run, the writer lock held), waits until the file $RELEASE exists.
_HOLDER = """
import os, sys, time
from gridflow import checkpoint
save = checkpoint.RoundCheckpoint.save
def holding_save(self, *args, **kwargs):
    result = save(self, *args, **kwargs)
    end = time.monotonic() + 300
    while not os.path.exists(os.environ["RELEASE"]) and time.monotonic() < end:
        time.sleep(0.02)
    return result
checkpoint.RoundCheckpoint.save = holding_save
from gridflow.cli import main
sys.argv = ["gridflow", *sys.argv[1:]]
main()
"""


def _gridflow(*args, check=True, **kwargs):
    r = subprocess.run(
        gridflow_command("--no-progress", *args), env=cli_env(), capture_output=True, text=True
    )
    if check:
        assert r.returncode == 0, r.stderr
    return r


def _one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def points_file(tmp_path_factory):
    """The points every test here bins (read only): written once for the module."""
    from gridflow.synth import write_points

    path = tmp_path_factory.mktemp("points") / "p.parquet"
    write_points(path, 60000, classes=4, seed=4)
    return path


def _start(store, args, command=None, **env):
    """``gridflow args[0] store args[1:]`` started in the background (``command``:
    another way to start the gridflow command line, e.g. a script that wraps it)."""
    return subprocess.Popen(
        [*(command or gridflow_command()), "--no-progress", args[0], str(store), *args[1:]],
        env=cli_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _classify_in_background(points_file, tmp_path, *, bins, window, iterations, **start):
    """A store binned from ``points_file``, the classify command's arguments, a
    copy of the store with the command started on it alone (the reference), and
    the same command started on the store (``start``: :func:`_start`'s options)."""
    store = tmp_path / "g.zarr"
    bin_points(points_file, store, bins=bins, chunks=48)
    args = ["classify", "--window", str(window), "--iterations", str(iterations)]
    lone = tmp_path / "lone.zarr"
    shutil.copytree(store, lone)
    return store, args, (lone, _start(lone, args)), _start(store, args, **start)


def test_two_concurrent_classify_runs_the_second_is_refused(points_file, tmp_path):
    # The first run holds mid-run (after its first checkpointed round, the lock
    # taken) until the second has been refused: 64 bins in chunks of 48 and 16
    # step 2 steps of window 6 per round, so 6 iterations make 3 rounds.
    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)
    release = tmp_path / "release"
    store, args, (lone, alone), first = _classify_in_background(
        points_file,
        tmp_path,
        bins=64,
        window=6,
        iterations=6,
        command=[sys.executable, str(script)],
        RELEASE=str(release),
    )
    try:
        _wait_for(lambda: _marker(store) or first.poll() is not None)
        assert first.poll() is None, first.communicate()
        assert os.path.isdir(store / store_mod.LOCK)
        second = _gridflow(args[0], store, *args[1:], check=False)
    finally:
        release.touch()
        done, reference = _ended(first), _ended(alone)
    assert reference.returncode == 0, reference.stderr
    assert done.returncode == 0, done.stderr
    _one_line_error(second, f"{store} is being written by pid {first.pid} on host", "rm -r")
    assert_same_store(lone, store)
    assert not (store / store_mod.LOCK).exists()


def _cli_args(kwargs):
    """``{"min_cells": 3, "fill": True}`` -> ``["--min-cells", "3", "--fill"]``."""
    args = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


# Each stage: a first run, a second run with other parameters (the one that
# is killed), and the variables the stage writes.
_STAGE_RUNS = {
    "classify": (
        {"window": 1, "iterations": 1},
        {"window": 3, "iterations": 2, "probabilities": True},
        ("label", "confidence", "density", "probability"),
    ),
    "cluster": (
        {"window": 1, "iterations": 1, "min_cells": 3},
        {"window": 2, "iterations": 2, "min_cells": 3},
        ("level", "cluster", "node_level"),
    ),
    "fractal": (
        {"iterations": 4, "burn_in": 1},
        {"iterations": 6, "burn_in": 2, "record": 3},
        ("fractal", "fractal_frames"),
    ),
}


@pytest.mark.parametrize("stage", list(_STAGE_RUNS))
def test_sigkill_during_the_final_write_never_leaves_a_stage_that_reads_complete(
    stage, points_file, tmp_path
):
    from gridflow.cluster import cluster
    from gridflow.fractal import fractal
    from gridflow.synth import write_points

    run = {"classify": classify, "cluster": cluster, "fractal": fractal}[stage]
    first, second, variables = _STAGE_RUNS[stage]
    base = tmp_path / "base.zarr"
    bin_points(points_file, base, bins=40, chunks=20)
    if stage != "classify":
        classify(base, window=1, iterations=1)
    old = run(base, **first)
    old_values = {v: old[v].values for v in variables if v in old}
    new_store = tmp_path / "new.zarr"
    shutil.copytree(base, new_store)
    new = run(new_store, **second)
    rerun = [stage, *_cli_args(second)]
    resume = [*rerun, "--resume"]

    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    # Before the first move, amid the moves (each stage makes at least 4), before the marker:
    # one copy of the store per point, each killed by its own process (all started at once).
    points = ["0", "2", "root"]
    killed = {}
    try:
        for at in points:
            store = tmp_path / f"killed-{at}.zarr"
            shutil.copytree(base, store)
            command = [sys.executable, str(script)]
            killed[at] = store, _start(store, rerun, command, KILL_AT=at, STAGE=stage)
    finally:
        killed = {at: (store, _ended(job)) for at, (store, job) in killed.items()}
    for at in points:
        store, r = killed[at]
        assert r.returncode == -signal.SIGKILL, r.stderr
        ds = open_grid(store)
        assert stage not in ds.attrs["gridflow_stages"]  # never complete when it is not
        assert store_mod.incomplete_stages(ds) == [stage]
        assert not set(variables) & set(ds.variables)  # nothing of the stage is readable
        assert f"{stage} (incomplete" in store_mod.summary(ds)
        if at != "2":
            continue
        info = CliRunner().invoke(main, ["info", str(store)])
        assert info.exit_code == 0, info.output
        assert f"{stage} (incomplete" in info.stdout
        if stage == "classify":
            # predict refuses the store as the kill left it (a copy: the rerun
            # below finishes the store meanwhile).
            as_killed = tmp_path / "as-killed.zarr"
            shutil.copytree(store, as_killed)
        # The stale lock of the killed writer is taken over; the rerun finishes it.
        rerunning = _start(store, resume)
        try:
            if stage == "classify":
                test = tmp_path / "test.parquet"
                write_points(test, 500, classes=4, seed=5)
                refused = _gridflow(
                    "predict", as_killed, test, "--out", tmp_path / "o.parquet", check=False
                )
                _one_line_error(refused, "classify stage", "incomplete", "--resume")
                assert not (tmp_path / "o.parquet").exists()
        finally:
            again = _ended(rerunning)
        assert again.returncode == 0, again.stderr
        assert "took over the writer lock" in again.stderr
        done = open_grid(store)
        for v in variables:
            np.testing.assert_array_equal(done[v].values, new[v].values)
    # And a kill before the swap (while computing) leaves the previous stage as it was.
    for v, values in old_values.items():
        np.testing.assert_array_equal(open_grid(base)[v].values, values)


@contextlib.contextmanager
def _tmpfs(path, size):
    """A real tmpfs of ``size`` bytes at ``path`` (CI runs as root)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _du(path):
    return sum(
        os.stat(os.path.join(d, f)).st_blocks * 512 for d, _, fs in os.walk(path) for f in fs
    )


def test_a_full_disk_is_one_line_and_leaves_the_previous_state_readable(points_file, tmp_path):
    base = tmp_path / "base.zarr"
    bin_points(points_file, base, bins=160, chunks=40)
    classify(base, window=1, iterations=1)
    before = open_grid(base)
    with _tmpfs(tmp_path / "small", _du(base) + 96 * 1024) as disk:
        store = disk / "g.zarr"
        shutil.copytree(base, store)
        r = _gridflow(
            "classify", store, "--window", "2", "--iterations", "1", "--probabilities", check=False
        )
        _one_line_error(r, "no space left", str(store))
        ds = open_grid(store)
        assert ds.attrs["gridflow_stages"]["classify"]["window"] == [1, 1]
        np.testing.assert_array_equal(ds["label"].values, before["label"].values)
        assert not (store / store_mod.STAGING).exists() and not (store / store_mod.LOCK).exists()
        assert "probability" not in ds


@pytest.mark.parametrize(
    "command",
    [
        ["classify", "--window", "1", "--iterations", "1"],
        ["cluster", "--window", "1", "--iterations", "1", "--min-cells", "3"],
        ["fractal", "--iterations", "4", "--burn-in", "1"],
    ],
)
def test_a_read_only_store_is_one_line_and_unchanged(command, points_file, tmp_path):
    base = tmp_path / "base.zarr"
    bin_points(points_file, base, bins=32, chunks=16)
    with _tmpfs(tmp_path / "ro", 8 * 2**20) as disk:
        store = disk / "g.zarr"
        shutil.copytree(base, store)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        r = _gridflow(command[0], store, *command[1:], check=False)
        _one_line_error(r, "read-only filesystem", str(store))
        assert_same_store(base, store)


def test_sigterm_releases_the_lock_and_resume_finishes_the_run(points_file, tmp_path):
    store, args, (lone, alone), job = _classify_in_background(
        points_file, tmp_path, bins=96, window=2, iterations=30
    )
    try:
        _wait_for(lambda: (_marker(store) or {}).get("step", 0) >= 2 or job.poll() is not None)
        job.send_signal(signal.SIGTERM)  # as SLURM does before preempting a job
    finally:
        _, err = job.communicate()
        reference = _ended(alone)
    assert reference.returncode == 0, reference.stderr
    assert job.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert not (store / store_mod.LOCK).exists()  # released: the requeued job need not wait
    assert not (store / store_mod.STAGING).exists()
    assert "classify" not in open_grid(store).attrs["gridflow_stages"]
    again = _gridflow(args[0], store, *args[1:], "--resume")
    assert "took over" not in again.stderr
    assert_same_store(lone, store, ignore_rounds=True)
