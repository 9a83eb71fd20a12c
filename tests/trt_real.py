"""TensorRT's real Python module for the tests, and the stand-ins checked against it.

``tensorrt-cu13-bindings`` (the ``dev`` extra) installs ``tensorrt_bindings``, TensorRT's own
pybind11 module. Its ``tensorrt.so`` needs ``libnvinfer.so.11``, ``libnvinfer_plugin.so.11`` and
``libnvonnxparser.so.11``, and of those only a few C entry points (:data:`STUBS`). :func:`bindings`
compiles a stub library for each with gcc (factories return NULL, so nothing can run on a GPU),
preloads the stubs with ``RTLD_GLOBAL`` so that the dynamic loader takes them for the module's
DT_NEEDED entries, and imports the real module. Tests that need it skip, naming what is missing,
when gcc or the wheel is not there.

What the real module gives the tests:

* :func:`api_uses` / :func:`api_problems`: every ``tensorrt`` name, enum member, method and keyword
  argument deploykit's TensorRT code uses (found with ``ast`` in :data:`SOURCES`, following the
  module and the objects it returns from call to call), checked against the real classes and the
  pybind11 signatures in their docstrings;
* :class:`StandIn`: a recording ``tensorrt`` module for the build and runtime flows. It serves the
  real module's enums, ``Logger``, ``Dims`` and ``init_libnvinfer_plugins`` (into the stub), and
  stand-ins only for the objects whose real factories need TensorRT's libraries (``Builder``,
  ``OnnxParser``, ``Runtime`` and what they return). Each stand-in class is declared as a copy of a
  real class (:func:`derived`): a member the real class lacks fails at class creation, every call
  is bound against the real signatures (argument count, keyword names, argument types), return
  values are checked (tuples become real ``Dims``), and any other attribute is refused.

Also here, shared by tests/engine/test_build.py and tests/runtime/test_tensorrt.py: the
cuda-python stand-in (:class:`FakeCudart`; no real module for that here), a toy ONNX model with a
manifest, and the helpers behind the test modules' fixtures.
"""

from __future__ import annotations

import ast
import ctypes
import functools
import importlib.util
import inspect
import re
import shutil
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: deploykit's modules that use the ``tensorrt`` Python module.
SOURCES = ("deploykit/engine/build.py", "deploykit/runtime/tensorrt.py", "deploykit/precision/trt_cache.py")
WHEEL = "tensorrt-cu13-bindings"

#: The C entry points tensorrt.so takes from each TensorRT library (its undefined dynamic symbols),
#: as stub definitions: factories give NULL, plugin registration reports the value tests set.
STUBS = {
    "libnvinfer.so.11": """
        void *createInferBuilder_INTERNAL(void *logger, int version) { (void)logger; (void)version; return 0; }
        void *createInferRefitter_INTERNAL(void *engine, void *logger, int version)
        { (void)engine; (void)logger; (void)version; return 0; }
        void *createInferRuntime_INTERNAL(void *logger, int version) { (void)logger; (void)version; return 0; }
        void *getBuilderPluginRegistry(int capability) { (void)capability; return 0; }
        void *getPluginRegistry(void) { return 0; }
    """,
    "libnvinfer_plugin.so.11": """
        #include <stdbool.h>
        int dk_plugins_result = 1, dk_plugins_calls = 0;
        bool initLibNvInferPlugins(void *logger, const char *ns)
        { (void)logger; (void)ns; ++dk_plugins_calls; return dk_plugins_result != 0; }
    """,
    "libnvonnxparser.so.11": """
        void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version)
        { (void)network; (void)logger; (void)version; return 0; }
        void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version)
        { (void)refitter; (void)logger; (void)version; return 0; }
        int getNvOnnxParserVersion(void) { return 0; }
    """,
}


class RealBindingsUsed(UserWarning):
    """Shown in the warnings summary of a test run: the real TensorRT module checked deploykit's calls."""


@dataclass
class _Loaded:
    module: Any = None
    reason: str = ""  # why not: a skip, or with ``broken`` a failure
    broken: bool = False
    plugin_lib: Any = None


@functools.lru_cache(maxsize=None)
def _load() -> _Loaded:
    if importlib.util.find_spec("tensorrt_bindings") is None:
        return _Loaded(reason=f"{WHEEL} not installed (pip install -e '.[dev]'): TensorRT's real Python module")
    gcc = shutil.which("gcc")
    if gcc is None:
        return _Loaded(reason="no gcc to build the stub TensorRT libraries the real tensorrt_bindings module loads")
    folder = Path(tempfile.mkdtemp(prefix="deploykit-trt-stubs-"))
    libs = {}
    try:
        for soname, source in STUBS.items():
            out = folder / soname
            run = subprocess.run([gcc, "-shared", "-fPIC", "-x", "c", "-", "-o", str(out), f"-Wl,-soname,{soname}"],
                                 input=source, text=True, capture_output=True)
            if run.returncode != 0:
                return _Loaded(reason=f"gcc could not build the stub {soname}: {run.stderr.strip()[:200]}")
            libs[soname] = ctypes.CDLL(str(out), mode=ctypes.RTLD_GLOBAL)  # takes the SONAME for DT_NEEDED
        try:
            import tensorrt_bindings
        except ImportError as e:  # e.g. a newer wheel that needs an entry point the stubs lack
            return _Loaded(reason=f"tensorrt_bindings does not import over the stub libraries: {e}", broken=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # loaded: the files are no longer needed
    return _Loaded(module=tensorrt_bindings, plugin_lib=libs["libnvinfer_plugin.so.11"])


#: How many times a test got the real module (tests/conftest.py reports the tests that did).
USES = 0


def bindings():
    """The real ``tensorrt_bindings`` module over the stub libraries (skips the test where unavailable)."""
    global USES
    loaded = _load()
    if loaded.broken:
        pytest.fail(loaded.reason)
    if loaded.module is None:
        pytest.skip(loaded.reason)
    USES += 1
    return loaded.module


def plugin_stub(name: str) -> ctypes.c_int:
    """A counter or switch of the stub libnvinfer_plugin: ``dk_plugins_calls`` / ``dk_plugins_result``."""
    bindings()
    return ctypes.c_int.in_dll(_load().plugin_lib, name)


# -- pybind11 signatures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    annotation: str
    has_default: bool


@dataclass(frozen=True)
class Signature:
    params: tuple[Param, ...]  # without self
    returns: str

    def text(self, name: str) -> str:
        return f"{name}({', '.join(p.name + ('=...' if p.has_default else '') for p in self.params)})"


def _split_top(text: str) -> list[str]:
    """``a: X, b: Y[Z, W] = <E.V: 1>`` -> the comma-separated parts outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([<{":
            depth += 1
        elif ch in ")]>}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


def _parse(line: str) -> Signature | None:
    m = re.match(r"^\s*(?:\d+\.\s+)?[\w.]*\((.*)\)\s*->\s*(.+?)\s*$", line)
    if m is None or m.group(1).startswith("*args"):
        return None
    params = []
    for part in _split_top(m.group(1)):
        name, _, rest = part.partition(":")
        annotation, eq, _ = rest.partition(" = ")
        params.append(Param(name.strip(), annotation.strip(), bool(eq)))
    if params and params[0].name in ("self", "arg0"):
        params = params[1:]
    return Signature(tuple(params), m.group(2))


def signatures(obj: Any) -> list[Signature]:
    """The signatures pybind11 wrote into ``obj``'s docstring (a property: its getter's)."""
    if isinstance(obj, property):
        obj = obj.fget
    lines = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    first = _parse(lines[0]) if lines else None
    if first is not None:
        return [first]
    return [s for s in (_parse(line) for line in lines if re.match(r"^\d+\. ", line)) if s is not None]


def resolve(real: Any, annotation: str) -> Any:
    """The real class an annotation names (``tensorrt_bindings.tensorrt.ILogger.Severity``), or None."""
    path = annotation
    for prefix in ("tensorrt_bindings.tensorrt.", "tensorrt."):
        path = path[len(prefix):] if path.startswith(prefix) else path
    if "::" in path:  # a C++ name pybind11 printed for a class it registered later
        path = path.rsplit("::", 1)[1]
        if not hasattr(real, path) and path.startswith("I"):
            path = path[1:]
    obj = real
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, type) else None


def _real_class_of(value: Any) -> type | None:
    """The real TensorRT class ``value`` is (or stands in for, or subclasses: an ``IOutputAllocator`` of
    deploykit's), or None."""
    own = getattr(type(value), "_real", None)
    if own is not None:
        return own
    return next((c for c in type(value).__mro__ if c.__module__.startswith("tensorrt_bindings")), None)


def accepts(real: Any, annotation: str, value: Any) -> bool:
    """Whether pybind11 would take ``value`` for a parameter annotated ``annotation``."""
    if annotation in ("object", "typing.Any"):
        return True
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "bool":
        return isinstance(value, (bool, np.bool_))
    if annotation in ("int", "typing.SupportsInt"):
        return not isinstance(value, (str, bytes, float)) and hasattr(value, "__index__")
    if annotation in ("float", "typing.SupportsFloat"):
        return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if annotation in ("typing_extensions.Buffer", "buffer"):
        try:
            memoryview(value)
        except TypeError:
            return False
        return True
    if annotation == "typing_extensions.CapsuleType":  # void*: a capsule or any pybind11 object
        return value is None or _real_class_of(value) is not None
    if annotation in ("tuple", "list"):
        return isinstance(value, tuple if annotation == "tuple" else list)
    if annotation.startswith("collections.abc.Sequence"):
        return isinstance(value, (tuple, list))
    cls = resolve(real, annotation)
    if cls is None:
        return True  # an annotation these tests do not model: not checked
    if cls is real.Dims and isinstance(value, (tuple, list)):
        try:
            real.Dims(value)
        except TypeError:
            return False
        return True
    mine = _real_class_of(value)
    return mine is not None and issubclass(mine, cls)


def bind(sig: Signature, npos: int, keywords: tuple[str, ...], starred: bool = False) -> str | None:
    """Why a call with ``npos`` positional (``starred``: at least that many) and ``keywords`` does not fit
    ``sig``, or None when it does."""
    names = [p.name for p in sig.params]
    if npos > len(names):
        return f"{npos} positional arguments, at most {len(names)} taken"
    for k in keywords:
        if k not in names:
            return f"no parameter named {k!r}"
        if names.index(k) < npos:
            return f"{k!r} given twice"
    if not starred:
        missing = [p.name for p in sig.params[npos:] if not p.has_default and p.name not in keywords]
        if missing:
            return f"missing {', '.join(missing)}"
    return None


def match_call(real: Any, sigs: list[Signature], args: tuple, kwargs: dict, where: str = "") -> Signature:
    """The first real signature the call binds to, checking values too; TypeError like pybind11's otherwise."""
    why = []
    for sig in sigs:
        problem = bind(sig, len(args), tuple(kwargs))
        if problem is None:
            values = list(zip(sig.params, args)) + [(p, kwargs[p.name]) for p in sig.params if p.name in kwargs]
            bad = [f"{p.name}={v!r} is not {p.annotation}" for p, v in values if not accepts(real, p.annotation, v)]
            if not bad:
                return sig
            problem = "; ".join(bad)
        why.append(problem)
    name = where.rsplit(".", 1)[-1].removesuffix("()")
    raise TypeError(f"{where}: arguments TensorRT's " + " | ".join(s.text(name) for s in sigs) + " does not take: " +
                    " / ".join(why))


# -- stand-ins derived from the real classes ---------------------------------------------------------


def _adapt(real: Any, annotation: str, value: Any, where: str) -> Any:
    """A stand-in's return value as the real one would be: checked against the annotation, tuples -> Dims."""
    cls = resolve(real, annotation)
    if cls is real.Dims and isinstance(value, (tuple, list)):
        return real.Dims(value)
    if cls is not None and value is not None:
        mine = _real_class_of(value)
        assert mine is not None and issubclass(mine, cls), f"stand-in {where} returned {value!r}, TensorRT: {cls}"
    elif annotation in ("int", "bool", "str") and value is not None:
        assert isinstance(value, {"int": int, "bool": bool, "str": str}[annotation]), (where, annotation, value)
    return value


def derived(real: Any, name: str, *, constructed: bool = False) -> Callable[[type], type]:
    """Class decorator: the class stands in for the real ``tensorrt.<name>``.

    Each public member must exist in the real class (methods as methods, properties as properties);
    calls are bound against the real signatures and return values checked; attributes the class does
    not define are refused, naming whether TensorRT has them. ``constructed``: deploykit constructs it
    (``trt.Builder(logger)``), so ``__init__`` is checked against the real constructor too. Stand-in
    state lives in ``_underscore`` attributes.
    """
    real_cls = resolve(real, name)
    assert real_cls is not None, f"TensorRT has no class {name}"

    def wrap(cls: type) -> type:
        for attr, value in list(vars(cls).items()):
            if attr.startswith("_"):
                continue
            where = f"{name}.{attr}"
            assert hasattr(real_cls, attr), f"stand-in {cls.__name__}.{attr}: TensorRT's {name} has no {attr!r}"
            original = inspect.getattr_static(real_cls, attr)
            sigs = signatures(original)
            if isinstance(original, property):
                assert not inspect.isfunction(value), f"stand-in {where}: a property in TensorRT, not a method"
                getter = value.fget if isinstance(value, property) else (lambda self, v=value: v)
                returns = sigs[0].returns if sigs else "object"
                setattr(cls, attr, property(lambda self, g=getter, r=returns, w=where: _adapt(real, r, g(self), w)))
            else:
                assert callable(value), f"stand-in {where}: a method in TensorRT"
                setattr(cls, attr, _checked(real, value, sigs, where))
        if constructed:
            setattr(cls, "__init__", _checked(real, cls.__init__, signatures(real_cls.__init__), f"{name}()"))

        def __getattr__(self, attr: str):
            has = hasattr(real_cls, attr)
            raise AttributeError(f"{name}.{attr}: " + ("the stand-in does not implement it (TensorRT has it)" if has
                                                       else f"TensorRT's {name} has no such attribute"))

        def __setattr__(self, attr: str, value: Any) -> None:
            if not attr.startswith("_") and not hasattr(real_cls, attr):
                raise AttributeError(f"{name}.{attr}: TensorRT's {name} has no such attribute")
            object.__setattr__(self, attr, value)

        cls.__getattr__, cls.__setattr__ = __getattr__, __setattr__
        cls._real = real_cls
        return cls

    return wrap


def _checked(real: Any, fn: Callable, sigs: list[Signature], where: str) -> Callable:
    assert sigs, f"no pybind11 signature for {where}"

    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        sig = match_call(real, sigs, args, kwargs, where)
        result = fn(self, *args, **kwargs)
        return result if where.endswith("()") else _adapt(real, sig.returns, result, where)

    return call


class HostMemory(bytes):
    """Stands in for ``IHostMemory`` (deploykit only takes ``bytes(...)`` of it); ``_real`` is set on first use."""

    _real: Any = None


class _Module(types.ModuleType):
    """``tensorrt`` for deploykit: the stand-in's own names first, then the real module's; nothing else."""

    def __getattr__(self, name: str) -> Any:
        real = self.__dict__["_real"]
        if name.startswith("__") or not hasattr(real, name):
            raise AttributeError(f"module 'tensorrt' has no attribute {name!r} (checked against the real "
                                 f"tensorrt_bindings {real.__version__})")
        return getattr(real, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and not hasattr(self.__dict__["_real"], name):
            raise AttributeError(f"module 'tensorrt' has no attribute {name!r}")
        super().__setattr__(name, value)


@dataclass
class StandIn:
    """A recording ``tensorrt`` module (``.module``, for ``sys.modules``) derived from the real one.

    Records the TensorRT calls in ``calls``. Builds ``y = x + 1`` engines: x, y float32 [-1, 4]; a
    plan with RoiAlign needs the standard plugins registered (``init_libnvinfer_plugins`` in the
    default namespace) before parsing and before deserialising, as TensorRT does.

    ``data_dependent``: the engine's ``y`` is instead the rows of x + 1 whose first value is ≥ 0.5 —
    a shape TensorRT learns while it runs: the context reports ``(-1, 4)``, needs an output allocator for
    ``y`` (``set_output_allocator``) and calls it during ``execute_async_v3`` as TensorRT does
    (``reallocate_output_async`` with the bytes it needs, at least 1, then ``notify_shape``); an enqueue
    being captured into a CUDA graph fails.
    """

    parse_ok: bool = True
    calls: list = field(default_factory=list)
    plugins_ready: bool = False
    contexts: list = field(default_factory=list)
    capturable: bool = True  # False: execute_async_v3 fails while the stream is capturing
    plain_runs: int = 0  # execute_async_v3 calls that ran (not recorded into a graph)
    data_dependent: bool = False
    allocations: list = field(default_factory=list)  # data_dependent: (size, returned address) per request

    def __post_init__(self) -> None:
        real = bindings()
        plugin_stub("dk_plugins_result").value = 1
        HostMemory._real = real.IHostMemory
        self.module = module = _Module("tensorrt")
        module._real = real
        module.__version__ = real.__version__
        rec, fake = self.calls, self
        sig_init = signatures(real.init_libnvinfer_plugins)

        def init_libnvinfer_plugins(*args, **kwargs):
            sig = match_call(real, sig_init, args, kwargs, "tensorrt.init_libnvinfer_plugins")
            values = dict(zip((p.name for p in sig.params), args), **kwargs)
            rec.append(("init_libnvinfer_plugins", values["namespace"]))
            ok = real.init_libnvinfer_plugins(*args, **kwargs)  # the real binding, into the stub library
            fake.plugins_ready |= bool(ok) and values["namespace"] == ""  # the parser looks in the default one
            return ok

        @derived(real, "ITensor")
        class Tensor:
            def __init__(self, name, shape):
                self._name, self._shape = name, shape

            name = property(lambda self: self._name)
            shape = property(lambda self: self._shape)

        @derived(real, "INetworkDefinition")
        class Network:
            num_inputs = 1

            def __init__(self):
                self._uses_roialign = False

            def get_input(self, index):
                return Tensor("x", (-1, 4))

        @derived(real, "IOptimizationProfile")
        class Profile:
            def set_shape(self, input, min, opt, max):  # noqa: A002 - TensorRT's parameter names
                rec.append(("set_shape", input, min, opt, max))

        @derived(real, "ITimingCache")
        class Cache:
            def __init__(self, data):
                self._data = data

            def serialize(self):
                return HostMemory(b"CACHE:" + self._data)

        @derived(real, "IBuilderConfig")
        class Config:  # no set_flag: deploykit sets no builder flag (TensorRT 11 has no precision flags)
            def set_memory_pool_limit(self, pool, pool_size):
                rec.append(("set_memory_pool_limit", pool, pool_size))

            def add_optimization_profile(self, profile):
                rec.append(("add_optimization_profile",))
                return 0

            def create_timing_cache(self, serialized_timing_cache):
                rec.append(("create_timing_cache", bytes(serialized_timing_cache)))
                self._cache = Cache(bytes(serialized_timing_cache))
                return self._cache

            def set_timing_cache(self, cache, ignore_mismatch):
                rec.append(("set_timing_cache", ignore_mismatch))
                return True

            def get_timing_cache(self):
                return self._cache

        @derived(real, "Builder", constructed=True)
        class Builder:
            def __init__(self, logger):
                rec.append(("Builder",))

            def create_network(self, *flags):
                rec.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.append(("build_serialized_network",))
                return HostMemory(b"PLAN:ROIAlign_TRT" if network._uses_roialign else b"PLAN")

        @derived(real, "ParserError")
        class Error:
            def __init__(self, text):
                self._text = text

            def desc(self):
                return self._text

            def __str__(self):
                return self._text + "\nsecond line dropped"

        @derived(real, "OnnxParser", constructed=True)
        class OnnxParser:
            def __init__(self, network, logger):
                self._network, self._errors = network, []

            def parse(self, model, path=None):
                import onnx

                rec.append(("parse", len(model)))
                if not fake.parse_ok:
                    self._errors = [f"node {i}: unsupported op Foo" for i in range(2)]
                elif any(n.op_type == "RoiAlign" for n in onnx.load_from_string(bytes(model)).graph.node):
                    self._network._uses_roialign = True  # the importer asks the registry for ROIAlign_TRT v2
                    if not fake.plugins_ready:
                        self._errors = ["node roi: ROIAlign plugin was not found in the plugin registry!"]
                return not self._errors

            num_errors = property(lambda self: len(self._errors))

            def get_error(self, index):
                return Error(self._errors[index])

        @derived(real, "IExecutionContext")
        class Context:
            def __init__(self):
                self._shape, self._addr, self._threads, self._allocators = None, {}, set(), {}
                fake.contexts.append(self)

            def set_input_shape(self, name, shape):
                self._shape = tuple(shape)
                return shape[0] <= 4

            def get_tensor_shape(self, name):
                return (-1, 4) if fake.data_dependent and name == "y" else self._shape

            def set_output_allocator(self, name, output_allocator):
                rec.append(("set_output_allocator", name))
                self._allocators[name] = output_allocator
                return True

            def set_tensor_address(self, name, memory):
                self._addr[name] = memory
                return True

            def execute_async_v3(self, stream_handle):
                import threading

                self._threads.add(threading.get_ident())
                cudart = sys.modules["cuda.bindings.runtime"]
                if fake.data_dependent:
                    return self._run_data_dependent(stream_handle, stream_handle in getattr(cudart, "capturing", {}))
                n, ax, ay = int(np.prod(self._shape)), self._addr["x"], self._addr["y"]  # fixed now, as in a graph

                def work():
                    x = np.frombuffer((ctypes.c_float * n).from_address(ax), np.float32)
                    y = np.frombuffer((ctypes.c_float * n).from_address(ay), np.float32)
                    y[...] = x + 1

                if stream_handle in getattr(cudart, "capturing", {}):
                    if not fake.capturable:
                        return False
                    cudart.capturing[stream_handle].append(work)  # recorded, not run
                    return True
                fake.plain_runs += 1
                work()
                return True

            def _run_data_dependent(self, stream_handle, capturing):
                allocator = self._allocators.get("y")
                if capturing or allocator is None or "y" in self._addr:
                    return False  # TensorRT: no allocator for a data-dependent output / allocation in a capture
                n = int(np.prod(self._shape))
                x = np.frombuffer((ctypes.c_float * n).from_address(self._addr["x"]), np.float32).reshape(-1, 4)
                y = np.ascontiguousarray(x[x[:, 0] >= 0.5] + 1)
                address = allocator.reallocate_output_async("y", 0, max(y.nbytes, 1), 256, stream_handle)
                fake.allocations.append((max(y.nbytes, 1), address))
                if not address:
                    return False
                ctypes.memmove(address, y.ctypes.data, y.nbytes)
                allocator.notify_shape("y", real.Dims(y.shape))
                fake.plain_runs += 1
                return True

        @derived(real, "ICudaEngine")
        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, index):
                return ["x", "y"][index]

            def get_tensor_shape(self, name):
                return (-1, 4)

            def get_tensor_dtype(self, name):
                return real.DataType.FLOAT

            def get_tensor_mode(self, name):
                return real.TensorIOMode.INPUT if name == "x" else real.TensorIOMode.OUTPUT

            def create_execution_context(self, *args):
                return Context()

        @derived(real, "Runtime", constructed=True)
        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, serialized_engine):
                data = bytes(serialized_engine)
                rec.append(("deserialize_cuda_engine",))
                if data == b"PLAN:ROIAlign_TRT" and not fake.plugins_ready:
                    return None  # TensorRT: "getPluginCreator could not find plugin ROIAlign_TRT version 2"
                return Engine() if data in (b"PLAN", b"PLAN:ROIAlign_TRT") else None

        module.init_libnvinfer_plugins = init_libnvinfer_plugins
        module.Builder, module.OnnxParser, module.Runtime = Builder, OnnxParser, Runtime


# -- the names deploykit uses, found with ast --------------------------------------------------------

MODULE = ("module",)
_BUILTIN_TYPES = {"str", "bytes", "int", "float", "bool", "tuple", "list", "dict"}


@dataclass(frozen=True)
class Use:
    """One use of the TensorRT API in deploykit's source: ``owner.name`` (owner ``tensorrt`` or a real
    class path), where, and for a call its positional count, keyword names and known argument types."""

    where: str
    owner: str
    name: str
    call: tuple | None = None  # (npos, keywords, starred, arg types per position, per keyword)

    @property
    def key(self) -> str:
        return f"{self.owner}.{self.name}"


@dataclass
class _Def:
    module: str
    qual: str
    node: ast.FunctionDef | ast.ClassDef
    cls: str | None = None  # the class qualname of a method


class _Inference:
    """Which expressions of deploykit's TensorRT code hold the ``tensorrt`` module or its objects.

    Flow-insensitive and iterated to a fixpoint: local names, ``self.x`` attributes, function returns
    and the parameters of deploykit's own functions and classes (from their call sites, across the
    modules in :data:`SOURCES`), with types from the real module's classes and docstring signatures.
    """

    def __init__(self, real: Any, sources: dict[str, str]):
        self.real = real
        self.defs: dict[str, _Def] = {}
        self.names: dict[str, dict[str, str]] = {}  # module -> top-level name -> def qual
        self.trees: dict[str, ast.Module] = {}
        self.files: dict[str, str] = {}
        for path, text in sources.items():
            mod = path.removesuffix(".py").replace("/", ".")
            self.trees[mod], self.files[mod] = ast.parse(text, path), path
        for mod, tree in self.trees.items():
            table = self.names.setdefault(mod, {})
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    qual = f"{mod}:{node.name}"
                    self.defs[qual], table[node.name] = _Def(mod, qual, node), qual
                    if isinstance(node, ast.ClassDef):
                        for item in node.body:
                            if isinstance(item, ast.FunctionDef):
                                self.defs[f"{qual}.{item.name}"] = _Def(mod, f"{qual}.{item.name}", item, qual)
        for mod, tree in self.trees.items():  # from .x import f, across the analysed modules
            for node in tree.body:
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = mod.split(".")[:-node.level] + (node.module.split(".") if node.module else [])
                    for alias in node.names:
                        target = self.names.get(".".join(base), {}).get(alias.name)
                        if target:
                            self.names[mod][alias.asname or alias.name] = target
        self.env: dict[str, dict[str, set]] = {q: {} for q in self.defs}
        self.attrs: dict[str, dict[str, set]] = {}
        self.returns: dict[str, set] = {}
        for qual, d in self.defs.items():
            if d.cls and isinstance(d.node, ast.FunctionDef) and d.node.args.args:
                self.env[qual][d.node.args.args[0].arg] = {("local_inst", d.cls)}
        self.uses: list[Use] = []
        for _ in range(30):
            before = self._snapshot()
            self._pass(record=False)
            if self._snapshot() == before:
                break
        self._pass(record=True)

    def _snapshot(self):
        return (repr(sorted((q, sorted((k, sorted(v)) for k, v in e.items())) for q, e in self.env.items())),
                repr(sorted((q, sorted((k, sorted(v)) for k, v in e.items())) for q, e in self.attrs.items())),
                repr(sorted((q, sorted(v)) for q, v in self.returns.items())))

    # -- types of expressions --

    def _real_attr(self, owner: Any, path: str, attr: str) -> set:
        if not hasattr(owner, attr):
            return set()
        static = inspect.getattr_static(owner, attr, None)
        value = getattr(owner, attr)
        if isinstance(static, property):
            sigs = signatures(static)
            cls = resolve(self.real, sigs[0].returns) if sigs else None
            return {("inst", self._path(cls))} if cls is not None else set()
        if isinstance(value, type):
            return {("class", self._path(value))}
        if callable(value):
            return {("method", path, attr)} if path != "tensorrt" else {("func", attr)}
        cls = _real_class_of(value)
        return {("inst", self._path(cls))} if cls is not None else set()

    def _path(self, cls: type) -> str:
        return cls.__qualname__

    def _cls(self, path: str) -> Any:
        obj = self.real
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    def type_of(self, expr: ast.AST, scope: str) -> set:
        d = self.defs[scope]
        if isinstance(expr, ast.Name):
            found = set(self.env[scope].get(expr.id, set()))
            if expr.id in self.names[d.module] and not found:
                found.add(("local", self.names[d.module][expr.id]))
            return found
        if isinstance(expr, ast.Attribute):
            out = set()
            for t in self.type_of(expr.value, scope):
                if t == MODULE:
                    out |= self._real_attr(self.real, "tensorrt", expr.attr)
                elif t[0] in ("class", "inst"):
                    out |= self._real_attr(self._cls(t[1]), t[1], expr.attr)
                elif t[0] == "local_inst":
                    out |= self.attrs.get(t[1], {}).get(expr.attr, set())
                    if f"{t[1]}.{expr.attr}" in self.defs:
                        out.add(("local", f"{t[1]}.{expr.attr}"))
            return out
        if isinstance(expr, ast.Call):
            out = set()
            for t in self.type_of(expr.func, scope):
                if t[0] == "class":
                    out.add(("inst", t[1]))
                elif t[0] in ("func", "method"):
                    obj = getattr(self.real, t[1]) if t[0] == "func" else getattr(self._cls(t[1]), t[2])
                    for sig in signatures(obj):
                        cls = resolve(self.real, sig.returns)
                        if cls is not None:
                            out.add(("inst", self._path(cls)))
                elif t[0] == "local":
                    target = self.defs[t[1]]
                    if isinstance(target.node, ast.ClassDef):
                        out.add(("local_inst", t[1]))
                    else:
                        out |= self.returns.get(t[1], set())
            return out
        if isinstance(expr, ast.IfExp):
            body = self.type_of(expr.body, scope)
            test = expr.test  # `x if isinstance(x, str) else ...`: that x is a str there, no TensorRT object
            if (isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "isinstance"
                    and isinstance(expr.body, ast.Name) and isinstance(test.args[0], ast.Name)
                    and test.args[0].id == expr.body.id and isinstance(test.args[1], ast.Name)
                    and test.args[1].id in _BUILTIN_TYPES):
                body = set()
            return body | self.type_of(expr.orelse, scope)
        if isinstance(expr, ast.BoolOp):
            return set().union(*(self.type_of(v, scope) for v in expr.values))
        return set()

    # -- one pass over every function --

    def _pass(self, record: bool) -> None:
        for qual, d in self.defs.items():
            if not isinstance(d.node, ast.FunctionDef):
                continue
            env = self.env[qual]
            for node in ast.walk(d.node):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name == "tensorrt":
                            env.setdefault(alias.asname or alias.name, set()).add(MODULE)
                elif isinstance(node, ast.Assign):
                    value = self.type_of(node.value, qual)
                    for target in node.targets:
                        self._assign(target, value, qual)
                elif isinstance(node, ast.Return) and node.value is not None:
                    self.returns.setdefault(qual, set()).update(self.type_of(node.value, qual))
                elif isinstance(node, ast.Call):
                    self._call(node, qual, record)
                if record and isinstance(node, ast.Attribute):
                    for t in self.type_of(node.value, qual):
                        if t == MODULE or t[0] in ("class", "inst"):
                            owner = "tensorrt" if t == MODULE else t[1]
                            self.uses.append(Use(f"{self.files[d.module]}:{node.lineno}", owner, node.attr))

    def _assign(self, target: ast.AST, value: set, scope: str) -> None:
        if not value:
            return
        if isinstance(target, ast.Name):
            self.env[scope].setdefault(target.id, set()).update(value)
        elif isinstance(target, ast.Attribute):
            for t in self.type_of(target.value, scope):
                if t[0] == "local_inst":
                    self.attrs.setdefault(t[1], {}).setdefault(target.attr, set()).update(value)

    def _call(self, node: ast.Call, scope: str, record: bool) -> None:
        positional = [a for a in node.args if not isinstance(a, ast.Starred)]
        starred = len(positional) != len(node.args)
        keywords = tuple(k.arg for k in node.keywords if k.arg is not None)
        arg_types = [self.type_of(a, scope) for a in positional]
        kw_types = {k.arg: self.type_of(k.value, scope) for k in node.keywords if k.arg is not None}
        for t in self.type_of(node.func, scope):
            if t[0] == "local":
                target = self.defs[t[1]]
                if isinstance(target.node, ast.ClassDef):
                    init = f"{t[1]}.__init__"
                    target, offset = self.defs.get(init), 1
                else:
                    offset = 1 if target.cls else 0
                if target is None or starred:
                    continue
                params = [a.arg for a in target.node.args.args][offset:]
                for name, types_ in list(zip(params, arg_types)) + list(kw_types.items()):
                    if types_ and name in params:
                        self.env[target.qual].setdefault(name, set()).update(types_)
            elif record and t[0] in ("class", "func", "method"):
                if t[0] == "class":
                    owner, name = t[1], "__init__"
                elif t[0] == "func":
                    owner, name = "tensorrt", t[1]
                else:
                    owner, name = t[1], t[2]
                where = f"{self.files[self.defs[scope].module]}:{node.lineno}"
                self.uses.append(Use(where, owner, name, (len(positional), keywords, starred, tuple(
                    frozenset(a) for a in arg_types), tuple(sorted((k, frozenset(v)) for k, v in kw_types.items())))))


def api_uses(real: Any, sources: dict[str, str] | None = None) -> list[Use]:
    """Every use of the ``tensorrt`` module in ``sources`` ({path: text}; default: :data:`SOURCES`)."""
    if sources is None:
        sources = {p: (REPO / p).read_text() for p in SOURCES}
    return _Inference(real, sources).uses


def api_problems(real: Any, uses: list[Use]) -> list[str]:
    """What in ``uses`` the real module does not have or would not accept (one line each)."""
    problems = []
    for use in uses:
        owner = real if use.owner == "tensorrt" else resolve(real, use.owner)
        label = f"{use.where}: {use.key}"
        if not hasattr(owner, use.name):
            problems.append(f"{label}: TensorRT {real.__version__} has no {use.name!r} in {use.owner}")
            continue
        if use.call is None:
            continue
        npos, keywords, starred, arg_types, kw_types = use.call
        sigs = signatures(inspect.getattr_static(owner, use.name) if use.name != "__init__" else owner.__init__)
        if not sigs:
            try:  # a function the module defines in Python
                inspect.signature(getattr(owner, use.name)).bind(*range(npos), **dict.fromkeys(keywords))
            except TypeError as e:
                problems.append(f"{label}: {e}")
            continue
        fits = []
        for sig in sigs:
            why = bind(sig, npos, keywords, starred)
            if why is None:
                typed = list(zip(sig.params, arg_types)) + [(p, t) for p in sig.params for k, t in kw_types
                                                            if k == p.name]
                for param, types_ in typed:
                    cls = resolve(real, param.annotation)
                    for t in types_:
                        if t[0] == "inst" and cls is not None and not issubclass(resolve(real, t[1]), cls) and \
                                not (cls is real.Dims):
                            why = f"{param.name} gets a {t[1]}, TensorRT wants {param.annotation}"
            fits.append(why)
        if all(f is not None for f in fits):
            problems.append(f"{label}: {' / '.join(fits)} ({' | '.join(s.text(use.name) for s in sigs)})")
    return problems


# -- cuda-python and the toy model -------------------------------------------------------------------


class FakeCudart(types.ModuleType):
    """cuda.bindings.runtime on host memory (``count`` devices): enough to drive TensorRTSession on the CPU.

    CUDA graphs: a capturing stream records work instead of running it; a graph exec replays it.
    """

    def __init__(self, count: int = 1):
        super().__init__("cuda.bindings.runtime")
        import itertools
        import threading

        self.allocs: dict[int, object] = {}
        self.mallocs = 0

        def alloc(n, *stream):
            buf = ctypes.create_string_buffer(n)
            self.allocs[ctypes.addressof(buf)] = buf
            self.mallocs += 1
            return 0, ctypes.addressof(buf)

        def memcpy(dst, src, n, kind, stream):
            ctypes.memmove(dst, src, n)
            return (0,)

        streams, handles = itertools.count(7), itertools.count(1000)
        self.cudaGetDeviceCount = lambda: (0, count)
        self.cudaGetDeviceProperties = lambda dev: (0, types.SimpleNamespace(name=b"Fake GPU\0\0", major=8, minor=9))
        self.cudaStreamCreate = lambda: (0, next(streams))
        self.cudaMallocAsync, self.cudaMallocHost = alloc, alloc
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
        self.cudaMemcpyAsync = memcpy
        ok = lambda *a: (0,)  # noqa: E731
        self.cudaStreamSynchronize = self.cudaFreeAsync = self.cudaFreeHost = self.cudaStreamDestroy = ok

        lock = threading.Lock()
        self.graph_calls: list[tuple] = []  # (function name, handle or mode)
        self.capturing: dict[int, list] = {}  # stream -> recorded work
        self.graphs: dict[int, list] = {}  # live cudaGraph_t -> work
        self.execs: dict[int, list] = {}  # live cudaGraphExec_t -> work
        self.end_capture_error = False  # make cudaStreamEndCapture report an invalidated capture
        self.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal="Global",
                                                           cudaStreamCaptureModeThreadLocal="ThreadLocal",
                                                           cudaStreamCaptureModeRelaxed="Relaxed")

        def begin(stream, mode):
            assert stream not in self.capturing, "capture begun twice on one stream"
            with lock:
                self.graph_calls.append(("cudaStreamBeginCapture", mode))
                self.capturing[stream] = []
            return (0,)

        def end(stream):
            with lock:
                work = self.capturing.pop(stream)
                self.graph_calls.append(("cudaStreamEndCapture", stream))
                if self.end_capture_error:
                    return types.SimpleNamespace(value=901, name="cudaErrorStreamCaptureInvalidated"), None
                h = next(handles)
                self.graphs[h] = work
            return 0, h

        def instantiate(graph, flags):
            with lock:
                h = next(handles)
                self.execs[h] = self.graphs[graph]
                self.graph_calls.append(("cudaGraphInstantiate", graph))
            return 0, h

        def launch(graph_exec, stream):
            assert stream not in self.capturing
            with lock:
                self.graph_calls.append(("cudaGraphLaunch", graph_exec))
                work = self.execs[graph_exec]
            for fn in work:
                fn()
            return (0,)

        def destroy(kind, table):
            def fn(h):
                with lock:
                    self.graph_calls.append((kind, h))
                    del table[h]  # KeyError on a double destroy
                return (0,)
            return fn

        self.cudaStreamBeginCapture, self.cudaStreamEndCapture = begin, end
        self.cudaGraphInstantiate, self.cudaGraphLaunch = instantiate, launch
        self.cudaGraphExecDestroy = destroy("cudaGraphExecDestroy", self.execs)
        self.cudaGraphDestroy = destroy("cudaGraphDestroy", self.graphs)

    def count(self, name: str) -> int:
        return sum(1 for c in self.graph_calls if c[0] == name)


def install_cuda(monkeypatch, cudart: types.ModuleType) -> None:
    """Make ``cuda.bindings.runtime`` import as ``cudart`` for the test."""
    cuda, cuda_bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, cuda_bindings.runtime = cuda_bindings, cudart
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", cuda_bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)


def make_onnx(tmp_path: Path, name: str = "m") -> Path:
    """y = x + 1, x float32 [batch, 4], with a deploykit manifest (batch 1..4)."""
    import onnx
    from onnx import TensorProto, helper

    from deploykit.manifest import write_manifest

    path = tmp_path / f"{name}.onnx"
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    write_manifest(path, {"kind": "test", "model": {"name": "add1"},
                          "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
                          "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}],
                          "batch": {"dynamic": True, "min": 1, "opt": 2, "max": 4}})
    return path


def one_line(message: str, *parts: str) -> None:
    assert "\n" not in message.strip(), message
    for part in parts:
        assert part in message, (part, message)


def install_stand_ins(monkeypatch, count: int = 1) -> tuple[StandIn, FakeCudart]:
    """Make ``tensorrt`` a new :class:`StandIn`'s module and cuda-python a :class:`FakeCudart` for the test."""
    fake, cudart = StandIn(), FakeCudart(count)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    install_cuda(monkeypatch, cudart)
    return fake, cudart


def built_plan(tmp_path: Path, monkeypatch) -> tuple[Path, StandIn, FakeCudart]:
    """``(plan, stand_in, cudart)``: make_onnx's model built into m_trt.plan with the stand-ins installed."""
    from deploykit.engine.build import build_engine

    fake, cudart = install_stand_ins(monkeypatch)
    plan = build_engine(make_onnx(tmp_path), tmp_path / "m_trt.plan", echo=lambda m: None)
    return plan, fake, cudart
