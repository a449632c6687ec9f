"""One line for everything that goes wrong (docs/design.md §5).

Bad input ends a command with one ``error:`` line on stderr and exit code
2: gridflow's own errors, click's usage errors, a filesystem that refuses
a write, a damaged store or point file. gridflow's warnings are one
``warning:`` line each, and SIGTERM ends the command at once, leaving the
store's last complete round for ``--resume``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
from collections.abc import Callable
from typing import Any

import click

from gridflow.errors import GridflowError, InputDataError, StoreError, storage_error

EXIT_USAGE = 2

# Parameters of a command that name what it writes, then what it reads, in
# the order a filesystem error is blamed on them.
_OUTPUTS = ("out", "all_dir", "out_dir", "json_out", "animation", "store")
_STORES = ("store",)
_POINTS = ("input_", "points", "test_points", "train")
_DECODE = re.compile(r"decompress|decod|codec|corrupt|checksum|crc|invalid input", re.I)


def fail(message: str) -> None:
    """Print ``error: message`` (one line) on stderr and exit with code 2."""
    line = " ".join(str(message).split())  # one line, whatever the message holds
    click.echo(f"error: {line}", err=True)
    sys.exit(EXIT_USAGE)


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn bad input into one ``error:`` line and exit code 2.

    gridflow's own errors (raised here or in a Dask task) name their
    parameter as the command's option (``--min-cells``, not ``min_cells``);
    a filesystem that refuses a write (read-only, full, over quota, no
    permission), a damaged chunk of a store and an unreadable input file
    are named with the command's paths. Anything else is a bug and keeps
    its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            message = _message(exc, kwargs)
            if message is None:
                raise
            fail(message)

    return wrapper


def _message(exc: BaseException, kwargs: dict[str, Any]) -> str | None:
    """The one line for ``exc`` raised by a command called with ``kwargs``, or None."""
    from gridflow.errors import causes

    for e in causes(exc):
        if isinstance(e, GridflowError):
            return _render(e)
    path = next((kwargs[k] for k in _OUTPUTS if kwargs.get(k)), None)
    disk = storage_error(exc, path)
    if disk is not None:
        return str(disk)
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return f"{exc.strerror}: {exc.filename}; check the path"
    reason = _first_line(exc)
    store = next((kwargs[k] for k in _STORES if kwargs.get(k)), None)
    # A command given a store reads no other JSON (a pipeline is YAML).
    if _from_zarr(exc) or (isinstance(exc, json.JSONDecodeError) and store is not None):
        what = "its metadata" if isinstance(exc, json.JSONDecodeError) else "a chunk"
        where = store or "the store"
        return (
            f"store: cannot read {where}: {what} is damaged ({reason}); restore the store from "
            "a copy or recreate it with `gridflow bin`"
        )
    points = next((kwargs[k] for k in _POINTS if kwargs.get(k)), None)
    if points is not None and _from_reader(exc):
        return (
            f"points: cannot read {points} ({reason}); the file is damaged or not in the "
            "format its name says: write it again"
        )
    return None


def _render(exc: GridflowError) -> str:
    """``exc``'s message, its parameter named as the command's option."""
    message = str(exc)
    param = exc.param
    if param is None or isinstance(exc, (InputDataError, StoreError)):
        return message  # "points: ...", "store: ...": about an argument, not an option
    flag = _flag(param)
    if flag is None or not message.startswith(f"{param}:"):
        return message
    return flag + message[len(param) :]


def _flag(param: str) -> str | None:
    """The long option (``--min-cells``) of the running command or the group for ``param``."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        for p in ctx.command.params:
            if not isinstance(p, click.Option):
                continue
            longs = [o for o in p.opts if o.startswith("--")]
            names = {p.name, *(o[2:].replace("-", "_") for o in longs)}
            if longs and param in names:
                return longs[0]
        ctx = ctx.parent
    return None


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    text = "".join(ch for ch in lines[0] if ch.isprintable()) if lines else ""
    return text.strip().rstrip(".:").strip() or type(exc).__name__


def _frames(exc: BaseException) -> list[str]:
    tb, files = exc.__traceback__, []
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return files


def _in_zarr(exc: BaseException) -> bool:
    return any(("/zarr/" in f or "/numcodecs/" in f) for f in _frames(exc))


def _from_zarr(exc: BaseException) -> bool:
    """A chunk that does not decode (raised by the codec, here or in a worker)."""
    if not isinstance(exc, (RuntimeError, ValueError, OSError, EOFError)):
        return False
    if "/numcodecs/" in "".join(_frames(exc)):
        return True
    return bool(_DECODE.search(str(exc))) and (_in_zarr(exc) or not exc.__traceback__)


def _from_reader(exc: BaseException) -> bool:
    """A point file that pyarrow or pandas cannot read."""
    try:
        import pyarrow as pa

        if isinstance(exc, pa.ArrowException):
            return True
    except ImportError:  # pragma: no cover
        pass
    import pandas as pd

    if isinstance(exc, (pd.errors.ParserError, UnicodeDecodeError)):
        return True
    return isinstance(exc, OSError) and exc.errno is None


class _UsageError(click.ClickException):
    """A click usage error, shown as one ``error:`` line like gridflow's own."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def one_line(exc: click.UsageError) -> click.ClickException:
    """Click's usage error ``exc`` as one ``error:`` line naming the option and ``--help``."""
    message = exc.format_message().strip().rstrip(".")
    param = getattr(exc, "param", None)
    if isinstance(exc, click.MissingParameter):
        message = message[:1].lower() + message[1:]
    elif isinstance(exc, click.BadParameter) and param is not None and exc.param_hint is None:
        longs = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
        name = longs[0] if longs else param.human_readable_name
        message = f"{name}: {exc.message.rstrip('.')}"
    else:
        message = message[:1].lower() + message[1:]
    command = exc.ctx.command_path if exc.ctx is not None else "gridflow"
    return _UsageError(f"{message}; see `{command} --help`")


class OneLineGroup(click.Group):
    """The ``gridflow`` group: click's own usage errors are one line too (docs/design.md §5)."""

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise one_line(exc) from None


def one_line_warnings() -> None:
    """gridflow's warnings as ``warning: ...`` lines, like its errors (others as Python shows them)."""
    import warnings

    from gridflow.errors import GridflowWarning

    shown = warnings.showwarning

    def show(message: Any, category: Any, filename: Any, lineno: Any, *args: Any) -> None:
        if issubclass(category, GridflowWarning):
            click.echo(f"warning: {' '.join(str(message).split())}", err=True)
        else:
            shown(message, category, filename, lineno, *args)

    warnings.showwarning = show


def exit_on_sigterm() -> None:
    """SIGTERM (a batch job's preemption or walltime) ends the command at once,
    the store's lock given back and its staging folder removed; the stage's
    last complete round stays for --resume. (Raising from the handler could
    land in a garbage-collector callback, which swallows it.)"""
    import os
    import signal

    def stop(signum: int, frame: Any) -> None:
        from gridflow.store import abandon_writes

        abandon_writes()
        click.echo(
            "error: stopped by SIGTERM; rerun the same command with --resume to continue "
            "from the last complete round",
            err=True,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread (e.g. embedded)
        signal.signal(signal.SIGTERM, stop)
