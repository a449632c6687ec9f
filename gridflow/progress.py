"""Progress of long stages: a bar on a terminal, log lines in batch logs.

A stage that runs in rounds (classify, fractal) reports how many of its
iterations are done after each round. How that shows is set once per
process with :func:`set_progress` (the CLI's ``--progress/--no-progress``):

- ``None`` (the default): a tqdm bar when the bar's stream (stderr) is a
  terminal; otherwise plain INFO lines on the ``gridflow.progress`` logger
  at most every ``interval`` seconds, plus one when the stage ends, which
  read well in batch logs (SLURM/PBS output files);
- ``True``: always the bar;
- ``False``: nothing.

Stages shorter than ``delay`` seconds show nothing (no bar flashing by for
each of the many short runs of a parameter search).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "get_progress", "set_progress"]

log = logging.getLogger(__name__)

_settings: dict[str, Any] = {"enabled": None, "interval": 10.0, "delay": 1.0}


def set_progress(
    enabled: bool | None = None, *, interval: float | None = None, delay: float | None = None
) -> None:
    """Choose how stages show progress (see the module docstring).

    Parameters
    ----------
    enabled : bool or None
        True: bars; False: nothing; None: bars on a terminal, else log lines.
    interval : float, optional
        Seconds between two log lines (default 10; unchanged when None).
    delay : float, optional
        Seconds a stage runs before it shows anything (default 1).

    Examples
    --------
    >>> set_progress(False)  # quiet
    >>> set_progress(None, interval=10.0, delay=1.0)  # back to the defaults
    """
    if enabled not in (True, False, None):
        raise TypeError(f"enabled: expected True, False or None, got {enabled!r}")
    for name, value in (("interval", interval), ("delay", delay)):
        if value is not None and not value >= 0:
            raise ValueError(f"{name}: expected seconds >= 0, got {value!r}")
    _settings["enabled"] = enabled
    if interval is not None:
        _settings["interval"] = float(interval)
    if delay is not None:
        _settings["delay"] = float(delay)


def get_progress() -> dict[str, Any]:
    """The current settings: ``{"enabled", "interval", "delay"}``."""
    return dict(_settings)


def _mode() -> str:
    enabled = _settings["enabled"]
    if enabled is False:
        return "off"
    if enabled is True:
        return "bar"
    isatty = getattr(sys.stderr, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


class Progress:
    """Progress of one stage, ``total`` iterations (None if unknown).

    Use as a context manager; :meth:`update_to` after each round, or wrap a
    round callback with :meth:`rounds`.

    Examples
    --------
    >>> with Progress("fractal", total=250) as bar:
    ...     for done in (50, 100, 250):
    ...         bar.update_to(done)
    """

    def __init__(self, stage: str, total: int | None, unit: str = "iteration") -> None:
        self.stage = stage
        self.total = total
        self.unit = unit
        self.done = 0
        self.mode = _mode()
        self._start = time.monotonic()
        self._last_line = self._start
        self._lines = 0
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                desc=stage,
                unit=f" {unit}s",
                file=sys.stderr,
                delay=_settings["delay"],
            )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(failed=exc[0] is not None)

    def update_to(self, done: int) -> None:
        """Record that ``done`` iterations are complete."""
        if done <= self.done:
            return
        step, self.done = done - self.done, done
        if self._bar is not None:
            self._bar.update(step)
        elif self.mode == "log":
            now = time.monotonic()
            due = now - self._last_line >= _settings["interval"]
            if due and now - self._start >= _settings["delay"] and done != self.total:
                self._last_line = now
                self._lines += 1
                log.info("%s", self._line(now))

    def rounds(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap ``fn(state, ...)``: after each call, ``state.step`` iterations are done."""

        def wrapped(state: Any, *args: Any, **kwargs: Any) -> Any:
            result = fn(state, *args, **kwargs)
            self.update_to(state.step)
            return result

        return wrapped

    def finish(self, done: int | None = None) -> None:
        """Record the last iterations done (default: all) and close.

        A stage that stops early (``iterations="auto"``) ends its bar at the
        iterations it ran.
        """
        done = self.total if done is None else done
        if done is not None:
            self.update_to(done)
            if self._bar is not None and self.total is not None and done < self.total:
                self._bar.total = done
                self._bar.refresh()
        self.close()

    def close(self, failed: bool = False) -> None:
        """End the bar, or log the final line (not when the stage failed)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log" and not failed:
            self.mode = "closed"
            elapsed = time.monotonic() - self._start
            if self._lines or elapsed >= _settings["delay"]:
                log.info("%s: %d %ss done in %.1f s", self.stage, self.done, self.unit, elapsed)

    def _line(self, now: float) -> str:
        elapsed = now - self._start
        if not self.total:
            return f"{self.stage}: {self.done} {self.unit}s, {elapsed:.1f} s elapsed"
        left = elapsed * (self.total - self.done) / max(self.done, 1)
        return (
            f"{self.stage}: {self.done}/{self.total} {self.unit}s "
            f"({self.done / self.total:.0%}), {elapsed:.1f} s elapsed, about {left:.0f} s left"
        )
