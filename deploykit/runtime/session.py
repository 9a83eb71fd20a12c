"""One ``Session`` interface over inference backends (ONNX Runtime now, TensorRT later).

Polygraphy-style: :class:`Session` validates the feed once, in the public
:meth:`Session.run`, and each backend implements only ``_run``. :func:`load`
picks the backend from the artifact's suffix.

No torch here (the runtime ships without it).
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import BadInput, expected_got
from ..manifest import manifest_path, read_manifest

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
            if self._batch_range and spec.shape and isinstance(spec.shape[0], str):
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


# ---------------------------------------------------------------------------
# ONNX Runtime backend

#: Default execution providers, best first; only those ONNX Runtime reports are used.
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


class OwnsSession:
    """``close()`` and the context-manager protocol for pipelines that own ``self.session``."""

    session: Session

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line(error: BaseException) -> str:
    """First non-empty line of an exception's message, without ONNX Runtime's prefix."""
    text = str(error).strip() or type(error).__name__
    line = next((part.strip() for part in text.splitlines() if part.strip()), text)
    if line.startswith("[ONNXRuntimeError]"):
        line = line.split(" : ", 3)[-1]
    if line.startswith("Load model from ") and "failed:" in line:
        line = line.split("failed:", 1)[1].strip()
    return line[:300]


class OnnxRuntimeSession(Session):
    """A :class:`Session` on an ``onnxruntime.InferenceSession``.

    ONNX Runtime's ``run`` is thread-safe, so one session serves many threads.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
                 providers: Sequence[str] | None = None, manifest: dict[str, Any] | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        available = ort.get_available_providers()
        if providers is None:
            chosen = [p for p in DEFAULT_PROVIDERS if p in available]
        else:
            unknown = [p for p in providers if p not in available]
            if unknown or not providers:
                raise BadInput(expected_got("providers", f"a non-empty subset of {available}",
                                            f"{list(providers)}" + (f" ({unknown} not available)" if unknown else "")))
            chosen = list(providers)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            if not isinstance(threads, int) or threads < 1:
                raise BadInput(expected_got("threads", "a positive int or None", repr(threads)))
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            sess = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as e:  # ONNX Runtime raises its own types; none should leak a traceback
            raise BadInput(expected_got(f"ONNX model {path}", "a valid ONNX file ONNX Runtime can load",
                                        _one_line(e))) from None
        try:
            inputs = [_ort_spec(a, "input") for a in sess.get_inputs()]
            outputs = [_ort_spec(a, "output") for a in sess.get_outputs()]
        except BadInput as e:
            raise BadInput(f"ONNX model {path}: {e}") from None
        super().__init__(path, inputs, outputs, manifest)
        _warn_cpu_mismatch(path, manifest)
        self._sess = sess
        self._output_names = [s.name for s in outputs]
        self._lock = threading.Lock()

    @property
    def providers(self) -> list[str]:
        """Execution providers in use, best first."""
        return self._sess.get_providers() if self._sess is not None else []

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = self._sess  # a local reference keeps it alive if close() races with run()
        if sess is None:
            raise BadInput(expected_got(f"session {self.path.name}", "an open session", "closed"))
        arrays = sess.run(self._output_names, {k: np.ascontiguousarray(v) for k, v in feed.items()})
        return dict(zip(self._output_names, arrays))

    def close(self) -> None:
        with self._lock:
            super().close()
            self._sess = None


_WARNED_CPU_MISMATCH: set[str] = set()


def _warn_cpu_mismatch(path: Path, manifest: dict[str, Any] | None) -> None:
    """Warn once per artifact when its INT8 ORT lowering was made for another CPU class."""
    from .cpu import lowering_mismatch

    message = lowering_mismatch(manifest)
    key = str(path.resolve())
    if message and key not in _WARNED_CPU_MISMATCH:
        _WARNED_CPU_MISMATCH.add(key)
        warnings.warn(f"{path.name}: {message}", RuntimeWarning, stacklevel=4)


def _ort_spec(arg: Any, what: str) -> TensorSpec:
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise BadInput(expected_got(f"{what} {arg.name!r} type", f"one of {sorted(_ORT_DTYPES)}", arg.type))
    shape = tuple(d if isinstance(d, int) else (d if isinstance(d, str) and d else "?") for d in arg.shape)
    return TensorSpec(arg.name, np.dtype(dtype), shape)


def _load_onnxruntime(path: Path, manifest: dict[str, Any] | None, *, threads: int | None,
                      providers: Sequence[str] | None, cuda_graph: bool = False) -> Session:
    if cuda_graph:
        raise BadInput(expected_got(f"cuda_graph for model {path}", "a TensorRT engine (.plan or .engine)",
                                    f"{path.suffix!r}, run by ONNX Runtime"))
    return OnnxRuntimeSession(path, threads=threads, providers=providers, manifest=manifest)


def _load_tensorrt(path: Path, manifest: dict[str, Any] | None, *, threads: int | None,
                   providers: Sequence[str] | None, cuda_graph: bool = False) -> Session:
    """TensorRT backend (deploykit.runtime.tensorrt); one line naming what is missing without TensorRT/GPU."""
    from .tensorrt import TensorRTSession

    return TensorRTSession(path, manifest=manifest, cuda_graph=cuda_graph)


#: Backends by artifact suffix. A backend is ``(path, manifest, *, threads, providers, cuda_graph) -> Session``.
BACKENDS: dict[str, Callable[..., Session]] = {
    ".onnx": _load_onnxruntime,
    ".plan": _load_tensorrt,
    ".engine": _load_tensorrt,
}


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
    manifest = read_manifest(path) if manifest_path(path).is_file() else None
    return backend(path, manifest, threads=threads, providers=providers, cuda_graph=cuda_graph)
