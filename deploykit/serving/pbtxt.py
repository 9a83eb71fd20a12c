"""Protobuf text format for Triton's ``config.pbtxt``, written from plain Python values.

No protobuf import: a model repository can be written on a machine without
tritonclient. The tests parse every written file into Triton's ``ModelConfig``
(``tritonclient.grpc.model_config_pb2``) with ``google.protobuf.text_format``.

Values map as follows: ``dict`` → a message ``key { ... }``; a list of dicts →
repeated messages ``key [ {...}, {...} ]``; a list of scalars → ``key: [a, b]``;
:class:`Enum` → a bare enum name; ``str`` → a quoted, escaped string; ``bool``
→ ``true``/``false``; ``int``/``float`` → the number. Protobuf maps
(``parameters``, warmup ``inputs``) are repeated ``{key, value}`` messages.
"""

from __future__ import annotations

from typing import Any


class Enum(str):
    """An enum value, written bare (``TYPE_FP32``, ``KIND_GPU``)."""


def quote(text: str) -> str:
    """A protobuf text-format string literal: ASCII only, C escapes, other bytes as octal."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"pbtxt: cannot write {type(value).__name__} {value!r}")


def _message(fields: dict[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{")
            lines += _message(value, indent + 1)
            lines.append(f"{pad}}}")
        elif isinstance(value, (list, tuple)):
            if not value:
                continue
            if all(isinstance(v, dict) for v in value):
                lines.append(f"{pad}{key} [")
                for i, item in enumerate(value):
                    lines.append(f"{pad}  {{")
                    lines += _message(item, indent + 2)
                    lines.append(f"{pad}  }}" + ("," if i < len(value) - 1 else ""))
                lines.append(f"{pad}]")
            else:
                lines.append(f"{pad}{key}: [ " + ", ".join(_scalar(v) for v in value) + " ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def dumps(config: dict[str, Any]) -> str:
    """The text of a ``config.pbtxt`` for ``config`` (fields in the dict's order; None and [] left out)."""
    return "\n".join(_message(config, 0)) + "\n"
