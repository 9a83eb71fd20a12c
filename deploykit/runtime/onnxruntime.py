"""The ONNX Runtime backend of :class:`~deploykit.runtime.session.Session` (CPU here; CUDA/TensorRT EPs where installed)."""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import BadInput, expected_got
from .session import Session, TensorSpec

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



def open_session(path: Path, manifest: dict[str, Any] | None, *, threads: int | None,
                      providers: Sequence[str] | None, cuda_graph: bool = False) -> Session:
    if cuda_graph:
        raise BadInput(expected_got(f"cuda_graph for model {path}", "a TensorRT engine (.plan or .engine)",
                                    f"{path.suffix!r}, run by ONNX Runtime"))
    return OnnxRuntimeSession(path, threads=threads, providers=providers, manifest=manifest)
