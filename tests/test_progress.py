import logging

import numpy as np
import pytest
from click.testing import CliRunner

from gridflow import bin_points, open_grid
from gridflow.classify import classify
from gridflow.cli import main
from gridflow.fractal import fractal
from gridflow.progress import Progress, get_progress, set_progress


@pytest.fixture(autouse=True)
def _restore_settings():
    saved = get_progress()
    yield
    set_progress(saved["enabled"], interval=saved["interval"], delay=saved["delay"])


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "gridflow.progress"]


def test_log_lines_when_not_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="gridflow.progress")
    set_progress(None, interval=0, delay=0)  # pytest's stderr is not a terminal
    with Progress("fractal", total=4) as bar:
        assert bar.mode == "log"
        bar.update_to(1)
        bar.update_to(1)  # no progress, no line
        bar.update_to(3)
        bar.update_to(4)
    lines = _lines(caplog)
    assert lines[0].startswith("fractal: 1/4 iterations (25%), ")
    assert lines[1].startswith("fractal: 3/4 iterations (75%), ")
    assert lines[2].startswith("fractal: 4 iterations done in ")
    assert len(lines) == 3


def test_log_lines_are_spaced_by_the_interval_and_short_stages_are_quiet(caplog):
    caplog.set_level(logging.INFO, logger="gridflow.progress")
    set_progress(None, interval=3600, delay=0)
    with Progress("classify", total=10, unit="step") as bar:
        for k in range(1, 11):
            bar.update_to(k)
    assert _lines(caplog) == [_lines(caplog)[0]]  # only the final line
    assert _lines(caplog)[0].startswith("classify: 10 steps done in ")
    caplog.clear()
    set_progress(None, interval=0, delay=3600)
    with Progress("classify", total=10) as bar:
        bar.update_to(5)
    assert _lines(caplog) == []


def test_no_progress_and_failed_stages_say_nothing(caplog):
    caplog.set_level(logging.INFO, logger="gridflow.progress")
    set_progress(False, interval=0, delay=0)
    with Progress("fractal", total=2) as bar:
        assert bar.mode == "off"
        bar.update_to(2)
    set_progress(None)
    with pytest.raises(KeyError), Progress("fractal", total=2) as bar:
        raise KeyError
    assert _lines(caplog) == []


def test_forced_bar_draws_on_stderr(capsys):
    set_progress(True, delay=0)
    with Progress("fractal", total=5) as bar:
        assert bar.mode == "bar"
        bar.update_to(5)
    err = capsys.readouterr().err
    assert "fractal" in err and "5/5" in err
    # A stage that stops early ends its bar at what it ran.
    bar = Progress("classify", total=100, unit="step")
    bar.update_to(7)
    bar.finish(7)
    assert "7/7" in capsys.readouterr().err


def test_set_progress_checks_its_arguments():
    with pytest.raises(TypeError, match="enabled"):
        set_progress("yes")
    with pytest.raises(ValueError, match="interval"):
        set_progress(None, interval=-1)


def test_classify_and_fractal_report_each_round(tmp_path, rng, caplog):
    caplog.set_level(logging.INFO, logger="gridflow.progress")
    set_progress(None, interval=0, delay=0)
    pts = rng.random((2000, 2))
    store = tmp_path / "g.zarr"
    bin_points(pts, store, labels=(pts[:, 0] * 2).astype(int), bins=24, bounds=(0, 1), chunks=8)
    classify(store, window=1, iterations=6, fuse=2)
    lines = _lines(caplog)
    assert [line.split(" (")[0] for line in lines[:-1]] == [
        "classify: 2/6 steps",
        "classify: 4/6 steps",
    ]
    assert lines[-1].startswith("classify: 6 steps done in ")
    caplog.clear()
    fractal(store, iterations=9, burn_in=2, fuse=4)
    lines = _lines(caplog)
    assert [line.split(" (")[0] for line in lines[:-1]] == [
        "fractal: 4/9 iterations",
        "fractal: 8/9 iterations",
    ]
    assert lines[-1].startswith("fractal: 9 iterations done in ")
    assert "fractal" in open_grid(store)


def test_cli_progress_options(tmp_path, rng):
    pts = rng.random((500, 2))
    store = tmp_path / "g.zarr"
    bin_points(pts, store, labels=(pts[:, 1] * 3).astype(int), bins=16, bounds=(0, 1))
    set_progress(None, delay=0)
    r = CliRunner().invoke(
        main, ["--progress", "fractal", str(store), "--iterations", "8", "--burn-in", "2"]
    )
    assert r.exit_code == 0, r.output
    assert "8/8" in r.stderr
    assert get_progress()["enabled"] is True
    r = CliRunner().invoke(
        main, ["--no-progress", "fractal", str(store), "--iterations", "8", "--burn-in", "2"]
    )
    assert r.exit_code == 0, r.output
    assert "8/8" not in r.stderr and get_progress()["enabled"] is False
    np.testing.assert_array_equal(open_grid(store)["fractal"].shape, (16, 16))
