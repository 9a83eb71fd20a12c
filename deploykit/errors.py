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


#: Control characters (a newline in a file or field name, say) are shown as ``\xNN``: a message stays one line.
_PRINTABLE = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in (*range(0x20), 0x7F, 0x85, 0x2028, 0x2029)}


def printable(text: str) -> str:
    """``text`` with control characters as ``\\xNN`` (a name from a hostile file keeps a message one line)."""
    return text.translate(_PRINTABLE)


def expected_got(thing: str, expected: object, got: object) -> str:
    """Format the standard one-line message: ``<thing>: expected <expected>, got <got>``."""
    return f"{thing}: expected {expected}, got {got}".translate(_PRINTABLE)
