"""Helpers shared by the benchmark scripts: the machine line and Markdown tables."""

from __future__ import annotations

import importlib
import os
import platform
from typing import Any


def machine(*packages: str) -> str:
    """CPU, cores, memory, Python and the versions of ``packages`` (import names)."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    names = {"sklearn": "scikit-learn"}
    versions = ", ".join(
        f"{names.get(p, p)} {importlib.import_module(p).__version__}" for p in packages
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB; "
        f"Python {platform.python_version()}, {versions}"
    )


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def emit(text: str, output: str | None) -> int:
    """Print the tables and, with ``output``, also write them to that file."""
    print(text)
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")
    return 0
