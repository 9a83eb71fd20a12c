"""The JSON manifest written beside every artifact.

``model.onnx`` keeps its manifest at ``model.json``; a TensorRT plan ``model.plan``
(or ``model.engine``) at ``model.plan.json`` (``model.engine.json``), so an engine
named after its ONNX file (``deploykit build model.onnx -o model.plan``) has a
manifest of its own. Plans built before that naming kept theirs at ``model.json``:
readers fall back to it when its ``artifact.file`` names the plan.
:func:`manifest_path` is the one place that decides.

It is what lets a runtime, ``deploykit parity`` or a C++ app use an artifact
without guessing. No torch here: the runtime reads manifests.

Schema (``format: deploykit-manifest/1``)::

    {
      "format": "deploykit-manifest/1",
      "kind": "detector" | "generator",
      "artifact": {"file": "model.onnx", "format": "onnx" | "tensorrt-plan", "sha256": "..."},
      "model": {"name": "fasterrcnn_demo", "checkpoint": "path or null",
                "checkpoint_sha256": "... or null", "overrides": {...}},
      "inputs":  [{"name": "images", "dtype": "float32", "shape": ["batch", 3, 320, 320]}, ...],
      "outputs": [{"name": "boxes", "dtype": "float32", "shape": ["batch", 100, 4]}, ...],
      "batch": {"dynamic": false, "min": 1, "opt": 1, "max": 1},
      "preprocessing": {...},     # model-kind specific, see docs/manifest.md
      "postprocessing": {...},
      "class_names": ["__background__", ...],
      "precision": {"mode": "fp32", ...},
      "versions": {"deploykit": "...", "torch": "...", "onnx": "...", "opset": 18, ...}
    }

A dimension is an int, or the string ``"batch"`` for a dynamic batch axis.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import BadInput, expected_got
from .fileio import sha256_file, write_json_atomic

FORMAT = "deploykit-manifest/1"
REQUIRED_KEYS = ("format", "kind", "artifact", "model", "inputs", "outputs", "batch")


PLAN_SUFFIXES = (".plan", ".engine")


def manifest_path(artifact: str | os.PathLike, *, legacy: bool = True) -> Path:
    """The manifest of ``artifact``: ``model.onnx`` -> ``model.json``, ``model.plan`` -> ``model.plan.json``.

    With ``legacy`` (readers), a plan without ``model.plan.json`` whose older
    ``model.json`` names it in ``artifact.file`` gets that ``model.json``; writers
    pass ``legacy=False`` and always get the current name.
    """
    artifact = Path(artifact)
    if artifact.suffix.lower() not in PLAN_SUFFIXES:
        return artifact.with_suffix(".json")
    current = artifact.with_name(artifact.name + ".json")
    if legacy and not current.is_file():
        old = artifact.with_suffix(".json")
        if old.is_file() and _names_artifact(old, artifact.name):
            return old
    return current


def _names_artifact(path: Path, name: str) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    art = data.get("artifact") if isinstance(data, dict) else None
    return isinstance(art, dict) and art.get("file") == name


def write_manifest(artifact: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Fill in the artifact's file name and sha256, then write the manifest atomically."""
    artifact = Path(artifact)
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    art = dict(manifest.get("artifact", {}))
    art["file"] = artifact.name
    art.setdefault("format", "onnx" if artifact.suffix == ".onnx" else "tensorrt-plan")
    art["sha256"] = sha256_file(artifact)
    manifest["artifact"] = art
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"manifest for {artifact}: missing keys {missing}")
    path = manifest_path(artifact, legacy=False)
    write_json_atomic(path, manifest)
    return path


def read_manifest(artifact: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Read and validate the manifest beside ``artifact``.

    Raises :class:`BadInput` when it is missing, not JSON, of another format, or
    (with ``verify``) when its recorded sha256 does not match the artifact.
    """
    artifact = Path(artifact)
    path = manifest_path(artifact)
    if not path.is_file():
        raise BadInput(expected_got(f"manifest {path}", "a deploykit manifest beside the artifact", "no such file"))
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(expected_got(f"manifest {path}", "valid JSON", f"parse error ({e})")) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BadInput(expected_got(f"manifest {path}", f"format {FORMAT!r}", repr(got)))
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BadInput(expected_got(f"manifest {path}", f"keys {list(REQUIRED_KEYS)}", f"missing {missing}"))
    if verify:
        want = manifest["artifact"].get("sha256")
        got = sha256_file(artifact)
        if want != got:
            raise BadInput(
                expected_got(f"manifest {path}", f"sha256 of {artifact.name} = {want[:12] if want else None}…",
                             f"{got[:12]}… (artifact changed after export, or manifest belongs to another file)")
            )
    return manifest
