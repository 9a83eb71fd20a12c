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


def reference_description(manifest: dict[str, Any], model) -> str:
    """Which PyTorch model a detector artifact is compared with, in one line.

    A dynamic-size export is compared with the model exactly as built (its own transform);
    a fixed-canvas export with the model configured to that canvas (min_size = max_size).
    """
    if manifest.get("kind") != "detector":
        return f"{(manifest.get('model') or {}).get('name')} (FP32 PyTorch)"
    t = model.transform
    min_size = t.min_size[-1] if isinstance(t.min_size, (tuple, list)) else t.min_size
    pre = manifest.get("preprocessing") or {}
    name = (manifest.get("model") or {}).get("name")
    where = "pixels in, pre/post-processing in the graph" if pre.get("in_graph") else "tensor input"
    if pre.get("mode") == "dynamic":
        return (f"{name} as built: torchvision transform min_size {min_size}, max_size {t.max_size} "
                f"(dynamic-size graph, {where})")
    size = pre.get("input_size") or ["?", "?"]
    return (f"{name} configured to the {size[0]}x{size[1]} canvas: min_size {min_size}, max_size {t.max_size} "
            f"(fixed-canvas graph, {where}; export without --input-size to compare with the model as built)")
