"""The ``Session`` interface every inference backend implements; it knows no backend.

Polygraphy-style: :class:`Session` validates the feed once, in the public
:meth:`Session.run`, and each backend (:mod:`.onnxruntime`, :mod:`.tensorrt`) implements only
``_run``. :mod:`.backends` is the one place that names the backends and picks one for an
artifact (:func:`~deploykit.runtime.backends.load`).

No torch here (the runtime ships without it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import BadInput, expected_got

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, numpy dtype and shape.

    A dimension is an ``int`` (static) or a ``str`` (dynamic: the graph's
    symbolic name such as ``"batch"``, or ``"?"`` when it has none).
    """

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        """``float32 [batch, 3, 320, 320]``."""
        return f"{self.dtype} {_shape_text(self.shape)}"


def _shape_text(shape: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class Session:
    """Base class: runs a model on a feed of numpy arrays, validating the feed first.

    Attributes:
        path: the artifact (``.onnx`` or ``.plan``).
        inputs, outputs: lists of :class:`TensorSpec`, in graph order.
        manifest: the manifest beside the artifact (``model.json``) as a dict,
            or None when there is none.

    ``run`` is safe to call from several threads at once when the backend is
    (ONNX Runtime is). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 manifest: dict[str, Any] | None) -> None:
        self.path = Path(path)
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.manifest = manifest
        self._by_name = {spec.name: spec for spec in self.inputs}
        self._batch_range = _batch_range(manifest)
        self._closed = False

    # -- public API -------------------------------------------------------
    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model: ``{input name: array}`` -> ``{output name: array}``.

        Raises BadInput (one line naming the input, the expected and the got)
        for a missing or unknown input name, a wrong dtype (no implicit casts),
        a wrong rank, a static dimension that differs, a dynamic dimension that
        disagrees with the same symbolic dimension of another input, or a batch
        outside the manifest's ``batch`` range.
        """
        if self._closed:
            raise BadInput(expected_got(f"session {self.path.name}", "an open session", "closed"))
        self._validate(feed)
        return self._run(feed)

    def close(self) -> None:
        """Release the backend's resources; ``run`` afterwards raises BadInput."""
        self._closed = True

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}: {s.describe()}" for s in self.inputs)
        outs = ", ".join(f"{s.name}: {s.describe()}" for s in self.outputs)
        return f"{type(self).__name__}({self.path.name}; inputs {ins}; outputs {outs})"

    # -- backend hook -----------------------------------------------------
    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run an already validated feed; implemented by each backend."""
        raise NotImplementedError

    # -- validation -------------------------------------------------------
    def _validate(self, feed: Mapping[str, np.ndarray]) -> None:
        if not isinstance(feed, Mapping):
            raise BadInput(expected_got("feed", "a dict {input name: numpy array}", type(feed).__name__))
        for name in feed:
            if name not in self._by_name:
                raise BadInput(expected_got(f"input {name!r}", f"one of the model inputs {list(self._by_name)}",
                                            "an unknown name"))
        symbols: dict[str, tuple[int, str]] = {}
        for spec in self.inputs:
            if spec.name not in feed:
                raise BadInput(expected_got(f"input {spec.name!r}",
                                            f"in the feed (model inputs {list(self._by_name)})", "missing"))
            array = feed[spec.name]
            if not isinstance(array, np.ndarray):
                raise BadInput(expected_got(f"input {spec.name!r}", f"numpy.ndarray {spec.describe()}",
                                            type(array).__name__))
            if array.dtype != spec.dtype:
                raise BadInput(expected_got(f"input {spec.name!r}", spec.describe(), f"{_got(array)} (wrong dtype)"))
            if array.ndim != len(spec.shape):
                raise BadInput(expected_got(f"input {spec.name!r}", spec.describe(),
                                            f"{_got(array)} (rank {array.ndim}, expected {len(spec.shape)})"))
            for axis, (want, have) in enumerate(zip(spec.shape, array.shape)):
                if isinstance(want, int):
                    if want != have:
                        raise BadInput(expected_got(f"input {spec.name!r}", spec.describe(),
                                                    f"{_got(array)} (dim {axis})"))
                elif want != "?":
                    seen = symbols.setdefault(want, (have, spec.name))
                    if seen[0] != have:
                        raise BadInput(expected_got(
                            f"input {spec.name!r} dim {axis} ({want})",
                            f"{seen[0]} as in input {seen[1]!r}", have))
            if self._batch_range and spec.shape and spec.shape[0] == "batch":
                low, high = self._batch_range
                if not low <= array.shape[0] <= high:
                    raise BadInput(expected_got(f"input {spec.name!r} batch",
                                                f"{low}..{high} (manifest batch range)", array.shape[0]))


def _got(array: np.ndarray) -> str:
    return f"{array.dtype} {_shape_text(array.shape)}"


def _batch_range(manifest: dict[str, Any] | None) -> tuple[int, int] | None:
    batch = (manifest or {}).get("batch")
    if not isinstance(batch, dict):
        return None
    low, high = batch.get("min", 1), batch.get("max")
    if not isinstance(high, int) or not isinstance(low, int):
        return None
    return low, high


class OwnsSession:
    """``close()`` and the context-manager protocol for pipelines that own ``self.session``."""

    session: Session

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
