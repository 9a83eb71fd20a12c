"""The TensorRT backend of deploykit.runtime (deploykit/runtime/tensorrt.py), and TensorRT's real Python module.

On the CPU: the pure logic (buffer sizes, version/GPU checks, dtype table); every TensorRT name and call
deploykit's code uses, checked against TensorRT's real Python module (`tensorrt_bindings` from the
tensorrt-cu13-bindings wheel, imported over stub libraries: tests/trt_real.py); what is missing without
TensorRT; and the session and its CUDA graphs against a recording `tensorrt` derived from that module plus
a cuda-python stand-in on host memory. With TensorRT and a GPU (markers `tensorrt`, `gpu`): build the
demo detector export and compare the engine with ONNX Runtime.
"""

from __future__ import annotations

import sys
import types
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from trt_real import (
    SOURCES,
    WHEEL,
    FakeCudart,
    RealBindingsUsed,
    StandIn,
    api_problems,
    api_uses,
    bindings,
    built_plan,
    derived,
    install_cuda,
    make_onnx,
    one_line,
)

from deploykit.cli import main
from deploykit.errors import BadInput
from deploykit.manifest import read_manifest, write_manifest
from deploykit.runtime import load
from deploykit.runtime.tensorrt import (
    INSTALL_HINT,
    TRT_DTYPES,
    buffer_nbytes,
    check_compatible,
    missing_requirement,
    numpy_dtype,
)


@pytest.fixture()
def real_trt():
    """TensorRT's real Python module (``tensorrt_bindings``) over stub libraries; skips where unavailable."""
    return bindings()


@pytest.fixture()
def fake_plan(tmp_path, monkeypatch):
    """``(plan, stand_in, cudart)``: y = x + 1 built with the stand-ins, which stay installed."""
    return built_plan(tmp_path, monkeypatch)


# -- pure functions -----------------------------------------------------------

def test_buffer_nbytes():
    assert buffer_nbytes((2, 3, 4), np.float32) == 96
    assert buffer_nbytes((2, 3, 4), np.dtype(np.float16)) == 48
    assert buffer_nbytes((5,), types.SimpleNamespace(name="INT64")) == 40
    assert buffer_nbytes((0, 4), np.float32) == 0
    assert buffer_nbytes((), np.int32) == 4  # scalar
    with pytest.raises(BadInput):
        buffer_nbytes((-1, 4), np.float32)


def test_dtype_table():
    assert numpy_dtype("FLOAT") == np.float32
    assert numpy_dtype("DataType.HALF") == np.float16
    assert numpy_dtype(types.SimpleNamespace(name="INT64")) == np.int64
    assert numpy_dtype(types.SimpleNamespace(name="BOOL")) == np.bool_
    assert set(TRT_DTYPES) == {"FLOAT", "HALF", "INT8", "INT32", "INT64", "BOOL", "UINT8"}
    with pytest.raises(BadInput) as info:
        numpy_dtype(types.SimpleNamespace(name="BF16"), "logits")
    one_line(str(info.value), "'logits'", "BF16")


def test_compatibility_check():
    m = {"tensorrt": {"version": "11.4.0", "compute_capability": "8.9", "gpu": "NVIDIA L4"}}
    check_compatible(m, "11.4.0", "8.9")  # same: fine
    check_compatible({}, "11.4.0", "8.9")  # no tensorrt section: TensorRT itself decides
    check_compatible(None, "11.4.0", "8.9")
    with pytest.raises(BadInput) as info:
        check_compatible(m, "11.5.1", "8.9", "m.plan")
    one_line(str(info.value), "m.plan", "TensorRT 11.5.1", "built by TensorRT 11.4.0")
    with pytest.raises(BadInput) as info:
        check_compatible(m, "11.4.0", "9.0", "m.plan")
    one_line(str(info.value), "compute capability 9.0", "compute capability 8.9", "NVIDIA L4")


# -- TensorRT's real Python module --------------------------------------------------------------------

def test_real_tensorrt_bindings_are_used(real_trt):
    """The module is TensorRT's own (the wheel's pybind11 tensorrt.so) over stubs: no GPU work can run."""
    assert real_trt.__name__ == "tensorrt_bindings" and real_trt.__version__.startswith("11.")
    assert real_trt.tensorrt.__file__.endswith(".so")
    with pytest.raises(TypeError, match="nullptr"):  # the stub factory: no TensorRT library behind it
        real_trt.Builder(real_trt.Logger(real_trt.Logger.WARNING))
    # TensorRT 11 is strongly typed: no precision builder flags (deploykit's graphs carry the precision)
    assert not {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4"} & set(real_trt.BuilderFlag.__members__)


def test_every_tensorrt_name_and_call_deploykit_uses_is_in_the_real_module(real_trt):
    uses = api_uses(real_trt)
    # found in build.py and runtime/tensorrt.py (precision/trt_cache.py uses none): an inference that
    # loses track of the module or its objects after a refactoring fails here rather than checking less
    assert {u.where.split(":")[0] for u in uses} == {s for s in SOURCES if "trt_cache" not in s}
    called = {u.key for u in uses if u.call}
    assert {"IBuilderConfig.set_memory_pool_limit", "IBuilderConfig.set_timing_cache", "IOptimizationProfile.set_shape",
            "IExecutionContext.execute_async_v3", "IExecutionContext.set_input_shape", "tensorrt.init_libnvinfer_plugins",
            "Logger.__init__", "Runtime.deserialize_cuda_engine", "OnnxParser.parse",
            "Builder.build_serialized_network"} <= called
    names = {u.key for u in uses}
    assert {"Logger.VERBOSE", "Logger.WARNING", "MemoryPoolType.WORKSPACE", "TensorIOMode.INPUT"} <= names
    assert api_problems(real_trt, uses) == []
    warnings.warn(RealBindingsUsed(
        f"TensorRT's real Python module tensorrt_bindings {real_trt.__version__} ({WHEEL}, over stub libraries): "
        f"the {len(names)} TensorRT names deploykit uses exist, its calls of {len(called)} of them match the real "
        "signatures; build and runtime flows ran on stand-ins checked against it"))


def test_the_api_check_finds_calls_tensorrt_would_refuse(real_trt):
    source = """
def build(logger_level):
    import tensorrt as trt
    logger = trt.Logger(logger_level)
    builder = trt.Builder(logger)
    network = builder.create_network(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    config = builder.create_builder_config()
    config.max_workspace_size = 1 << 30
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size=1 << 30)
    config.set_timing_cache(config.create_timing_cache(b""))
    builder.create_optimization_profile().set_shape("x", (1, 4), (2, 4))
    context = trt.Runtime(logger).deserialize_cuda_engine(b"").create_execution_context()
    context.execute_async_v2([], 0)
    context.execute_async_v3(stream=0)
    trt.init_libnvinfer_plugins(logger)
    return builder.build_serialized_network(config, network)
"""
    problems = api_problems(real_trt, api_uses(real_trt, {"snippet.py": source}))
    found = {int(p.split(":")[1]): p for p in problems}
    assert sorted(found) == [6, 8, 9, 10, 11, 13, 14, 15, 16], problems
    assert "no 'EXPLICIT_BATCH'" in found[6] and "no 'max_workspace_size'" in found[8]
    assert "no parameter named 'size'" in found[9] and "set_memory_pool_limit(pool, pool_size)" in found[9]
    assert "missing ignore_mismatch" in found[10] and "missing max" in found[11]
    assert "no 'execute_async_v2'" in found[13] and "execute_async_v3(stream_handle)" in found[14]
    assert "missing namespace" in found[15] and "gets a INetworkDefinition" in found[16]


def test_stand_ins_refuse_what_tensorrt_lacks(real_trt):
    trt = StandIn().module
    config = trt.Builder(trt.Logger()).create_builder_config()
    with pytest.raises(TypeError, match=r"set_memory_pool_limit\(pool, pool_size\) does not take.*'size'"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size=1)
    with pytest.raises(TypeError, match="pool='WORKSPACE' is not .*MemoryPoolType"):
        config.set_memory_pool_limit("WORKSPACE", 1)
    with pytest.raises(AttributeError, match="has no such attribute"):
        config.set_fp16()
    with pytest.raises(AttributeError, match="stand-in does not implement"):
        config.set_flag(trt.BuilderFlag.TF32)  # deploykit sets no builder flag
    with pytest.raises(AttributeError, match="checked against the real tensorrt_bindings"):
        trt.EfficientNMS
    with pytest.raises(AssertionError, match="has no 'enqueue'"):
        @derived(real_trt, "IExecutionContext")
        class Context:
            def enqueue(self, batch_size, bindings, stream):
                pass


def test_dtype_table_covers_tensorrt_data_types(real_trt):
    """numpy has no BF16, FP8, INT4, FP4 or E8M0: those and only those are refused at the I/O."""
    assert set(real_trt.DataType.__members__) - set(TRT_DTYPES) == {"BF16", "FP8", "INT4", "FP4", "E8M0"}
    for name, dtype in TRT_DTYPES.items():
        assert numpy_dtype(real_trt.DataType.__members__[name]) == dtype


# -- what is missing ------------------------------------------------------------

def test_missing_requirement_names_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert missing_requirement() == "no `tensorrt` Python package"
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    assert "cuda-python" in missing_requirement()
    install_cuda(monkeypatch, FakeCudart(count=0))
    assert "no NVIDIA GPU" in missing_requirement()
    install_cuda(monkeypatch, FakeCudart(count=1))
    assert missing_requirement() is None


def test_load_plan_without_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    path = tmp_path / "x.plan"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(BadInput) as info:
        load(path)
    one_line(str(info.value), "TensorRT engine", "x.plan", "tensorrt", INSTALL_HINT)
    assert info.value.__context__ is None or info.value.__suppress_context__


# -- the session against the stand-ins (host memory as "device") -----------------------------------------

def test_session_runs_and_reuses_buffers(fake_plan):
    plan, fake, cudart = fake_plan
    session = load(plan)
    assert type(session).__name__ == "TensorRTSession"
    assert [(s.name, str(s.dtype), s.shape) for s in session.inputs] == [("x", "float32", ("batch", 4))]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(session.run({"x": x})["y"], x + 1)
    mallocs = cudart.mallocs
    for _ in range(3):
        np.testing.assert_array_equal(session.run({"x": x * 2})["y"], x * 2 + 1)
    assert cudart.mallocs == mallocs  # same shape: buffers reused
    small = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(session.run({"x": small})["y"], small + 1)
    assert cudart.mallocs == mallocs  # smaller shape fits the buffers already there
    big = np.ones((4, 4), np.float32)
    np.testing.assert_array_equal(session.run({"x": big})["y"], big + 1)
    with pytest.raises(BadInput):  # batch beyond the manifest range: refused before the GPU
        session.run({"x": np.ones((5, 4), np.float32)})
    session.close()
    with pytest.raises(BadInput):
        session.run({"x": x})


def test_session_one_context_per_thread(fake_plan, run_in_threads):
    plan, fake, _ = fake_plan
    session = load(plan)
    feeds = [np.full((1 + i % 4, 4), i, np.float32) for i in range(8)]

    def worker(t):
        for i in range(20):
            k = (t + i) % len(feeds)
            np.testing.assert_array_equal(session.run({"x": feeds[k]})["y"], feeds[k] + 1)

    run_in_threads(worker, 4)
    assert len(fake.contexts) == 4 and all(len(c._threads) == 1 for c in fake.contexts)
    session.close()


def test_session_refuses_other_version_gpu_and_corrupt_plan(fake_plan):
    plan, fake, _ = fake_plan
    manifest = read_manifest(plan)
    built, fake.module.__version__ = fake.module.__version__, "11.99.0"
    with pytest.raises(BadInput) as info:
        load(plan)
    one_line(str(info.value), "m_trt.plan", "TensorRT 11.99.0", f"built by TensorRT {built}")
    fake.module.__version__ = built
    manifest["tensorrt"]["compute_capability"] = "9.0"
    write_manifest(plan, manifest)
    with pytest.raises(BadInput) as info:
        load(plan)
    one_line(str(info.value), "compute capability 8.9", "built for compute capability 9.0")
    plan.write_bytes(b"PLA")  # truncated
    manifest["tensorrt"]["compute_capability"] = "8.9"
    write_manifest(plan, manifest)
    with pytest.raises(BadInput) as info:
        load(plan)
    one_line(str(info.value), "m_trt.plan", "cannot deserialize")


# -- CUDA graphs (stand-in cuda.bindings records capture, instantiate, launch, destroy) ----------


def _x(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 4)).astype(np.float32)


def test_cuda_graph_captured_once_per_shape_then_launched(fake_plan):
    plan, fake, cudart = fake_plan
    session = load(plan, cuda_graph=True)
    for i in range(4):  # new values each run: the replayed graph reads the current input buffer
        x = _x(2, i)
        np.testing.assert_array_equal(session.run({"x": x})["y"], x + 1)
    assert [c[0] for c in cudart.graph_calls] == [
        "cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiate",
        "cudaGraphLaunch", "cudaGraphLaunch", "cudaGraphLaunch"]
    assert cudart.graph_calls[0][1] == "ThreadLocal"  # other threads' CUDA calls stay legal during capture
    assert fake.plain_runs == 1  # the first run enqueues once before capturing; the rest are graph launches
    assert len(cudart.graphs) == len(cudart.execs) == 1
    session.close()


def test_cuda_graph_recaptured_when_the_shape_changes(fake_plan):
    plan, fake, cudart = fake_plan
    session = load(plan, cuda_graph=True)
    for batch in (2, 2, 1, 1, 2):
        x = _x(batch, batch)
        np.testing.assert_array_equal(session.run({"x": x})["y"], x + 1)  # a stale graph would compute 2 rows
    assert cudart.count("cudaStreamBeginCapture") == 3 and cudart.count("cudaGraphInstantiate") == 3
    assert cudart.count("cudaGraphLaunch") == 2 and fake.plain_runs == 3
    assert cudart.count("cudaGraphExecDestroy") == cudart.count("cudaGraphDestroy") == 2  # old ones freed
    assert len(cudart.graphs) == len(cudart.execs) == 1
    session.close()


def test_cuda_graph_freed_on_close_and_per_thread(fake_plan, run_in_threads):
    plan, fake, cudart = fake_plan
    session = load(plan, cuda_graph=True)

    def worker(t):
        for i in range(5):
            x = _x(1 + t % 2, 10 * t + i)
            np.testing.assert_array_equal(session.run({"x": x})["y"], x + 1)

    run_in_threads(worker, 3)
    assert cudart.count("cudaStreamBeginCapture") == 3  # one context, stream and graph per thread
    assert cudart.count("cudaGraphLaunch") == 3 * 4
    assert len(cudart.execs) == 3
    session.close()
    assert cudart.graphs == {} and cudart.execs == {}  # every graph and exec destroyed
    destroyed = [c for c in cudart.graph_calls if c[0].endswith("Destroy")]
    assert len(destroyed) == 6
    assert all(a[0] == "cudaGraphExecDestroy" and b[0] == "cudaGraphDestroy"
               for a, b in zip(destroyed[::2], destroyed[1::2]))  # the exec before its graph


@pytest.mark.parametrize("how", ["enqueue-fails", "end-capture-error"])
def test_cuda_graph_capture_failure_falls_back_with_one_warning(fake_plan, how):
    import warnings

    plan, fake, cudart = fake_plan
    if how == "enqueue-fails":
        fake.capturable = False
    else:
        cudart.end_capture_error = True
    session = load(plan, cuda_graph=True)
    x = _x(2, 0)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed.*without CUDA graphs"):
        np.testing.assert_array_equal(session.run({"x": x})["y"], x + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        for batch in (2, 1, 2):
            x = _x(batch, batch)
            np.testing.assert_array_equal(session.run({"x": x})["y"], x + 1)
    assert cudart.count("cudaStreamBeginCapture") == cudart.count("cudaStreamEndCapture") == 1  # not retried
    assert cudart.capturing == {}  # the stream left capture mode
    assert cudart.count("cudaGraphLaunch") == 0 and fake.plain_runs == 4
    assert cudart.graphs == {} and cudart.execs == {}  # nothing leaked
    assert len(session.capture_failures) == 1
    session.close()


def test_without_cuda_graph_no_capture(fake_plan):
    plan, fake, cudart = fake_plan
    session = load(plan)
    for _ in range(3):
        session.run({"x": _x(2, 0)})
    assert cudart.graph_calls == [] and fake.plain_runs == 3
    session.close()


# -- data-dependent output shapes (the output allocator) -----------------------------------------------


def test_data_dependent_output_through_the_output_allocator(fake_plan):
    """An output TensorRT sizes while it runs (pasted masks, one per detection): the session installs its
    allocator for it once per context, copies back the notified shape, reuses and grows the memory."""
    plan, fake, cudart = fake_plan
    fake.data_dependent = True
    session = load(plan)
    runs = [np.array([[0.9, 1, 2, 3], [0.1, 0, 0, 0], [0.7, 4, 5, 6]], np.float32),  # 2 rows selected
            np.array([[0.6, 7, 7, 7]], np.float32),  # 1: fits the memory already there
            np.zeros((2, 4), np.float32),  # none: an empty output (TensorRT still asks for >= 1 byte)
            np.full((4, 4), 0.8, np.float32)]  # 4: more than before, the buffer grows
    for x in runs:
        y = session.run({"x": x})["y"]
        np.testing.assert_array_equal(y, x[x[:, 0] >= 0.5] + 1)
        assert y.shape == (int((x[:, 0] >= 0.5).sum()), 4) and y.dtype == np.float32
    assert [c for c in fake.calls if c[0] == "set_output_allocator"] == [("set_output_allocator", "y")]
    sizes, addresses = zip(*fake.allocations)
    assert sizes == (32, 16, 1, 64) and addresses[0] == addresses[1] == addresses[2] != addresses[3]
    session.close()


def test_data_dependent_output_runs_without_cuda_graphs_with_one_warning(fake_plan):
    plan, fake, cudart = fake_plan
    fake.data_dependent = True
    session = load(plan, cuda_graph=True)
    x = np.array([[0.9, 1, 2, 3], [0.2, 0, 0, 0]], np.float32)
    with pytest.warns(RuntimeWarning, match="capture skipped: output.s. y have a data-dependent shape"):
        np.testing.assert_array_equal(session.run({"x": x})["y"], x[:1] + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(session.run({"x": x})["y"], x[:1] + 1)
    assert cudart.count("cudaStreamBeginCapture") == 0 and fake.plain_runs == 2
    session.close()


def test_output_allocator_overrides_what_tensorrt_calls(real_trt):
    """deploykit's allocator is a real ``tensorrt.IOutputAllocator`` and overrides the methods, with the
    parameters, that TensorRT's class documents for Python implementations."""
    import inspect
    import re

    from deploykit.runtime.tensorrt import _output_allocator

    allocator = _output_allocator(real_trt, stream=None)
    assert isinstance(allocator, real_trt.IOutputAllocator)
    documented = dict(re.findall(r"def (\w+)\(self, ([^)]*)\)", real_trt.IOutputAllocator.__doc__))
    assert set(documented) == {"reallocate_output", "reallocate_output_async", "notify_shape"}
    for name, params in documented.items():
        mine = list(inspect.signature(getattr(allocator, name)).parameters)
        assert len(mine) == len(params.split(",")), (name, mine, params)


def test_cuda_graph_refused_for_onnx(tmp_path):
    src = make_onnx(tmp_path)
    with pytest.raises(BadInput) as info:
        load(src, cuda_graph=True)
    one_line(str(info.value), "cuda_graph", "TensorRT engine", "'.onnx'")
    r = CliRunner().invoke(main, ["bench", str(src), "--cuda-graph", "--iterations", "1"])
    assert r.exit_code == 2 and "--cuda-graph" in r.output and "TensorRT engine" in r.output


# -- real TensorRT on a GPU --------------------------------------------------------

@pytest.fixture(scope="module")
def demo_engine(tmp_path_factory):
    """The demo detector exported with a dynamic batch, built into an engine (GPU machines only)."""
    out = tmp_path_factory.mktemp("trt")
    onnx_path = out / "det.onnx"
    r = CliRunner().invoke(main, ["export", "fasterrcnn_demo", "-o", str(onnx_path), "--dynamic-batch", "2", "-q"])
    assert r.exit_code == 0, r.output
    cache = out / "timing.cache"
    r = CliRunner().invoke(main, ["build", str(onnx_path), "-o", str(out / "det.plan"), "--timing-cache", str(cache)])
    assert r.exit_code == 0, r.output
    return onnx_path, out / "det.plan", cache


def demo_feed(session, batch: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in session.inputs:
        shape = [batch if isinstance(d, str) else d for d in spec.shape]
        feed[spec.name] = (rng.random(shape) if spec.dtype.kind == "f" else rng.integers(0, 2, shape)).astype(spec.dtype)
    return feed


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_engine_matches_onnxruntime(demo_engine):
    onnx_path, plan, cache = demo_engine
    manifest = read_manifest(plan)
    assert manifest["tensorrt"]["source_onnx_sha256"] == read_manifest(onnx_path)["artifact"]["sha256"]
    assert cache.stat().st_size > 0
    ref, eng = load(onnx_path), load(plan)
    assert [s.name for s in eng.inputs] == [s.name for s in ref.inputs]
    for batch in (1, 2):
        feed = demo_feed(ref, batch, seed=batch)
        want, got = ref.run(feed), eng.run(feed)
        for name, a in want.items():
            assert got[name].shape == a.shape and got[name].dtype == a.dtype, name
            if a.dtype.kind == "f":
                np.testing.assert_allclose(got[name], a, atol=1e-2, rtol=1e-2, err_msg=name)
    eng.close()


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_engine_refuses_other_tensorrt_version(demo_engine, tmp_path):
    _, plan, _ = demo_engine
    copy = tmp_path / "old.plan"
    copy.write_bytes(plan.read_bytes())
    manifest = read_manifest(plan)
    manifest["tensorrt"]["version"] = "10.0.0"
    write_manifest(copy, manifest)
    with pytest.raises(BadInput) as info:
        load(copy)
    one_line(str(info.value), "built by TensorRT 10.0.0")


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_engine_shared_by_threads(demo_engine, run_in_threads):
    _, plan, _ = demo_engine
    eng = load(plan)
    feeds = [demo_feed(eng, 1, seed=100 + i) for i in range(8)]
    expected = [eng.run(f) for f in feeds]
    def worker(t):
        for i in range(50):
            k = (t + i) % len(feeds)
            got = eng.run(feeds[k])
            for name, a in expected[k].items():
                np.testing.assert_array_equal(got[name], a)
    run_in_threads(worker, 8)
    eng.close()
