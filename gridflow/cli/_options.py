"""Options that several commands share, each written once.

Choice sets come from :mod:`gridflow._types`, so a command accepts what the
library and a pipeline file accept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from gridflow._types import BOUNDARIES, KERNEL_NAMES, SEEDS

Decorator = Callable[[Callable[..., Any]], Any]


def choice(values: tuple[str, ...], **kwargs: Any) -> click.Choice:
    """A ``click.Choice`` of one of gridflow's choice sets."""
    return click.Choice(list(values), **kwargs)


def stack(*decorators: Decorator) -> Decorator:
    """One decorator applying ``decorators`` as if written one above the other."""

    def apply(fn: Callable[..., Any]) -> Any:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


#: The store a command reads and writes in place.
STORE = click.argument("store", type=click.Path())

#: Coordinate columns of points read against a store's grid.
COLUMNS = click.option(
    "--columns", default=None, help="Coordinate columns (default: the grid's dims)."
)

#: The label column of labeled points.
LABEL = click.option("--label", default="label", show_default=True, help="Label column.")

#: The edges of a classify, cluster or fractal step.
BOUNDARY = click.option(
    "--boundary",
    type=choice(BOUNDARIES),
    default=None,
    help="Edges of the grid: periodic wraps, open has nothing beyond. "
    "Default: the store's own (periodic when every dim wraps).",
)


def window_options(
    weights: str, *, kernel: str = "inverse_distance", window: int = 10
) -> Decorator:
    """The window of a filter: --kernel (``weights`` its help), --window, --sigma."""
    return stack(
        click.option(
            "--kernel",
            default=kernel,
            show_default=True,
            type=choice(KERNEL_NAMES),
            help=weights,
        ),
        click.option(
            "--window",
            type=int,
            default=window,
            show_default=True,
            help="Window radius w (10 means 21 cells wide).",
        ),
        click.option(
            "--sigma", type=float, default=None, help="Gaussian sigma (default: window / 2)."
        ),
    )


def filter_options(weights: str, steps: str) -> Decorator:
    """The window and the steps of an iterated filter (classify, cluster)."""
    return stack(
        window_options(weights),
        click.option("--iterations", default="3", show_default=True, help=f"{steps}, or 'auto'."),
    )


def seed_option(help: str) -> Decorator:
    """What the first step of an iterated filter starts from: labels or counts."""
    return click.option(
        "--seed", "seed_", type=choice(SEEDS), default="labels", show_default=True, help=help
    )


def resume_option(help: str = "Continue from the last complete round.") -> Decorator:
    return click.option("--resume", is_flag=True, help=help)


def overwrite_option(help: str) -> Decorator:
    return click.option("--overwrite", is_flag=True, help=help)


def points_option(help: str | None = None) -> Decorator:
    """How many points to generate (``n_points``)."""
    return click.option(
        "--points", "n_points", type=int, default=1_000_000, show_default=True, help=help
    )


def int_or_auto(name: str, value: str) -> int | str:
    """``"auto"``, or the integer of an option that takes either."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        from gridflow.errors import ParameterError

        raise ParameterError(f"{name}: expected an integer or 'auto', got {value!r}") from None
