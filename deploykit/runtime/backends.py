"""The runtime's backends by artifact suffix, and :func:`load`: the only module that names them.

A backend is a factory ``(path, manifest, *, threads, providers, cuda_graph) -> Session``,
registered once per suffix (:func:`register_backend`, loud on duplicates). ONNX Runtime runs
``.onnx`` (:mod:`.onnxruntime`), TensorRT runs ``.plan``/``.engine`` (:mod:`.tensorrt`, which
imports TensorRT only when an engine is opened).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..errors import BadInput, expected_got
from ..fileio import dir_lock
from ..manifest import manifest_path, read_manifest_locked, settle
from . import onnxruntime, tensorrt
from .session import Session

#: Backends by artifact suffix. A backend is ``(path, manifest, *, threads, providers, cuda_graph) -> Session``.
BACKENDS: dict[str, Callable[..., Session]] = {}


def register_backend(suffix: str, factory: Callable[..., Session]) -> None:
    """Run artifacts ending in ``suffix`` (e.g. ``".onnx"``) with ``factory``; a suffix is registered once."""
    suffix = suffix.lower()
    if suffix in BACKENDS:
        raise ValueError(f"backend for {suffix!r} already registered ({BACKENDS[suffix].__module__})")
    BACKENDS[suffix] = factory


register_backend(".onnx", onnxruntime.open_session)
register_backend(".plan", tensorrt.open_session)
register_backend(".engine", tensorrt.open_session)


def load(path: str | os.PathLike, *, threads: int | None = None,
         providers: list[str] | None = None, cuda_graph: bool = False) -> Session:
    """Open an artifact as a :class:`Session`, choosing the backend by suffix.

    Args:
        path: ``.onnx`` (ONNX Runtime) or ``.plan``/``.engine`` (TensorRT).
        threads: ONNX Runtime intra-op threads (inter-op is then 1); None lets
            ONNX Runtime decide.
        providers: ONNX Runtime execution providers, best first. Default:
            TensorRT, then CUDA, then CPU, keeping only those installed.
        cuda_graph: TensorRT engines only: replay inference as a captured CUDA
            graph (docs/tensorrt.md); BadInput for an ``.onnx``.

    When ``model.json`` sits beside ``model.onnx`` it is read as the artifact's
    manifest (``Session.manifest``) and its sha256 must match the file.
    Raises BadInput (one line) for a missing, unreadable or corrupt artifact
    or manifest.
    """
    path = Path(path)
    if not path.is_file():
        got = "a directory" if path.is_dir() else "no such file"
        raise BadInput(expected_got(f"model {path}", "an existing .onnx or .plan file", got))
    backend = BACKENDS.get(path.suffix.lower())
    if backend is None:
        raise BadInput(expected_got(f"model {path}", f"a file ending in {' or '.join(BACKENDS)}",
                                    repr(path.suffix or "no suffix")))
    settle(path)  # finish or undo an interrupted write of the artifact and its manifest
    # under a shared lock on the folder: a concurrent writer's commit waits until the backend has read the file
    with dir_lock(path.parent, shared=True):
        manifest = read_manifest_locked(path) if manifest_path(path).is_file() else None
        return backend(path, manifest, threads=threads, providers=providers, cuda_graph=cuda_graph)
