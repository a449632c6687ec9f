"""All-or-nothing outputs that replace only what gridflow wrote (docs/design.md §4.2).

Every writer first checks its target with :func:`check_output`: never one
of the command's inputs, and an existing target only with ``overwrite`` and
only when :func:`written_by_gridflow`. It then writes inside
:func:`staged_directory` (or :func:`staged_file`): into
``.NAME.tmp-<12 hex>/NAME`` beside the target, renamed into place when
complete. The staging folder holds :data:`MARKER` (writer, version, pid,
host, time) from its first moment, so the next write to the same target
recognises and removes what a killed writer left.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import json
import logging
import os
import re
import shutil
import socket
import struct
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gridflow.errors import GridflowError, ParameterError

log = logging.getLogger(__name__)

#: The file marking a folder as gridflow's output or staging folder. Readers
#: of Parquet datasets (pyarrow, dask) skip names starting with '.'.
MARKER = ".gridflow-output.json"
#: Names of the temporary siblings a staged write makes (``.grid.zarr.tmp-0123456789ab``);
#: group 1 is the target's name.
TEMPORARY = re.compile(r"^\.(.+)\.(?:tmp|old)-[0-9a-f]{12}$")
#: The top-level key marking a JSON file as gridflow's.
JSON_KEY = "gridflow_version"


def _version() -> str:
    from gridflow import __version__

    return __version__


def signature() -> str:
    """``gridflow <version>``: the writer recorded in gridflow's images."""
    return f"gridflow {_version()}"


# --- checking a target ------------------------------------------------------------------


def check_output(
    target: str | os.PathLike[str],
    *,
    overwrite: bool,
    inputs: Mapping[str, Any] | None = None,
    option: str = "out",
    hint: str = "pass --overwrite (overwrite=True)",
    parents: bool = False,
) -> None:
    """Refuse, before any work, an output path whose writing would lose data.

    Parameters
    ----------
    target : path
        The file or folder the command will write.
    overwrite : bool
        Whether an existing ``target`` may be replaced; even then only one
        that :func:`written_by_gridflow` (nothing else is ever deleted).
    inputs : mapping of str to path, optional
        What the command reads, by description (``{"the grid": path}``).
        ``target`` may not be one of them, contain one or lie inside one
        (real paths compared, globs expanded), whatever ``overwrite`` says.
        Values that are not paths (DataFrames, Datasets) are skipped.
    option : str, default "out"
        The option named in messages.
    hint : str
        How to allow replacing, for the message about an existing ``target``.
    parents : bool, default False
        The caller creates missing parent folders; otherwise the parent must
        exist.

    Raises
    ------
    ParameterError
        Naming the path and what to do.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> check_output(folder + "/new.parquet", overwrite=False)
    >>> check_output(folder, overwrite=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    gridflow.errors.ParameterError: out: refusing to replace ...: gridflow did not write it; ...
    """
    path = os.path.abspath(os.fspath(target))
    real = os.path.realpath(path)
    for what, source in (inputs or {}).items():
        for src in _input_paths(source):
            if real == src:
                problem = f"is an input of this command ({what})"
            elif _inside(src, real):
                problem = f"contains an input of this command ({what}, {src})"
            elif _inside(real, src):
                problem = f"is inside an input of this command ({what}, {src})"
            else:
                continue
            raise ParameterError(f"{option}: {path} {problem}; write to another path")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        if not parents:
            raise ParameterError(
                f"{option}: the directory {parent} does not exist; create it first"
            )
        while not os.path.lexists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ParameterError(f"{option}: {parent} is a file, not a directory; fix the path")
        return
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise ParameterError(f"{option}: {path} already exists; {hint} to replace it")
    if not written_by_gridflow(path):
        raise ParameterError(
            f"{option}: refusing to replace {path}: gridflow did not write it; "
            "choose another path or remove it yourself"
        )


def _input_paths(source: Any) -> list[str]:
    if not isinstance(source, (str, os.PathLike)):
        return []
    path = os.fspath(source)
    found = glob.glob(path) if any(ch in path for ch in "*?[") else []
    return [os.path.realpath(p) for p in found or [path]]


def _inside(path: str, folder: str) -> bool:
    return path != folder and os.path.commonpath([path, folder]) == folder


# --- recognising gridflow's outputs -----------------------------------------------------


def written_by_gridflow(path: str | os.PathLike[str]) -> bool:
    """True when gridflow wrote ``path``, so that ``overwrite`` may replace it.

    Gridflow's are: a folder holding :data:`MARKER` (Parquet outputs, staging
    folders), a gridflow store (``gridflow_format`` in its root attributes),
    a Parquet dataset or file of :func:`gridflow.synth.write_points` (also
    from releases before the marker), and the files whose metadata names
    gridflow: PNG (``Software`` text chunk), GIF (comment), MP4 (comment)
    and JSON (top-level :data:`JSON_KEY`).

    Examples
    --------
    >>> import tempfile
    >>> written_by_gridflow(tempfile.mkdtemp())
    False
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        from gridflow.store import is_gridflow_store

        return _marker(path) is not None or is_gridflow_store(path) or _synth_points(path)
    check = _FILE_CHECKS.get(os.path.splitext(path)[1].lower())
    try:
        return check is not None and check(path)
    except Exception:  # a file that cannot be read is not known to be gridflow's
        return False


def _marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        with open(os.path.join(folder, MARKER)) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("writer") == "gridflow" else None


def _synth_points(path: str) -> bool:
    from gridflow.synth import read_synth_metadata

    try:
        return read_synth_metadata(path) is not None
    except GridflowError:
        return False


def _png(path: str) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        return im.format == "PNG" and str(im.text.get("Software", "")).startswith("gridflow ")


def _gif(path: str) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        return im.format == "GIF" and im.info.get("comment", b"").startswith(b"gridflow ")


def _mp4(path: str) -> bool:
    """Whether the ``moov`` box (where ffmpeg puts ``-metadata comment=``) names gridflow."""
    with open(path, "rb") as f:
        while len(head := f.read(8)) == 8:
            size, kind = struct.unpack(">I4s", head)
            header = 8
            if size == 1:
                size, header = struct.unpack(">Q", f.read(8))[0], 16
            if kind == b"moov":
                return b"gridflow " in f.read(size - header if size else -1)
            if size < header:  # 0 (the last box, to the end) or corrupt
                return False
            f.seek(size - header, os.SEEK_CUR)
    return False


def _json(path: str) -> bool:
    with open(path) as f:
        doc = json.load(f)
    return isinstance(doc, dict) and JSON_KEY in doc


_FILE_CHECKS = {
    ".png": _png,
    ".gif": _gif,
    ".mp4": _mp4,
    ".json": _json,
    ".parquet": _synth_points,
    ".pq": _synth_points,
}


# --- writing ----------------------------------------------------------------------------


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike[str], *, marker: bool = True) -> Iterator[Path]:
    """Yield the path to write ``target``'s new content at, renamed into place on success.

    The path is ``.NAME.tmp-<12 hex>/NAME`` beside ``target``; its staging
    folder holds :data:`MARKER` from the start. With ``marker`` the path is
    created as a folder holding the marker too, so the output is
    recognisably gridflow's; pass False for a Zarr store (Zarr takes every
    file of a group for a member; the store is recognised by its
    attributes) or a single file. Leftovers of killed writes to the same
    target (marked ``.NAME.tmp-*`` / ``.NAME.old-*`` folders of a dead pid on
    this host) are removed first, never a live writer's.

    When the block succeeds the new content takes ``target``'s place in one
    rename (an existing ``target`` is moved into the staging folder and
    deleted with it); when it fails ``target`` is left as it was. Readers
    never see a half-written ``target``. Check ``target`` with
    :func:`check_output` first.
    """
    target = Path(os.path.abspath(os.fspath(target)))
    _remove_stale(target)
    staging = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:12]}")
    staging.mkdir()
    try:
        _write_marker(staging)
        new = staging / target.name
        if marker:
            new.mkdir()
            _write_marker(new)
        yield new
        if os.path.lexists(target):
            aside = staging / f"{target.name}.old"
            os.rename(target, aside)
            try:
                os.rename(new, target)
            except BaseException:
                os.rename(aside, target)
                raise
        else:
            os.rename(new, target)
    except BaseException:
        remove_when_idle(staging)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_when_idle(folder: str | os.PathLike[str]) -> None:
    """Remove what a failed write left in ``folder``, once nothing writes there.

    A computation that failed on one task returns while its other tasks
    still run, and a chunk they write recreates a folder removed meanwhile:
    wait for the active cluster's tasks, then remove it (again, should a
    local scheduler's thread still have written into it).
    """
    import time

    from gridflow.runtime import wait_for_running_tasks

    wait_for_running_tasks()
    for _ in range(3):
        shutil.rmtree(folder, ignore_errors=True)
        time.sleep(0.1)
        if not os.path.lexists(folder):
            return


def staged_file(target: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """:func:`staged_directory` for one file: yields the path to write the file at
    (same name, so same extension)."""
    return staged_directory(target, marker=False)


def write_json(target: str | os.PathLike[str], doc: Mapping[str, Any]) -> None:
    """Write ``doc`` as indented JSON at ``target``, whole or not at all, with
    :data:`JSON_KEY` first so that gridflow may replace it later."""
    with staged_file(target) as tmp, open(tmp, "w") as f:
        json.dump({JSON_KEY: _version(), **doc}, f, indent=2, allow_nan=False)
        f.write("\n")


def _write_marker(folder: Path) -> None:
    doc = {
        "writer": "gridflow",
        "version": _version(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "time": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (folder / MARKER).write_text(json.dumps(doc) + "\n")


def _remove_stale(target: Path) -> None:
    """Remove the marked staging folders of ``target`` whose writer no longer runs."""
    leftover = re.compile(rf"\.{re.escape(target.name)}\.(?:tmp|old)-[0-9a-f]{{12}}")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    host = socket.gethostname()
    for name in filter(leftover.fullmatch, names):
        path = target.parent / name
        doc = None if path.is_symlink() or not path.is_dir() else _marker(path)
        if doc is not None and doc.get("host") == host and not _alive(doc.get("pid")):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by a killed write (pid %s)", path, doc["pid"])


def _alive(pid: Any) -> bool:
    """Whether ``pid`` runs on this host (an unusable pid counts as running)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process
        return True
    return True
