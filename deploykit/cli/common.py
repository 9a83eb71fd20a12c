"""What every command shares: the command registry, one-line errors and exit codes, option parsers."""

from __future__ import annotations

import functools
import sys
from typing import Callable

import click

from ..errors import BadInput, DeployKitError, expected_got

#: Commands by name, in registration order; :mod:`deploykit.cli` adds them to the ``deploykit`` group.
COMMANDS: dict[str, click.Command] = {}


def command(name: str, **settings) -> Callable:
    """Register the decorated function as the command ``name`` (once: a second registration raises).

    Its deploykit errors become one-line messages with their exit code (:func:`fail_cleanly`).
    """
    def register(fn: Callable) -> click.Command:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} registered twice ({COMMANDS[name].callback.__module__} and "
                             f"{fn.__module__})")
        cmd = click.command(name, **settings)(fail_cleanly(fn))
        COMMANDS[name] = cmd
        return cmd

    return register


def fail_cleanly(fn):
    """Turn deploykit errors into one-line messages with the right exit code (no tracebacks)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DeployKitError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def parse_size(value: str | None, what: str = "--input-size") -> tuple[int, int] | None:
    if value is None:
        return None
    text = value.lower().replace("×", "x")
    parts = text.split("x") if "x" in text else [text, text]
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise BadInput(expected_got(what, "HxW (e.g. 800x800) or a single size S", repr(value))) from None
    return h, w


def parse_range(value: str | None) -> tuple[tuple[int, int], tuple[int, int]] | None:
    if value is None:
        return None
    parts = value.split(":")
    if len(parts) != 2:
        raise BadInput(expected_got("--image-size-range", "MINHxMINW:MAXHxMAXW (e.g. 32x32:4096x4096)", repr(value)))
    return parse_size(parts[0], "--image-size-range"), parse_size(parts[1], "--image-size-range")


def parse_overrides(items: tuple[str, ...]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise BadInput(expected_got("--set", "KEY=VALUE", repr(item)))
        k, v = item.split("=", 1)
        for conv in (int, float):
            try:
                v = conv(v)
                break
            except ValueError:
                continue
        else:
            v = {"true": True, "false": False}.get(v.lower(), v)
        out[k.strip()] = v
    return out


class Progress:
    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            click.echo(f"  … {msg}", err=True)


def finish_check(console, what: str, report: dict, json_out) -> None:
    """Print the verdict, write the JSON report if asked, exit 0 on PASS and 1 on FAIL."""
    from ..fileio import write_json_atomic

    console.print(f"{what}: {'PASS' if report['ok'] else 'FAIL'}", markup=False)
    if json_out:
        write_json_atomic(json_out, report)
        click.echo(f"wrote {json_out}")
    sys.exit(0 if report["ok"] else 1)


def fmt(x: float) -> str:
    return "inf" if x == float("inf") else f"{x:.3g}"


def parse_threshold(value: str) -> float | None:
    """``--mask-threshold``: a number in [0, 1), or ``none`` for probabilities."""
    if value.strip().lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise BadInput(expected_got("--mask-threshold", "a number in [0, 1) or 'none'", repr(value))) from None
