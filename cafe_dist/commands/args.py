"""Argument types and helpers the command modules share."""

from __future__ import annotations

import argparse


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def key_value(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. sweep=grid), got {text!r}")
    return key, value


def csv_list(text: str, kind=str) -> list:
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None


def output_json(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    """``-o/--output PATH`` (``--output-json`` still works): where a command writes its JSON."""
    parser.add_argument("-o", "--output", "--output-json", dest="output_json", metavar="PATH",
                        help=f"write {what} as JSON to PATH")


def overrides(args: argparse.Namespace, flags: dict[str, object]) -> list[str]:
    """``--set`` assignments, then the dedicated flags that were given (config key → value)."""
    return list(args.set or []) + [f"{key}={value}" for key, value in flags.items() if value is not None]
