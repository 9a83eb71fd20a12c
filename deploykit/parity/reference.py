"""The PyTorch reference of an artifact, rebuilt from its manifest (shared by parity and eval)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import BadInput, expected_got


def reference_spec(manifest: dict[str, Any], artifact: str | os.PathLike) -> tuple[str, str | None, dict[str, Any]]:
    """``(model name, checkpoint, overrides)`` recorded in ``manifest``, checked against the registry.

    Raises :class:`BadInput` when the manifest names no registered model, has
    another kind than the model's family, or malformed overrides.
    """
    from .. import models

    kind = manifest.get("kind")
    info = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    name = info.get("name")
    if not name:
        raise BadInput(expected_got(f"manifest of {artifact} model.name", "a registered model name "
                                    "(see deploykit models)", repr(name)))
    entry = models.entry(name)
    if kind not in ("detector", "generator"):
        raise BadInput(expected_got(f"manifest of {artifact} kind", "'detector' or 'generator'", repr(kind)))
    if entry.family != kind:
        raise BadInput(expected_got(f"artifact {artifact}", f"a {entry.family} (model {name})", f"kind {kind!r}"))
    overrides = info.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise BadInput(expected_got(f"manifest of {artifact} model.overrides", "a mapping", type(overrides).__name__))
    return name, info.get("checkpoint"), overrides


def build_reference(manifest: dict[str, Any], artifact: str | os.PathLike):
    """The unmodified PyTorch model (eval mode) the artifact was exported from."""
    from .. import models

    name, checkpoint, overrides = reference_spec(manifest, artifact)
    return models.build(name, checkpoint, **overrides)
