"""A small schema language for pipeline files, and the stages' own rules.

A :class:`Check` says what kind of YAML value a key takes (``Int(min=1)``,
``Choice(*SEEDS)``, a :class:`Section` of known keys); what a stage accepts
beyond that is the stage's own ``parse_*`` functions, run as :class:`Rule`
entries, never restated here. Every error is a :class:`ConfigError` naming
its key (``stages.classify.window: expected ...``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gridflow.errors import ParameterError


class ConfigError(ParameterError):
    """A pipeline file has an unknown key, a wrong type or a missing input."""


# --- checks -------------------------------------------------------------------------


class Check:
    """Validates one value; ``describe`` says what is expected."""

    describe = "a value"

    def __call__(self, value: Any, key: str) -> Any:
        raise NotImplementedError

    def fail(self, value: Any, key: str) -> ConfigError:
        return ConfigError(f"{key}: expected {self.describe}, got {value!r}")


class _Bounded(Check):
    """A number of ``types`` (never a bool) in ``[min, max]``."""

    types: tuple[type, ...] = ()

    def __init__(self, min: float | None = None, max: float | None = None) -> None:
        self.min, self.max = min, max

    def __call__(self, value: Any, key: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, self.types):
            raise self.fail(value, key)
        if (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        ):
            raise self.fail(value, key)
        return value


class Int(_Bounded):
    types = (int,)

    def __init__(self, min: int | None = None, max: int | None = None) -> None:
        super().__init__(min, max)
        bounds = [f"{op} {v}" for op, v in ((">=", min), ("<=", max)) if v is not None]
        self.describe = "an integer" + (" " + " and ".join(bounds) if bounds else "")


class Float(_Bounded):
    types = (int, float)

    def __init__(self, min: float | None = None, max: float | None = None) -> None:
        super().__init__(min, max)
        self.describe = "a number" + (f" in [{min}, {max}]" if min is not None else "")

    def __call__(self, value: Any, key: str) -> float:
        return float(super().__call__(value, key))


class Bool(Check):
    describe = "true or false"

    def __call__(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(value, key)
        return value


class Str(Check):
    describe = "a string"

    def __call__(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(value, key)
        return value


class Choice(Check):
    """One of ``values``: a choice set of :mod:`gridflow._types` (``Choice(*SEEDS)``)."""

    def __init__(self, *values: Any) -> None:
        self.values = values
        self.describe = "one of " + ", ".join(repr(v) for v in values)

    def __call__(self, value: Any, key: str) -> Any:
        if isinstance(value, bool) or value not in self.values:
            raise self.fail(value, key)
        return value


class Either(Check):
    def __init__(self, *checks: Check) -> None:
        self.checks = checks
        self.describe = " or ".join(c.describe for c in checks)

    def __call__(self, value: Any, key: str) -> Any:
        for c in self.checks:
            try:
                return c(value, key)
            except ConfigError:
                pass
        raise self.fail(value, key)


class Null(Check):
    describe = "null"

    def __call__(self, value: Any, key: str) -> None:
        if value is not None:
            raise self.fail(value, key)
        return None


class _Many(Check):
    """A non-empty ``kind`` (list or mapping) of values that ``item`` checks."""

    kind: type = object

    def __init__(self, item: Check) -> None:
        self.item = item
        self.describe = self.noun(item.describe.removeprefix("a "))

    def __call__(self, value: Any, key: str) -> Any:
        if not isinstance(value, self.kind) or not value:
            raise self.fail(value, key)
        return self.entries(value, key)

    def noun(self, item: str) -> str:
        raise NotImplementedError

    def entries(self, value: Any, key: str) -> Any:
        raise NotImplementedError


class ListOf(_Many):
    kind = list

    def noun(self, item: str) -> str:
        return f"a list of {item.removeprefix('an ')}s"

    def entries(self, value: list, key: str) -> list:
        return [self.item(v, f"{key}[{i}]") for i, v in enumerate(value)]


class MapOf(_Many):
    """A mapping from names (strings) to values of one kind."""

    kind = Mapping

    def noun(self, item: str) -> str:
        return f"a mapping of names to {item}"

    def entries(self, value: Mapping, key: str) -> dict:
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{key}: expected names (strings) as keys, got {k!r}")
            out[k] = self.item(v, f"{key}.{k}")
        return out


class Section(Check):
    """A mapping with known keys: unknown keys and missing required ones are errors.

    ``after(values, key)``, when given, runs on the checked mapping: the
    library's own rules for it (see :class:`Rule`).
    """

    def __init__(
        self,
        fields: Mapping[str, Check],
        required: Sequence[str] = (),
        after: Callable[[dict, str], None] | None = None,
    ) -> None:
        self.fields = dict(fields)
        self.required = tuple(required)
        self.after = after
        self.describe = "a mapping"

    def __call__(self, value: Any, key: str) -> dict:
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self.fail(value, key)
        out = {}
        for k, v in value.items():
            where = f"{key}.{k}" if key else str(k)
            if k not in self.fields:
                raise ConfigError(
                    f"{where}: unknown key; expected one of {', '.join(sorted(self.fields))}"
                )
            out[k] = self.fields[k](v, where)
        for k in self.required:
            if k not in out:
                where = f"{key}.{k}" if key else k
                raise ConfigError(f"{where}: missing; it is required")
        if self.after is not None:
            self.after(out, key)
        return out


POSITIVE = Int(min=1)
PATH = Str()
INTS = Either(POSITIVE, ListOf(POSITIVE))
NAMES = Either(Str(), ListOf(Str()))


# --- the stages' own rules ---------------------------------------------------------------

#: Library parameter names that a pipeline spells differently.
_ALIASES = {"npartitions": "partitions", "n_points": "points"}


@contextlib.contextmanager
def reported_at(key: str, params: Sequence[str] = ()) -> Iterator[None]:
    """A library ParameterError (``"min_cells: ..."``) as a ConfigError at its key.

    The parameter it names, a pipeline key of section ``key``, or else the
    first of ``params`` (``stages.cluster.min_cells: ...``).
    """
    try:
        yield
    except ConfigError:
        raise
    except ParameterError as exc:
        text, name = str(exc), exc.param
        if name is not None and text.startswith(f"{name}:"):
            text = text[len(name) + 1 :].lstrip()
            name = _ALIASES.get(name, name)
            if params and name not in params:
                name = params[0]
            where = f"{key}.{name}" if key else name
        else:
            where = key or "pipeline"
        raise ConfigError(f"{where}: {text}") from None


@dataclass(frozen=True)
class Rule:
    """One of a stage's own checks, run before any stage: ``parse(**params)``.

    ``parse`` is the ``parse_*`` function the stage calls (or ``"module:name"``,
    imported when a file is checked), so a file accepts exactly what the
    stage does, with the stage's message. The rule runs when the file gives
    any of ``params``; the others take the stage function's defaults (or
    ``parse``'s own, where the function has none).
    """

    parse: str | Callable[..., Any]
    params: tuple[str, ...]

    def check(self, values: dict, defaults: Mapping[str, Any], key: str) -> None:
        if not any(p in values for p in self.params):
            return
        known = {**defaults, **values}
        args = {p: known[p] for p in self.params if p in known}
        with reported_at(key, self.params):
            resolve(self.parse)(**args)


def rule(parse: str | Callable[..., Any], *params: str) -> Rule:
    """``rule("gridflow.classify:parse_tol", "tol")``: see :class:`Rule`."""
    return Rule(parse, params)


def defaults_of(function: str | Callable[..., Any] | None) -> dict[str, Any]:
    """The keyword defaults of a stage's library function (``"module:name"`` or a callable)."""
    if function is None:
        return {}
    parameters = inspect.signature(resolve(function)).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def resolve(function: str | Callable[..., Any]) -> Callable[..., Any]:
    """``function``, or the function ``"module:name"`` names (imported now)."""
    if callable(function):
        return function
    import importlib

    module, _, attr = function.partition(":")
    return getattr(importlib.import_module(module), attr)
