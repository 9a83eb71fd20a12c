"""TensorRT 11 backend for :class:`~deploykit.runtime.session.Session`, plus the pure logic around it.

Thin by design: deserialize the engine, one execution context per thread, device
buffers allocated once per input shape and reused, pinned host buffers,
``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3`` on a CUDA
stream, optionally replayed as a CUDA graph (``cuda_graph=True``). CUDA goes
through cuda-python (``cuda.bindings.runtime``): no torch.

Outputs whose shape TensorRT learns only while it runs (a data-dependent
dimension, -1 after the input shapes are set: the pasted masks of a Mask R-CNN
with one row per detection) get an ``IOutputAllocator``
(``set_output_allocator``): TensorRT asks it for memory of the size it needs
(``reallocate_output_async``, buffers kept and grown) and tells it the shape
(``notify_shape``); the host copy follows that shape. Such engines run without
CUDA graphs (their enqueue allocates).

Everything that needs no GPU is a plain function tested on the CPU:
:func:`buffer_nbytes`, :func:`check_compatible`,
:func:`numpy_dtype` (with the :data:`TRT_DTYPES` table) and :func:`missing_requirement`.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import BadInput, expected_got
from .session import Session, TensorSpec

INSTALL_HINT = "pip install 'deploykit[tensorrt]'"

#: TensorRT ``DataType`` member name -> numpy dtype. Types numpy has no
#: equivalent for (BF16, FP8, INT4, FP4, E8M0) are refused at the I/O boundary.
TRT_DTYPES: dict[str, np.dtype] = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
}


def numpy_dtype(trt_dtype: Any, tensor: str = "tensor") -> np.dtype:
    """numpy dtype for a TensorRT ``DataType`` (or its member name, e.g. ``"HALF"``)."""
    name = trt_dtype if isinstance(trt_dtype, str) else getattr(trt_dtype, "name", str(trt_dtype))
    name = name.rsplit(".", 1)[-1].upper()
    if name not in TRT_DTYPES:
        raise BadInput(expected_got(f"engine I/O {tensor!r} dtype", f"one of {sorted(TRT_DTYPES)}", name))
    return TRT_DTYPES[name]


def buffer_nbytes(shape: tuple[int, ...] | list[int], dtype: Any) -> int:
    """Bytes for a tensor of a concrete ``shape`` and ``dtype`` (numpy dtype or TensorRT DataType)."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise BadInput(expected_got("buffer shape", "concrete non-negative dimensions", list(shape)))
    item = (dtype if isinstance(dtype, np.dtype) else
            np.dtype(dtype) if isinstance(dtype, type) else numpy_dtype(dtype)).itemsize
    return int(np.prod(dims, dtype=np.int64)) * item if dims else item


def check_compatible(manifest: Mapping[str, Any] | None, trt_version: str, compute_capability: str,
                     path: str | os.PathLike = "engine") -> None:
    """Refuse an engine built by another TensorRT version or for another GPU (by the manifest).

    A manifest without a ``tensorrt`` section is not checked here (TensorRT's own
    deserialization then refuses an incompatible plan).
    """
    section = (manifest or {}).get("tensorrt")
    if not isinstance(section, Mapping):
        return
    built = section.get("version")
    if built is not None and str(built) != str(trt_version):
        raise BadInput(expected_got(f"TensorRT engine {path}", f"built by the running TensorRT {trt_version}",
                                    f"built by TensorRT {built}; rebuild it with `deploykit build`"))
    cc = section.get("compute_capability")
    if cc is not None and str(cc) != str(compute_capability):
        raise BadInput(expected_got(
            f"TensorRT engine {path}", f"built for this GPU (compute capability {compute_capability})",
            f"built for compute capability {cc} ({section.get('gpu', 'unknown GPU')}); rebuild it on this GPU"))


def missing_requirement() -> str | None:
    """What is missing for TensorRT here (the `tensorrt` package, cuda-python, a GPU), or None."""
    try:
        importlib.import_module("tensorrt")
    except ImportError:
        return "no `tensorrt` Python package"
    try:
        cudart = importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        return "no cuda-python (`cuda.bindings`)"
    try:
        err, count = cudart.cudaGetDeviceCount()
    except Exception as e:  # driver library missing
        return f"no NVIDIA GPU (CUDA: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})"
    if _err_code(err) != 0 or count < 1:
        return "no NVIDIA GPU (CUDA reports no device)"
    return None


def require(thing: str) -> None:
    """Raise one-line BadInput naming what is missing for TensorRT and how to install it."""
    missing = missing_requirement()
    if missing is not None:
        raise BadInput(expected_got(thing, f"the `tensorrt` Python package, cuda-python and an NVIDIA GPU "
                                           f"({INSTALL_HINT})", missing))


# ---------------------------------------------------------------------------
# CUDA helpers (cuda.bindings.runtime)

def _err_code(err: Any) -> int:
    return int(getattr(err, "value", err))


def _check(result: Any, what: str) -> Any:
    """cuda-python returns ``(err, *values)``; raise on error, return the value(s)."""
    if not isinstance(result, tuple):
        result = (result,)
    err, rest = result[0], result[1:]
    if _err_code(err) != 0:
        raise RuntimeError(f"CUDA {what} failed: {getattr(err, 'name', err)}")
    return rest[0] if len(rest) == 1 else (rest or None)


def gpu_info(device: int = 0) -> tuple[str, str]:
    """``(GPU name, "major.minor" compute capability)`` of a CUDA device."""
    from cuda.bindings import runtime as cudart

    prop = _check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return str(name), f"{prop.major}.{prop.minor}"


class _Buffer:
    """A device buffer and a pinned host buffer of the same size."""

    def __init__(self, nbytes: int, stream: Any) -> None:
        from cuda.bindings import runtime as cudart

        self.nbytes = max(nbytes, 1)
        self.device = int(_check(cudart.cudaMallocAsync(self.nbytes, stream), "cudaMallocAsync"))
        self.host = int(_check(cudart.cudaMallocHost(self.nbytes), "cudaMallocHost"))

    def host_array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        raw = (ctypes.c_byte * self.nbytes).from_address(self.host)
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self, stream: Any) -> None:
        from cuda.bindings import runtime as cudart

        cudart.cudaFreeAsync(self.device, stream)
        cudart.cudaFreeHost(self.host)


def _output_allocator(trt: Any, stream: Any) -> Any:
    """An ``IOutputAllocator`` (TensorRT's own class, subclassed as its docstring prescribes) for the
    data-dependent outputs of one context on ``stream``: buffers per output, kept and grown; the shapes
    TensorRT notifies. A failed allocation returns 0 (nullptr: TensorRT fails the enqueue) and is
    kept in ``error`` for the caller's message."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            super().__init__()  # pybind11: the base must be initialised (TensorRT's docstring says so)
            self.buffers: dict[str, _Buffer] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.error: str | None = None

        def reallocate_output_async(self, tensor_name: str, memory: Any, size: int, alignment: int,
                                    stream_handle: Any) -> int:
            buf = self.buffers.get(tensor_name)
            if buf is None or buf.nbytes < size:
                try:
                    grown = _Buffer(max(int(size), 2 * buf.nbytes if buf else 0), stream)
                except Exception as e:  # noqa: BLE001 - reported after the enqueue fails
                    self.error = f"allocating {size} bytes for output {tensor_name!r}: {e}"
                    return 0
                if buf is not None:
                    buf.free(stream)
                buf = self.buffers[tensor_name] = grown
            return buf.device

        def reallocate_output(self, tensor_name: str, memory: Any, size: int, alignment: int) -> int:
            return self.reallocate_output_async(tensor_name, memory, size, alignment, stream)  # pre-10 spelling

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(int(d) for d in shape)

        def free(self) -> None:
            for buf in self.buffers.values():
                buf.free(stream)
            self.buffers.clear()

    return OutputAllocator()


class _CudaGraph:
    """One captured ``execute_async_v3`` of an execution context, replayed with ``cudaGraphLaunch``.

    Valid for the input shapes and tensor addresses bound when it was captured: the owner
    drops it (``destroy``) whenever either changes. cuda-python calls return ``(err, *values)``.
    """

    def __init__(self, context: Any, stream: Any) -> None:
        """Capture one enqueue on ``stream`` (thread-local capture mode: other threads' CUDA calls are
        unaffected). Raises RuntimeError when the engine cannot be captured; the stream is left
        out of capture mode and nothing is leaked."""
        from cuda.bindings import runtime as cudart

        self.graph = self.exec = None
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        try:
            ok, why = bool(context.execute_async_v3(int(stream))), "execute_async_v3 returned false"
        except Exception as e:  # noqa: BLE001 - any enqueue error means: not capturable
            ok, why = False, f"execute_async_v3 raised {type(e).__name__}: {e}"
        err, graph = cudart.cudaStreamEndCapture(stream)  # always: leaves capture mode
        captured = _err_code(err) == 0 and graph is not None and int(graph) != 0
        if not ok or not captured:
            if captured:
                cudart.cudaGraphDestroy(graph)
            if ok:
                why = f"cudaStreamEndCapture: {getattr(err, 'name', err)}"
            raise RuntimeError(f"CUDA graph capture failed ({why})")
        self.graph = graph
        try:
            self.exec = _check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        except RuntimeError:
            self.destroy()
            raise

    def launch(self, stream: Any) -> None:
        from cuda.bindings import runtime as cudart

        _check(cudart.cudaGraphLaunch(self.exec, stream), "cudaGraphLaunch")

    def destroy(self) -> None:
        from cuda.bindings import runtime as cudart

        if self.exec is not None:
            cudart.cudaGraphExecDestroy(self.exec)
            self.exec = None
        if self.graph is not None:
            cudart.cudaGraphDestroy(self.graph)
            self.graph = None


class _Worker:
    """One execution context, stream and buffer set: used by one thread at a time.

    With ``cuda_graph``, the first run for a set of input shapes enqueues normally (TensorRT
    does its deferred work: allocations, shape-dependent setup) and then captures one
    ``execute_async_v3`` into a CUDA graph; later runs with the same shapes launch the graph.
    New shapes (or reallocated buffers) drop the graph and capture again. When capture fails
    the worker stops trying and ``on_capture_failure`` is called (the session warns once); an
    engine with data-dependent outputs is not captured (its enqueue allocates), with the same warning.
    """

    def __init__(self, engine: Any, inputs: list[TensorSpec], outputs: list[TensorSpec], cuda_graph: bool = False,
                 on_capture_failure: Any = None) -> None:
        import tensorrt as trt
        from cuda.bindings import runtime as cudart

        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.inputs, self.outputs = inputs, outputs
        self.allocator = _output_allocator(trt, self.stream)  # serves the data-dependent outputs (module doc)
        self.data_dependent: set[str] = set()  # outputs handed to the allocator
        self.buffers: dict[str, _Buffer] = {}
        self.shapes: dict[str, tuple[int, ...]] | None = None  # input shapes the buffers are bound for
        self._shapes_cache: dict[str, tuple[int, ...]] = {}  # all I/O shapes for self.shapes
        self.cuda_graph = cuda_graph
        self.graph: _CudaGraph | None = None  # captured for self.shapes and the current buffers
        self._on_capture_failure = on_capture_failure

    def _drop_graph(self) -> None:
        if self.graph is not None:
            self.graph.destroy()
            self.graph = None

    def _execute(self) -> None:
        """Enqueue the inference on the stream: plain, capture-then-plain, or graph launch."""
        if self.graph is not None:
            self.graph.launch(self.stream)
            return
        if not self.context.execute_async_v3(int(self.stream)):
            why = f": {self.allocator.error}" if self.allocator.error else " (see the TensorRT log)"
            self.allocator.error = None
            raise RuntimeError(f"TensorRT execute_async_v3 failed{why}")
        if self.cuda_graph and self.data_dependent:
            self.cuda_graph = False
            if self._on_capture_failure is not None:
                self._on_capture_failure(RuntimeError(
                    f"CUDA graph capture skipped: output(s) {', '.join(sorted(self.data_dependent))} have a "
                    "data-dependent shape (TensorRT allocates them while it runs)"))
        if self.cuda_graph:  # enqueued once for these shapes: now capture (recorded, not run)
            try:
                self.graph = _CudaGraph(self.context, self.stream)
            except RuntimeError as e:
                self.cuda_graph = False
                if self._on_capture_failure is not None:
                    self._on_capture_failure(e)

    def _bind(self, in_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Set input shapes; (re)allocate buffers only when a shape changed; return all shapes."""
        self._drop_graph()  # captured for other shapes or addresses
        for name, shape in in_shapes.items():
            if not self.context.set_input_shape(name, shape):
                raise BadInput(expected_got(f"input {name!r}", "a shape within the engine's optimisation profile",
                                            list(shape)))
        shapes = dict(in_shapes)
        for spec in self.outputs:
            shapes[spec.name] = tuple(self.context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shapes[spec.name]) and spec.name not in self.data_dependent:
                # known only while TensorRT runs: the allocator gives the memory and learns the shape
                if not self.context.set_output_allocator(spec.name, self.allocator):
                    raise RuntimeError(f"TensorRT set_output_allocator failed for output {spec.name!r}")
                self.data_dependent.add(spec.name)
        for spec in self.inputs + self.outputs:
            if spec.name in self.data_dependent:
                continue
            need = buffer_nbytes(shapes[spec.name], spec.dtype)
            buf = self.buffers.get(spec.name)
            if buf is None or buf.nbytes < need:
                if buf is not None:
                    buf.free(self.stream)
                buf = self.buffers[spec.name] = _Buffer(need, self.stream)
            self.context.set_tensor_address(spec.name, buf.device)
        self.shapes = in_shapes
        return shapes

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from cuda.bindings import runtime as cudart

        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        in_shapes = {s.name: tuple(feed[s.name].shape) for s in self.inputs}
        shapes = self._bind(in_shapes) if in_shapes != self.shapes else self._shapes_cache
        self._shapes_cache = shapes
        for spec in self.inputs:
            buf, array = self.buffers[spec.name], feed[spec.name]
            buf.host_array(array.shape, spec.dtype)[...] = array
            _check(cudart.cudaMemcpyAsync(buf.device, buf.host, array.nbytes, h2d, self.stream), "cudaMemcpyAsync")
        self._execute()
        out, found = {}, {}
        for spec in self.outputs:
            if spec.name in self.data_dependent:  # the allocator's buffer, in the shape TensorRT notified
                if spec.name not in self.allocator.shapes or spec.name not in self.allocator.buffers:
                    raise RuntimeError(f"TensorRT did not report the shape of output {spec.name!r}")
                # the last shape TensorRT notified (kept, not cleared: right whether it reports every run or changes)
                buf, shape = self.allocator.buffers[spec.name], self.allocator.shapes[spec.name]
            else:
                buf, shape = self.buffers[spec.name], shapes[spec.name]
            found[spec.name] = (buf, shape)
            nbytes = buffer_nbytes(shape, spec.dtype)
            _check(cudart.cudaMemcpyAsync(buf.host, buf.device, nbytes, d2h, self.stream), "cudaMemcpyAsync")
        _check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        for spec in self.outputs:
            buf, shape = found[spec.name]
            out[spec.name] = buf.host_array(shape, spec.dtype).copy()
        return out

    def free(self) -> None:
        from cuda.bindings import runtime as cudart

        cudart.cudaStreamSynchronize(self.stream)
        self._drop_graph()
        for buf in self.buffers.values():
            buf.free(self.stream)
        self.buffers.clear()
        self.allocator.free()
        cudart.cudaStreamSynchronize(self.stream)
        cudart.cudaStreamDestroy(self.stream)
        self.context = None


def trt_logger(trt: Any, verbose: bool = False) -> Any:
    """A ``trt.Logger`` at WARNING (VERBOSE with ``verbose``), for the builder and the runtime."""
    return trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)


def init_plugins(trt: Any, logger: Any) -> None:
    """Register TensorRT's standard plugin library (``libnvinfer_plugin``) in the default namespace.

    Needed before parsing an ONNX graph with ``RoiAlign`` (imported as the
    ``ROIAlign_TRT`` v2 plugin) and before deserialising an engine that uses it;
    harmless otherwise, and idempotent. C++: ``initLibNvInferPlugins(&logger, "")``.
    """
    if trt.init_libnvinfer_plugins(logger, "") is False:
        raise BadInput(expected_got("TensorRT standard plugins", "libnvinfer_plugin initialised",
                                    "init_libnvinfer_plugins returned False (is libnvinfer_plugin installed?)"))


class TensorRTSession(Session):
    """A :class:`Session` on a serialized TensorRT engine (``.plan``).

    A TensorRT execution context is not thread-safe: each calling thread gets
    its own context, CUDA stream and buffers (created on its first ``run``).

    ``cuda_graph=True`` replays each context's inference as a CUDA graph captured on
    its first run per input shape (less CPU launch overhead; see docs/tensorrt.md).
    Engines that cannot be captured fall back to plain enqueue with one warning.
    """

    def __init__(self, path: str | os.PathLike, *, manifest: dict[str, Any] | None = None,
                 verbose: bool = False, cuda_graph: bool = False) -> None:
        path = Path(path)
        require(f"TensorRT engine {path}")
        import tensorrt as trt

        _, cc = gpu_info()
        check_compatible(manifest, trt.__version__, cc, path)
        self._trt_logger = trt_logger(trt, verbose)
        init_plugins(trt, self._trt_logger)  # before deserialising: engines may hold ROIAlign_TRT
        self._runtime = trt.Runtime(self._trt_logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BadInput(expected_got(f"TensorRT engine {path}",
                                        f"a plan serialized by TensorRT {trt.__version__} for this GPU",
                                        "a file TensorRT cannot deserialize (corrupt, truncated, or built by another "
                                        "TensorRT version or GPU)"))
        symbolic = {s["name"]: s.get("shape") for s in (manifest or {}).get("inputs", []) +
                    (manifest or {}).get("outputs", []) if isinstance(s, dict) and "name" in s}
        inputs, outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dims = tuple(engine.get_tensor_shape(name))
            known = symbolic.get(name) or []
            shape = tuple(d if d >= 0 else (known[a] if a < len(known) and isinstance(known[a], str) else "?")
                          for a, d in enumerate(dims))
            spec = TensorSpec(name, numpy_dtype(engine.get_tensor_dtype(name), name), shape)
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
        super().__init__(path, inputs, outputs, manifest)
        self._engine = engine
        self.cuda_graph = bool(cuda_graph)
        self.capture_failures: list[str] = []  # one entry per context whose capture failed
        self._local = threading.local()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()

    def _worker(self) -> _Worker:
        worker = getattr(self._local, "worker", None)
        if worker is None:
            with self._lock:
                if self._engine is None:
                    raise BadInput(expected_got(f"session {self.path.name}", "an open session", "closed"))
                worker = _Worker(self._engine, self.inputs, self.outputs, cuda_graph=self.cuda_graph,
                                 on_capture_failure=self._capture_failed)
                self._workers.append(worker)
            self._local.worker = worker
        return worker

    def _capture_failed(self, error: Exception) -> None:
        with self._lock:
            self.capture_failures.append(str(error))
            first = len(self.capture_failures) == 1
        if first:
            warnings.warn(f"{self.path.name}: {error}; running without CUDA graphs (plain execute_async_v3)",
                          RuntimeWarning, stacklevel=4)

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._worker().run({k: np.ascontiguousarray(v) for k, v in feed.items()})

    def close(self) -> None:
        with self._lock:
            super().close()
            for worker in self._workers:
                worker.free()
            self._workers.clear()
            self._engine = None


def open_session(path: Path, manifest: dict[str, Any] | None, *, threads: int | None = None,
                 providers: Any = None, cuda_graph: bool = False) -> Session:
    """The backend factory for ``.plan``/``.engine`` (``threads``/``providers`` are ONNX Runtime's: unused).

    One line naming what is missing without TensorRT, cuda-python or a GPU.
    """
    return TensorRTSession(path, manifest=manifest, cuda_graph=cuda_graph)
