"""Errors users see. Every message is one line: the thing, what was expected, what was got."""

from __future__ import annotations


class DeployKitError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class BadInput(DeployKitError):
    """Bad usage or bad input (unknown model, wrong shape, corrupt file). Exit code 2."""

    exit_code = 2


class CheckFailed(DeployKitError):
    """A check ran and failed (graph rule, parity, accuracy budget). Exit code 1."""

    exit_code = 1


def expected_got(thing: str, expected: object, got: object) -> str:
    """Format the standard one-line message: ``<thing>: expected <expected>, got <got>``."""
    return f"{thing}: expected {expected}, got {got}"
