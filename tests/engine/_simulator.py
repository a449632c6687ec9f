"""Kernel checks under numba's CUDA simulator, for the CUDA kernels' tests.

numba reads ``NUMBA_ENABLE_CUDASIM`` when it is first imported, and the test
session has imported it already: the checks run in subprocesses, a few at
once (each is seconds of simulated threads and imports), every check of a
group in one process, which prints ``ok NAME`` after each that passed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def start(module: str, names: list[str], groups: int = 2) -> dict[str, subprocess.Popen]:
    """Start the checks ``names`` of ``module`` in ``groups`` simulator processes."""
    procs: dict[str, subprocess.Popen] = {}
    for g in range(groups):
        part = names[g::groups]
        if not part:
            continue
        code = (
            f"import {module} as c\n"
            f"for name in {part!r}:\n"
            "    getattr(c, name)()\n"
            "    print('ok', name, flush=True)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.update(dict.fromkeys(part, proc))
    return procs


def result(procs: dict[str, subprocess.Popen], name: str) -> tuple[bool, str]:
    """Whether check ``name`` passed, and its group's output (stderr on failure)."""
    proc = procs[name]
    if not hasattr(proc, "outputs"):
        proc.outputs = proc.communicate(timeout=600)
    out, err = proc.outputs
    return f"ok {name}\n" in out, f"{out}\n{err}"


def stop(procs: dict[str, subprocess.Popen]) -> None:
    for proc in set(procs.values()):
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def fixture(module: str, names: list[str]) -> object:
    """A module-scoped fixture: the checks ``names`` of ``module`` started under the
    simulator (see :func:`start`), ``{name: process}``; killed at the module's end."""

    @pytest.fixture(scope="module")
    def simulated():
        procs = start(module, names)
        yield procs
        stop(procs)

    return simulated
