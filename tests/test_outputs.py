"""Outputs replace only what gridflow wrote, never an input; killed writes are cleaned.

docs/design.md §4.2, through real files and real ``gridflow`` processes.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from gridflow import bin_points, open_grid
from gridflow._staging import MARKER, check_output, staged_directory, written_by_gridflow
from gridflow.classify import classify
from gridflow.cli import main
from gridflow.errors import ParameterError, StoreError
from gridflow.synth import write_points
from tests._cli import cli_env, gridflow_command, small_pipeline, write_pipeline


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Training and test points, and a classified store, all written by gridflow."""
    d = tmp_path_factory.mktemp("made")
    write_points(d / "train.parquet", 3000, classes=3, seed=1)
    write_points(d / "test.parquet", 400, classes=3, seed=2)
    bin_points(d / "train.parquet", d / "g.zarr", bins=16)
    classify(d / "g.zarr", window=1, iterations=1)
    return d


def _gridflow(*args):
    """A real ``gridflow`` process; only warnings and errors on stderr."""
    command = gridflow_command("--log-level", "warning", *args)
    return subprocess.run(command, env=cli_env(), capture_output=True, text=True)


def _snapshot(path):
    """Every file under ``path`` (or ``path`` itself) with its bytes."""
    if os.path.isfile(path):
        return {".": Path(path).read_bytes()}
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = Path(root) / name
            files[str(full.relative_to(path))] = full.read_bytes()
    return files


def _user_folder(path):
    path.mkdir()
    (path / "notes.txt").write_text("three weeks of field notes\n")
    (path / "sub").mkdir()
    (path / "sub" / "raw.bin").write_bytes(bytes(range(256)))
    return path


def _refused(r, *needles):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _leftovers(folder):
    return sorted(n for n in os.listdir(folder) if ".tmp-" in n or ".old-" in n)


# --- a folder of user files is never replaced ---------------------------------------------


def _command(kind, made, target, tmp_path):
    if kind == "predict":
        return ["predict", made / "g.zarr", made / "test.parquet", "--out", target, "--overwrite"]
    if kind == "synth":
        return ["synth", target, "--points", 100, "--overwrite"]
    if kind == "bin":
        return ["bin", made / "train.parquet", target, "--bins", 8, "--overwrite"]
    config = small_pipeline(tmp_path / "p.yaml", bins=16, iterations=1)
    key = {"run-predictions": "outputs.predictions", "run-store": "outputs.store"}.get(
        kind, "inputs.train"
    )
    return ["run", config, "--workdir", tmp_path, "--set", f"{key}={target}", "--overwrite"]


@pytest.mark.parametrize(
    "kind", ["predict", "synth", "bin", "run-predictions", "run-store", "run-synth"]
)
def test_overwrite_refuses_a_folder_of_user_files(kind, made, tmp_path):
    folder = _user_folder(tmp_path / "my_folder")
    before = _snapshot(folder)
    r = _gridflow(*_command(kind, made, folder, tmp_path))
    _refused(r, f"refusing to replace {folder}: gridflow did not write it", "remove it yourself")
    assert _snapshot(folder) == before
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["my_folder"] + (["p.yaml"] if "run" in kind else [])
    )


def test_images_and_json_never_replace_user_files(made, tmp_path):
    png = tmp_path / "holiday.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png)  # a real PNG, not gridflow's
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}\n')
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "label.png").write_bytes(png.read_bytes())
    before = {p: _snapshot(p) for p in (png, notes, folder)}

    _refused(_gridflow("render", made / "g.zarr", "--out", png), f"out: refusing to replace {png}")
    _refused(
        _gridflow("render", made / "g.zarr", "--all", folder),
        f"all: refusing to replace {folder / 'label.png'}",
    )
    r = _gridflow("evaluate", made / "g.zarr", made / "test.parquet", "--json", notes)
    _refused(r, f"json: refusing to replace {notes}")
    assert r.stdout == ""  # refused before evaluating
    assert {p: _snapshot(p) for p in (png, notes, folder)} == before
    assert sorted(os.listdir(folder)) == ["label.png"]  # nothing drawn before the refusal


# --- an output never replaces an input ----------------------------------------------------


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            "predict {g} {test} --out {g} --overwrite",
            "out: {g} is an input of this command (the grid)",
        ),
        (
            "predict {g} {test} --out {test} --overwrite",
            "out: {test} is an input of this command (the points)",
        ),
        (
            "predict {g} {test} --out {made} --overwrite",
            "out: {made} contains an input of this command (the grid, {g})",
        ),
        (
            "predict {g} {test} --out {g}/p.parquet",
            "out: {g}/p.parquet is inside an input of this command (the grid, {g})",
        ),
        # Through a symlink too: real paths are compared.
        (
            "predict {g} {test} --out {link} --overwrite",
            "out: {link} is an input of this command (the grid)",
        ),
        (
            "bin {train} {train} --bins 8 --overwrite",
            "store: {train} is an input of this command (the points)",
        ),
        ("bin {g} {g} --bins 8 --overwrite", "store: {g} is an input of this command (the points)"),
        (
            "render {g} --all {g}",
            "all: {g}/label.png is inside an input of this command (the grid, {g})",
        ),
        (
            "evaluate {g} {test} --json {g}/e.json",
            "json: {g}/e.json is inside an input of this command (the grid, {g})",
        ),
    ],
)
def test_an_output_never_replaces_an_input(command, message, made, tmp_path):
    paths = {
        "g": made / "g.zarr",
        "test": made / "test.parquet",
        "train": made / "train.parquet",
        "made": made,
        "link": tmp_path / "link.zarr",
    }
    paths["link"].symlink_to(paths["g"])
    before = {p: _snapshot(p) for p in (paths["g"], paths["test"], paths["train"])}
    r = _gridflow(*command.format(**paths).split())
    _refused(r, message.format(**paths), "; write to another path")
    assert {p: _snapshot(p) for p in before} == before
    assert _leftovers(made) == []


def test_pipeline_output_equal_to_an_input_is_refused_before_any_work(made, tmp_path):
    train, test = made / "train.parquet", made / "test.parquet"
    config = write_pipeline(
        tmp_path / "p.yaml",
        f"""
inputs: {{train: {train}, test: {test}}}
grid: {{bins: 16}}
stages: {{bin: {{input: train}}, classify: {{window: 1, iterations: 1}}, predict: {{}}}}
outputs: {{store: out/grid.zarr, predictions: out/predictions.parquet}}
""",
    )
    before = {p: _snapshot(p) for p in (train, test)}
    args = ["run", config, "--workdir", tmp_path, "--overwrite", "--set"]
    r = _gridflow(*args, f"outputs.predictions={train}")
    _refused(r, f"outputs.predictions: {train} is an input of this command (inputs.train)")
    r = _gridflow(*args, f"outputs.predictions={test}")
    _refused(r, f"outputs.predictions: {test} is an input of this command (inputs.test)")
    r = _gridflow(*args, f"outputs.store={made}")
    _refused(r, f"outputs.store: {made} contains an input of this command (inputs.train, {train})")
    assert {p: _snapshot(p) for p in (train, test)} == before
    assert sorted(os.listdir(tmp_path)) == ["p.yaml"]  # nothing made, not even out/


def test_check_output_in_the_library(tmp_path):
    folder = _user_folder(tmp_path / "f")
    with pytest.raises(
        ParameterError, match=r"already exists; pass --overwrite \(overwrite=True\)"
    ):
        check_output(folder, overwrite=False)
    with pytest.raises(ParameterError, match=r"the directory .* does not exist; create it first"):
        check_output(tmp_path / "no" / "out", overwrite=False)
    check_output(tmp_path / "no" / "out", overwrite=False, parents=True)
    with pytest.raises(ParameterError, match=r"notes\.txt is a file, not a directory"):
        check_output(folder / "notes.txt" / "out", overwrite=False, parents=True)
    # Globs of inputs are expanded; non-path inputs (frames, datasets) ignored.
    with pytest.raises(ParameterError, match=r"contains an input of this command \(the points"):
        check_output(folder, overwrite=True, inputs={"the points": str(folder / "*.txt")})
    check_output(tmp_path / "new", overwrite=False, inputs={"the points": pd.DataFrame()})
    assert _snapshot(folder)["notes.txt"] == b"three weeks of field notes\n"


# --- gridflow's own outputs are replaced ------------------------------------------------


def test_overwrite_replaces_what_gridflow_wrote(made, tmp_path):
    def run(*args):
        r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r

    pts, store, pred = tmp_path / "pts", tmp_path / "g.zarr", tmp_path / "pred.parquet"
    for n in (300, 500):
        run("synth", pts, "--points", n, "--classes", 3, "--overwrite")
        assert len(pd.read_parquet(pts)) == n
    for bins in (8, 12):
        run("bin", pts, store, "--bins", bins, "--overwrite")
        assert open_grid(store)["counts"].shape == (3, bins, bins)
    for points in (made / "test.parquet", pts):
        run("predict", made / "g.zarr", points, "--out", pred, "--overwrite")
        assert len(pd.read_parquet(pred)) == len(pd.read_parquet(points))
    for _ in range(2):
        run("render", made / "g.zarr", "--out", tmp_path / "l.png")
        run("render", made / "g.zarr", "--all", tmp_path / "imgs")
        run("evaluate", made / "g.zarr", made / "test.parquet", "--json", tmp_path / "e.json")
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["gridflow_version"] and doc["n"] == 400
    with Image.open(tmp_path / "l.png") as im:
        assert im.text["Software"].startswith("gridflow ")
    assert all(written_by_gridflow(p) for p in (pts, store, pred, tmp_path / "l.png"))
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "imgs") == []


def test_outputs_of_earlier_releases_are_recognised(tmp_path):
    pts = tmp_path / "pts"
    write_points(pts, 100, seed=1)
    (pts / MARKER).unlink()  # as written before the marker: the synth metadata still says gridflow
    assert written_by_gridflow(pts)
    write_points(pts, 200, seed=2, overwrite=True)
    assert len(pd.read_parquet(pts)) == 200
    plain = tmp_path / "plain.parquet"
    pd.DataFrame({"x0": [0.5], "x1": [0.5], "label": [1]}).to_parquet(plain)
    assert not written_by_gridflow(plain)
    with pytest.raises(ParameterError, match="gridflow did not write it"):
        write_points(plain, 10, overwrite=True)


def _box(kind, body):
    return struct.pack(">I4s", 8 + len(body), kind) + body


@pytest.mark.parametrize(
    ("name", "content", "ours"),
    [
        ("a.json", b'{"gridflow_version": "1"}', True),
        ("a.json", b'{"version": "1"}', False),
        ("a.json", b"[1, 2]", False),
        ("a.json", b"not json", False),
        ("a.mp4", _box(b"ftyp", b"isom") + _box(b"moov", _box(b"\xa9cmt", b"gridflow 1")), True),
        ("a.mp4", _box(b"ftyp", b"isom") + _box(b"moov", _box(b"\xa9cmt", b"mine")), False),
        ("a.mp4", b"\x00\x00\x00\x00moov", False),
        ("a.png", b"\x89PNG not really", False),
        ("a.txt", b"gridflow 1", False),
    ],
)
def test_written_by_gridflow_files(name, content, ours, tmp_path):
    (tmp_path / name).write_bytes(content)
    assert written_by_gridflow(tmp_path / name) is ours


def test_animation_records_gridflow(tmp_path):
    frames = [np.full((4, 6, 3), v, np.uint8) for v in (0, 90, 180)]
    from gridflow.render import _save_gif

    _save_gif(frames, str(tmp_path / "a.gif"), 5.0)
    assert written_by_gridflow(tmp_path / "a.gif")
    Image.fromarray(frames[0]).save(tmp_path / "b.gif")
    assert not written_by_gridflow(tmp_path / "b.gif")


# --- temporary siblings of killed writes ------------------------------------------------

KILLED_WRITE = textwrap.dedent(
    """
    import contextlib, os, signal, sys
    import {module} as mod

    real = mod.staged_directory

    @contextlib.contextmanager
    def killed(target, **kwargs):
        with real(target, **kwargs) as path:
            yield path  # the output is complete here, not yet renamed into place
            {finish}

    mod.staged_directory = killed
    {write}
    """
)


def _child(module, write, finish="os.kill(os.getpid(), signal.SIGKILL)", **popen):
    code = KILLED_WRITE.format(module=module, write=write, finish=finish)
    return subprocess.Popen([sys.executable, "-c", code], env=cli_env(), text=True, **popen)


@pytest.mark.parametrize("what", ["synth", "bin"])
def test_a_killed_write_is_removed_by_the_next_write(what, made, tmp_path):
    target = tmp_path / ("pts" if what == "synth" else "g.zarr")
    if what == "synth":
        module, write = "gridflow.synth.io", f"mod.write_points({str(target)!r}, 500, seed=3)"
        again = ["synth", target, "--points", 200, "--overwrite"]
    else:
        module = "gridflow.store"
        write = f"import gridflow; gridflow.bin_points({str(made / 'train.parquet')!r}, {str(target)!r}, bins=8)"
        again = ["bin", made / "train.parquet", target, "--bins", 8, "--overwrite"]
    child = _child(module, write)
    assert child.wait() == -signal.SIGKILL
    assert not target.exists()  # never renamed into place
    (leftover,) = _leftovers(tmp_path)
    marker = json.loads((tmp_path / leftover / MARKER).read_text())
    assert marker["writer"] == "gridflow" and marker["pid"] == child.pid
    with pytest.raises(StoreError):
        open_grid(tmp_path / leftover)
    r = _gridflow(*again)
    assert r.returncode == 0, r.stderr
    assert _leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == [target.name]
    if what == "bin":
        assert open_grid(target)["counts"].shape == (3, 8, 8)
    else:
        assert len(pd.read_parquet(target)) == 200


def test_a_killed_replacement_leaves_the_old_output(tmp_path):
    target = tmp_path / "pts"
    write_points(target, 100, seed=1)
    before = _snapshot(target)
    child = _child("gridflow.synth.io", f"mod.write_points({str(target)!r}, 500, overwrite=True)")
    assert child.wait() == -signal.SIGKILL
    assert _snapshot(target) == before and len(_leftovers(tmp_path)) == 1
    write_points(target, 300, seed=2, overwrite=True)
    assert _leftovers(tmp_path) == [] and len(pd.read_parquet(target)) == 300


def test_a_live_writers_staging_is_kept(tmp_path):
    target = tmp_path / "pts"
    # A writer that has staged its output and waits (for us) before renaming it.
    child = _child(
        "gridflow.synth.io",
        f"mod.write_points({str(target)!r}, 500, seed=3, overwrite=True)",
        finish="print('staged', flush=True); sys.stdin.readline()",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout.readline() == "staged\n"
        (staging,) = _leftovers(tmp_path)
        write_points(target, 100, seed=1, overwrite=True)  # another write to the same target
        assert _leftovers(tmp_path) == [staging]
        assert len(pd.read_parquet(target)) == 100
    finally:
        child.communicate("go\n")
    assert child.returncode == 0
    assert _leftovers(tmp_path) == [] and len(pd.read_parquet(target)) == 500


def _dead_pid():
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


@pytest.mark.parametrize(
    ("name", "marker", "removed"),
    [
        (".pts.tmp-0123456789ab", "dead", True),
        (".pts.old-0123456789ab", "dead", True),
        (".pts.tmp-0123456789ab", None, False),  # not known to be gridflow's
        (".pts.tmp-0123456789ab", "other host", False),  # its pid cannot be checked here
        (".pts.tmp-0123456789ab", "live", False),
        (".pts.tmp-keep", "dead", False),  # not a staging name
        (".other.tmp-0123456789ab", "dead", False),  # another target's
    ],
)
def test_which_leftovers_are_removed(name, marker, removed, tmp_path):
    import socket

    leftover = tmp_path / name
    leftover.mkdir()
    (leftover / "part.0.parquet").write_bytes(b"half")
    if marker is not None:
        pid = os.getpid() if marker == "live" else _dead_pid()
        host = "elsewhere.invalid" if marker == "other host" else socket.gethostname()
        doc = {"writer": "gridflow", "version": "0", "pid": pid, "host": host, "time": "x"}
        (leftover / MARKER).write_text(json.dumps(doc))
    with staged_directory(tmp_path / "pts") as staging:
        (staging / "part.0.parquet").write_bytes(b"whole")
    assert leftover.exists() is not removed
    assert (tmp_path / "pts" / "part.0.parquet").read_bytes() == b"whole"


def test_demo_twice_into_the_same_folder(tmp_path):
    for _ in range(2):
        r = _gridflow("demo", "--out", tmp_path / "demo", "--points", 20000, "--bins", 24)
        assert r.returncode == 0, r.stderr
    assert _leftovers(tmp_path / "demo") == []
    assert open_grid(tmp_path / "demo" / "grid.zarr")["counts"].shape == (5, 24, 24)
