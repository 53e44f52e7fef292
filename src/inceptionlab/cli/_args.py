"""argparse value types shared by the commands: a bad value is a usage error (exit code 2)."""

from __future__ import annotations

import argparse
import json
import sys


def _number(text: str, cast, ok, expected: str):
    """``cast(text)`` if ``ok`` holds for it, else argparse's usage error naming what was expected."""
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a positive whole number")


def nonnegative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "a whole number >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < float("inf"), "a positive finite number")


def duration(text: str) -> float:
    """Seconds of ``300``, ``90s``, ``5m``, ``1h30m`` (inceptionlab.config.parse_duration), at least the shortest
    budget that leaves time to train."""
    from inceptionlab.config import MIN_BUDGET_S, parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds < MIN_BUDGET_S:
        raise argparse.ArgumentTypeError(f"expected at least {MIN_BUDGET_S:g} seconds, got {text!r}")
    return seconds


def model_name(text: str) -> str:
    """Validated at parse time so an unknown model is a usage error listing the choices."""
    from inceptionlab.models import list_models

    if text not in list_models():
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose from: {', '.join(list_models())}")
    return text


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")
