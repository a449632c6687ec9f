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


def test_killing_a_worker_mid_classification_changes_nothing(tmp_path, rng):
    pts = rng.random((20000, 2))
    labels = (pts[:, 0] * 4).astype(int) % 4
    noise = rng.random(20000) < 0.2
    labels[noise] = rng.integers(0, 4, noise.sum())
    store = tmp_path / "g.zarr"
    bin_points(pts, store, labels=labels, bins=64, bounds=(0, 1), periodic=True, chunks=32)
    reference = classify(open_grid(store), window=2, iterations=10, fuse=1)

    with client(workers=4, threads=1) as c:
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
    r = CliRunner().invoke(main, ["run", str(config), "--workdir", str(ref_dir)])
    assert r.exit_code == 0, r.output

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

    again = subprocess.run(
        gridflow_command("run", config, "--workdir", work, "--resume"),
        env=cli_env(),
        capture_output=True,
        text=True,
    )
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
