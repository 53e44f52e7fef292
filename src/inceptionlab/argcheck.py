"""Argument checks for the public library functions: a wrong type is an :class:`ArgumentTypeError` (a TypeError),
a value out of range a :class:`ConfigError` (a ValueError), each one sentence naming the argument and what it takes.

A function states its arguments once, ``check(batch_size=(batch_size, optional(whole(1))), ...)``, instead of
failing deep inside torch or pathlib. No torch here: the command line imports this module to build its parser.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from inceptionlab.errors import ArgumentTypeError, ConfigError


@dataclass(frozen=True)
class Rule:
    """What an argument takes: ``what`` in words, ``is_type`` (else a TypeError), ``in_range`` (else a ValueError)."""

    what: str
    is_type: Callable[[Any], bool]
    in_range: Callable[[Any], bool] | None = None

    def check(self, name: str, value: Any) -> None:
        if not self.is_type(value):
            raise ArgumentTypeError(f"{name} must be {self.what}, got {describe(value)}")
        if self.in_range is not None and not self.in_range(value):
            raise ConfigError(f"{name} must be {self.what}, got {value!r}")


def describe(value: Any) -> str:
    """The value as an error message shows it: its type and a short repr (``str '10'``, ``None``)."""
    if value is None:
        return "None"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check(**arguments: tuple[Any, Rule]) -> None:
    """``check(name=(value, rule), ...)``: the first argument that breaks its rule raises, in the order given."""
    for name, (value, rule) in arguments.items():
        rule.check(name, value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, not to a user


def whole(minimum: int = 1) -> Rule:
    return Rule(f"a whole number >= {minimum}", _is_int, lambda v: v >= minimum)


def number(minimum: float = 0.0, *, above: bool = True) -> Rule:
    """A finite real number above ``minimum`` (or at least it, with ``above=False``)."""
    bound = f"> {minimum:g}" if above else f">= {minimum:g}"
    return Rule(f"a finite number {bound}", lambda v: _is_int(v) or isinstance(v, float),
                lambda v: math.isfinite(v) and (v > minimum if above else v >= minimum))


def instance(kinds: type | tuple[type, ...], what: str) -> Rule:
    return Rule(what, lambda v: isinstance(v, kinds) and (bool in _tuple(kinds) or not isinstance(v, bool)))


def choice(values: tuple, what: str | None = None) -> Rule:
    """One of ``values``: another type is a TypeError, another value of their types a ValueError (``1`` is not
    ``True``)."""
    listed = what or "one of " + ", ".join(map(repr, values))
    return Rule(listed, lambda v: type(v) in {type(c) for c in values},
                lambda v: any(type(v) is type(c) and v == c for c in values))


def optional(rule: Rule) -> Rule:
    """``rule``, or None."""
    return Rule(f"{rule.what} or None", lambda v: v is None or rule.is_type(v),
                None if rule.in_range is None else (lambda v: v is None or rule.in_range(v)))


def sequence(rule: Rule, what: str) -> Rule:
    """A non-empty list or tuple whose every item follows ``rule`` (a string is not a sequence of names here)."""
    return Rule(what, lambda v: isinstance(v, (list, tuple)) and all(rule.is_type(x) for x in v),
                lambda v: len(v) > 0 and all(rule.in_range is None or rule.in_range(x) for x in v))


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


TEXT = instance(str, "a string")
WHOLE = Rule("a whole number", _is_int)  # the range is the caller's to check (e.g. an InputSizeError)
NAME = Rule("a registered model name (a string; see list_models())", lambda v: isinstance(v, str))
PATH = instance((str, os.PathLike), "a path (a string or an os.PathLike)")
FLAG = instance(bool, "a bool (True or False)")
FUNCTION = Rule("a function", callable)
MAPPING = instance(Mapping, "a mapping")
