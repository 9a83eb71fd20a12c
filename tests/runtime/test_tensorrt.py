"""TensorRT engine build and backend.

On the CPU: the pure logic (profile shapes, buffer sizes, version/GPU checks, dtype
table, plan manifest), the missing-TensorRT errors of `deploykit build` and
`deploykit.runtime.load`, and the build flow against a stand-in `tensorrt` module
that records the TensorRT 11 calls. With TensorRT and a GPU (markers `tensorrt`,
`gpu`): build the demo detector export and compare the engine with ONNX Runtime.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from deploykit.cli import main
from deploykit.engine.build import build_engine, plan_manifest
from deploykit.engine.profiles import profile_shapes
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


def manifest_for(dynamic: bool = True, low: int = 1, opt: int = 2, high: int = 8) -> dict:
    batch_dim = "batch" if dynamic else opt
    return {
        "format": "deploykit-manifest/1", "kind": "detector",
        "artifact": {"file": "m.onnx", "format": "onnx", "sha256": "0" * 64},
        "model": {"name": "toy"},
        "inputs": [{"name": "images", "dtype": "float32", "shape": [batch_dim, 3, 64, 96]},
                   {"name": "scale", "dtype": "float32", "shape": [2]}],
        "outputs": [{"name": "boxes", "dtype": "float32", "shape": [batch_dim, 10, 4]}],
        "batch": {"dynamic": dynamic, "min": low if dynamic else opt, "opt": opt, "max": high if dynamic else opt},
    }


def make_onnx(tmp_path: Path, name: str = "m") -> Path:
    """y = x + 1, x float32 [batch, 4], with a deploykit manifest (batch 1..4)."""
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


# -- pure functions -----------------------------------------------------------

def test_profile_shapes_dynamic_batch():
    shapes = profile_shapes(manifest_for(dynamic=True, low=1, opt=2, high=8))
    assert shapes == {"images": ((1, 3, 64, 96), (2, 3, 64, 96), (8, 3, 64, 96)),
                      "scale": ((2,), (2,), (2,))}


def test_profile_shapes_static_when_not_dynamic():
    shapes = profile_shapes(manifest_for(dynamic=False, opt=4))
    assert shapes["images"] == ((4, 3, 64, 96),) * 3
    # a "batch" symbol in a non-dynamic manifest collapses to opt
    m = manifest_for(dynamic=True)
    m["batch"] = {"dynamic": False, "min": 1, "opt": 3, "max": 8}
    assert profile_shapes(m)["images"] == ((3, 3, 64, 96),) * 3


@pytest.mark.parametrize("batch", [{"dynamic": True, "min": 4, "opt": 2, "max": 8},
                                   {"dynamic": True, "min": 0, "opt": 1, "max": 2},
                                   {"dynamic": True, "min": 1, "opt": "2", "max": 8}])
def test_profile_shapes_bad_range(batch):
    m = manifest_for()
    m["batch"] = batch
    with pytest.raises(BadInput) as info:
        profile_shapes(m)
    one_line(str(info.value), "batch range", "min <= opt <= max")


def test_profile_shapes_refuses_other_symbolic_dims():
    m = manifest_for()
    m["inputs"][0]["shape"] = ["batch", 3, "rows", 96]
    with pytest.raises(BadInput) as info:
        profile_shapes(m)
    one_line(str(info.value), "'images' dim 2", "'rows'")
    m["inputs"][0]["shape"] = ["batch", 3, "height", 96]  # an image dimension needs its range
    with pytest.raises(BadInput) as info:
        profile_shapes(m)
    one_line(str(info.value), "'images' dim 2 (height)", "preprocessing.image_size_range")


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


def test_plan_manifest_copies_and_adds_tensorrt_section():
    src = manifest_for()
    out = plan_manifest(src, onnx_sha256="ab" * 32, trt_version="11.4.0", gpu="NVIDIA L4",
                        compute_capability="8.9", workspace_mb=512, plugins=["ROIAlign_TRT v2"])
    assert out["artifact"] == {"format": "tensorrt-plan"}
    assert out["tensorrt"] == {"version": "11.4.0", "gpu": "NVIDIA L4", "compute_capability": "8.9",
                               "source_onnx": "m.onnx", "source_onnx_sha256": "ab" * 32, "workspace_mb": 512,
                               "plugins": ["ROIAlign_TRT v2"], "needs_standard_plugins": True}
    plain = plan_manifest(src, onnx_sha256="ab" * 32, trt_version="11.4.0", gpu="g", compute_capability="8.9",
                          workspace_mb=512)
    assert plain["tensorrt"]["plugins"] == [] and plain["tensorrt"]["needs_standard_plugins"] is False
    assert out["inputs"] == src["inputs"] and out["batch"] == src["batch"]
    assert src["artifact"]["format"] == "onnx" and "tensorrt" not in src  # source untouched


# -- what is missing ------------------------------------------------------------

def fake_cudart(count: int = 1) -> types.ModuleType:
    cudart = types.ModuleType("cuda.bindings.runtime")
    cudart.cudaGetDeviceCount = lambda: (0, count)
    cudart.cudaGetDeviceProperties = lambda dev: (0, types.SimpleNamespace(name=b"Fake GPU\0\0", major=8, minor=9))
    return cudart


def install_cuda(monkeypatch, cudart) -> None:
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)


def test_missing_requirement_names_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert missing_requirement() == "no `tensorrt` Python package"
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    assert "cuda-python" in missing_requirement()
    install_cuda(monkeypatch, fake_cudart(count=0))
    assert "no NVIDIA GPU" in missing_requirement()
    install_cuda(monkeypatch, fake_cudart(count=1))
    assert missing_requirement() is None


def test_cli_build_without_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    src = make_onnx(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["build", str(src), "-o", str(tmp_path / "m_trt.plan")])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    one_line(message, "error:", "tensorrt", "GPU", INSTALL_HINT)
    assert "Traceback" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp files


def test_cli_build_without_gpu(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    install_cuda(monkeypatch, fake_cudart(count=0))
    src = make_onnx(tmp_path)
    result = CliRunner().invoke(main, ["build", str(src), "-o", str(tmp_path / "m_trt.plan")])
    assert result.exit_code == 2
    one_line(result.output.strip(), "no NVIDIA GPU", INSTALL_HINT)
    assert not (tmp_path / "m_trt.plan").exists()


@pytest.mark.parametrize("args, words", [
    (["missing.onnx", "-o", "m.plan"], ["missing.onnx", "no such file"]),
    (["m.onnx", "-o", "m.txt"], [".plan or .engine"]),
    (["m.onnx", "-o", "m.onnx"], [".plan or .engine"]),
    (["m.onnx", "-o", "other.plan", "--workspace-mb", "0"], ["--workspace-mb"]),
])
def test_cli_build_bad_usage(tmp_path, monkeypatch, args, words):
    make_onnx(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["build", *args])
    assert result.exit_code == 2, result.output
    one_line(result.output.strip(), *words)


def test_load_plan_without_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    path = tmp_path / "x.plan"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(BadInput) as info:
        load(path)
    one_line(str(info.value), "TensorRT engine", "x.plan", "tensorrt", INSTALL_HINT)
    assert info.value.__context__ is None or info.value.__suppress_context__


# -- the build flow against a stand-in TensorRT 11 module --------------------------

class FakeTRT(types.ModuleType):
    """Records the TensorRT 11 build calls deploykit makes (API names as documented)."""

    def __init__(self, parse_ok: bool = True):
        super().__init__("tensorrt")
        self.__version__ = "11.4.0"
        self.calls: list = []
        self.plugins_ready = False  # init_libnvinfer_plugins called (the registry holds ROIAlign_TRT)
        rec, fake = self.calls, self

        def init_libnvinfer_plugins(logger, namespace):
            rec.append(("init_libnvinfer_plugins", namespace))
            fake.plugins_ready = namespace == ""  # the ONNX parser looks in the default namespace
            return True

        self.init_libnvinfer_plugins = init_libnvinfer_plugins

        class Logger:
            WARNING, VERBOSE = "WARNING", "VERBOSE"

            def __init__(self, level):
                rec.append(("Logger", level))

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            num_inputs = 1
            uses_roialign = False

            def get_input(self, i):
                return Tensor("x", (-1, 4))

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                rec.append(("set_shape", name, lo, opt, hi))

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return b"CACHE:" + self.data

        class Config:
            def set_memory_pool_limit(self, pool, size):
                rec.append(("set_memory_pool_limit", pool, size))

            def add_optimization_profile(self, p):
                rec.append(("add_optimization_profile",))

            def create_timing_cache(self, data):
                rec.append(("create_timing_cache", bytes(data)))
                self.cache = Cache(bytes(data))
                return self.cache

            def set_timing_cache(self, cache, ignore_mismatch):
                rec.append(("set_timing_cache",))

            def get_timing_cache(self):
                return self.cache

            def set_flag(self, flag):  # precision flags are gone in TensorRT 11
                raise AssertionError("no builder flags in TensorRT 11")

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
                return b"PLAN:ROIAlign_TRT" if network.uses_roialign else b"PLAN"

        class Error:
            def __init__(self, text):
                self.text = text

            def __str__(self):
                return self.text + "\nsecond line dropped"

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.num_errors, self.errors = network, 0, []

            def parse(self, data, path):
                rec.append(("parse", len(data)))
                if not fake.parse_ok:
                    self.errors = [f"node {i}: unsupported op Foo" for i in range(2)]
                elif any(n.op_type == "RoiAlign" for n in onnx.load_from_string(bytes(data)).graph.node):
                    self.network.uses_roialign = True  # the importer asks the registry for ROIAlign_TRT v2
                    if not fake.plugins_ready:
                        self.errors = ["node roi: ROIAlign plugin was not found in the plugin registry!"]
                self.num_errors = len(self.errors)
                return not self.errors

            def get_error(self, i):
                return Error(self.errors[i])

        self.parse_ok = parse_ok
        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")


def test_build_flow_with_stand_in_tensorrt(tmp_path, monkeypatch):
    trt = FakeTRT()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    install_cuda(monkeypatch, fake_cudart())
    src = make_onnx(tmp_path)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    plan = build_engine(src, tmp_path / "m_trt.plan", workspace_mb=64, timing_cache=cache, echo=lambda m: None)
    names = [c[0] for c in trt.calls]
    assert ("create_network", ()) in trt.calls  # strongly typed by default: no flags
    assert ("set_memory_pool_limit", "WORKSPACE", 64 << 20) in trt.calls
    assert ("set_shape", "x", (1, 4), (2, 4), (4, 4)) in trt.calls
    assert ("create_timing_cache", b"old") in trt.calls
    assert names.index("parse") < names.index("set_shape") < names.index("build_serialized_network")
    assert names.index("init_libnvinfer_plugins") < names.index("Builder")  # the standard plugins first
    assert plan.read_bytes() == b"PLAN"
    assert cache.read_bytes() == b"CACHE:old"  # saved for the next build
    manifest = read_manifest(plan)  # sha256 matches the plan
    assert manifest["artifact"]["format"] == "tensorrt-plan" and manifest["artifact"]["file"] == "m_trt.plan"
    assert manifest["tensorrt"]["version"] == "11.4.0"
    assert manifest["tensorrt"]["gpu"] == "Fake GPU" and manifest["tensorrt"]["compute_capability"] == "8.9"
    assert manifest["tensorrt"]["source_onnx_sha256"] == json.loads((tmp_path / "m.json").read_text())[
        "artifact"]["sha256"]
    assert (tmp_path / "m_trt.plan.json").is_file()  # X.plan -> X.plan.json
    assert manifest["tensorrt"]["plugins"] == [] and manifest["tensorrt"]["needs_standard_plugins"] is False


def test_build_parser_errors_one_per_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT(parse_ok=False))
    install_cuda(monkeypatch, fake_cudart())
    src = make_onnx(tmp_path)
    result = CliRunner().invoke(main, ["build", str(src), "-o", str(tmp_path / "m_trt.plan")])
    assert result.exit_code == 2
    lines = result.output.rstrip().splitlines()
    assert lines[:2] == ["  parser: node 0: unsupported op Foo", "  parser: node 1: unsupported op Foo"]
    assert len(lines) == 3 and lines[2].startswith("error:") and "2 parser error(s)" in lines[2]
    assert not (tmp_path / "m_trt.plan").exists() and not (tmp_path / "m_trt.plan.json").exists()


def make_roialign_onnx(tmp_path: Path, name: str = "roi") -> Path:
    """RoiAlign (opset 17) over a fixed feature map and two constant boxes, with a manifest."""
    path = tmp_path / f"{name}.onnx"
    rois = helper.make_tensor("rois", TensorProto.FLOAT, [2, 4], [0, 0, 4, 4, 2, 2, 6, 6])
    idx = helper.make_tensor("idx", TensorProto.INT64, [2], [0, 0])
    node = helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], name="roi", output_height=2, output_width=2,
                            sampling_ratio=2, coordinate_transformation_mode="output_half_pixel")
    graph = helper.make_graph([node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 2, 2])],
                              initializer=[rois, idx])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    write_manifest(path, {"kind": "test", "model": {"name": "roi"},
                          "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4, 8, 8]}],
                          "outputs": [{"name": "y", "dtype": "float32", "shape": [2, 4, 2, 2]}],
                          "batch": {"dynamic": False, "min": 1, "opt": 1, "max": 1}})
    return path


def test_roialign_build_initialises_standard_plugins_first_and_records_them(tmp_path, monkeypatch):
    trt = add_fake_runtime(FakeTRT())
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    install_cuda(monkeypatch, FakeCudart())
    plan = build_engine(make_roialign_onnx(tmp_path), tmp_path / "roi.plan", echo=lambda m: None)
    names = [c[0] for c in trt.calls]
    assert ("init_libnvinfer_plugins", "") in trt.calls and names.index("init_libnvinfer_plugins") < names.index("parse")
    section = read_manifest(plan)["tensorrt"]
    assert section["plugins"] == ["ROIAlign_TRT v2"] and section["needs_standard_plugins"] is True

    trt.plugins_ready, trt.calls[:] = False, []  # a fresh process: the registry is empty again
    session = load(plan)
    names = [c[0] for c in trt.calls]
    assert names.index("init_libnvinfer_plugins") < names.index("deserialize_cuda_engine")
    session.close()


def test_stand_in_refuses_roialign_without_plugins(tmp_path, monkeypatch):
    """Without init_libnvinfer_plugins the stand-in fails like TensorRT: parse, then deserialize."""
    import deploykit.engine.build
    import deploykit.runtime.tensorrt

    trt = add_fake_runtime(FakeTRT())
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    install_cuda(monkeypatch, FakeCudart())
    src = make_roialign_onnx(tmp_path)
    plan = build_engine(src, tmp_path / "roi.plan", echo=lambda m: None)
    monkeypatch.setattr(deploykit.engine.build, "init_plugins", lambda trt, logger: None)
    monkeypatch.setattr(deploykit.runtime.tensorrt, "init_plugins", lambda trt, logger: None)
    trt.plugins_ready = False
    lines = []
    with pytest.raises(BadInput) as info:
        build_engine(src, tmp_path / "again.plan", echo=lines.append)
    assert lines == ["  parser: node roi: ROIAlign plugin was not found in the plugin registry!"]
    one_line(str(info.value), "1 parser error(s)")
    with pytest.raises(BadInput) as info:
        load(plan)
    one_line(str(info.value), "roi.plan", "cannot deserialize")


def test_readme_build_command_names_the_engine_after_the_onnx_file(tmp_path, monkeypatch):
    """`deploykit build demo.onnx -o demo.plan`: manifests demo.json (ONNX, untouched) and demo.plan.json."""
    monkeypatch.chdir(tmp_path)
    make_onnx(tmp_path, "demo")
    onnx_manifest = (tmp_path / "demo.json").read_bytes()
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(main, ["build", "demo.onnx", "-o", "demo.plan"])
    assert result.exit_code == 2, result.output
    one_line(result.output.strip(), "no `tensorrt` Python package", INSTALL_HINT)  # got as far as TensorRT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "demo.onnx"]

    monkeypatch.setitem(sys.modules, "tensorrt", add_fake_runtime(FakeTRT()))
    install_cuda(monkeypatch, FakeCudart())
    result = CliRunner().invoke(main, ["build", "demo.onnx", "-o", "demo.plan"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "demo.onnx", "demo.plan", "demo.plan.json"]
    assert (tmp_path / "demo.json").read_bytes() == onnx_manifest
    assert read_manifest(tmp_path / "demo.onnx")["artifact"]["file"] == "demo.onnx"
    assert read_manifest(tmp_path / "demo.plan")["artifact"]["file"] == "demo.plan"
    with load(tmp_path / "demo.plan") as session:
        np.testing.assert_array_equal(session.run({"x": np.ones((1, 4), np.float32)})["y"], 2)


def test_build_refuses_a_manifest_name_shared_with_the_onnx_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_onnx(tmp_path, "m.plan")  # m.plan.onnx keeps its manifest at m.plan.json, the plan's name
    result = CliRunner().invoke(main, ["build", "m.plan.onnx", "-o", "m.plan"])
    assert result.exit_code == 2, result.output
    one_line(result.output.strip(), "output m.plan", "m.plan.json", "own manifest")


def test_old_style_plan_manifests_are_still_read(fake_plan, tmp_path):
    plan, trt, _ = fake_plan
    new = tmp_path / "m_trt.plan.json"
    new.rename(tmp_path / "m_trt.json")  # where plans kept their manifest before X.plan.json
    assert read_manifest(plan)["artifact"]["file"] == "m_trt.plan"  # found, sha256 verified
    with load(plan) as session:
        assert session.manifest["tensorrt"]["version"] == "11.4.0"
        np.testing.assert_array_equal(session.run({"x": np.ones((2, 4), np.float32)})["y"], 2)
    other = tmp_path / "m.plan"  # m.json is m.onnx's manifest: it does not describe m.plan
    other.write_bytes(plan.read_bytes())
    with pytest.raises(BadInput) as info:
        read_manifest(other)
    one_line(str(info.value), "m.plan.json", "no such file")


def _topk_onnx(tmp_path: Path, sorted_: int) -> Path:
    path = tmp_path / "topk.onnx"
    k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", sorted=sorted_)
    graph = helper.make_graph([node], "topk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2]),
                               helper.make_tensor_value_info("i", TensorProto.INT64, [1, 2])], initializer=[k])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    write_manifest(path, {"kind": "test", "model": {"name": "topk"},
                          "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 8]}], "outputs": [],
                          "batch": {"dynamic": False, "min": 1, "opt": 1, "max": 1}})
    return path


def test_build_refuses_a_graph_tensorrt_cannot_parse_before_needing_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    src = _topk_onnx(tmp_path, sorted_=0)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["build", str(src), "-o", str(tmp_path / "topk.plan")])
    assert result.exit_code == 1, result.output
    lines = result.output.rstrip().splitlines()
    assert lines[0] == "  node 'topk' (TopK): attribute sorted: expected one of {1}, got 0"
    assert len(lines) == 2 and lines[1].startswith("error:") and "1 violation(s)" in lines[1]
    assert INSTALL_HINT not in result.output  # refused before looking for TensorRT
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_build_refuses_an_ort_lowering_graph(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    src = make_onnx(tmp_path)
    manifest = read_manifest(src)
    manifest["precision"] = {"mode": "int8", "ort_lowering": {"output_qdq_pairs": 3}}
    write_manifest(src, manifest)
    result = CliRunner().invoke(main, ["build", str(src), "-o", str(tmp_path / "m_trt.plan")])
    assert result.exit_code == 1, result.output
    first = result.output.splitlines()[0]
    assert "precision.ort_lowering" in first and "ONNX Runtime CPU only" in first and "3 output Q/DQ" in first
    assert not (tmp_path / "m_trt.plan").exists()
    checked = CliRunner().invoke(main, ["check", str(src)])  # deploykit check reads the same manifest
    assert checked.exit_code == 1 and checked.output.splitlines()[0] == first


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


# -- the runtime against stand-ins for tensorrt and cuda.bindings (host memory as "device") --

class FakeCudart(types.ModuleType):
    """cuda.bindings.runtime on host memory: enough to drive TensorRTSession on the CPU."""

    def __init__(self):
        super().__init__("cuda.bindings.runtime")
        import ctypes

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

        import itertools
        import threading

        streams, handles = itertools.count(7), itertools.count(1000)
        self.cudaGetDeviceCount = lambda: (0, 1)
        self.cudaGetDeviceProperties = lambda dev: (0, types.SimpleNamespace(name=b"Fake GPU\0", major=8, minor=9))
        self.cudaStreamCreate = lambda: (0, next(streams))
        self.cudaMallocAsync, self.cudaMallocHost = alloc, alloc
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
        self.cudaMemcpyAsync = memcpy
        ok = lambda *a: (0,)  # noqa: E731
        self.cudaStreamSynchronize = self.cudaFreeAsync = self.cudaFreeHost = self.cudaStreamDestroy = ok

        # CUDA graphs: a capturing stream records work instead of running it; a graph exec replays it
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


def add_fake_runtime(trt: FakeTRT) -> FakeTRT:
    """Engine y = x + 1 (x, y float32 [-1, 4]); records contexts and their threads."""
    import ctypes
    import threading

    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.contexts = []
    trt.capturable = True  # False: execute_async_v3 fails while the stream is capturing
    trt.plain_runs = 0  # execute_async_v3 calls that ran (not recorded into a graph)

    class Context:
        def __init__(self):
            self.shape, self.addr, self.threads = None, {}, set()
            trt.contexts.append(self)

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)
            return shape[0] <= 4

        def get_tensor_shape(self, name):
            return self.shape

        def set_tensor_address(self, name, addr):
            self.addr[name] = addr

        def execute_async_v3(self, stream):
            self.threads.add(threading.get_ident())
            n, ax, ay = int(np.prod(self.shape)), self.addr["x"], self.addr["y"]  # fixed now, as in a graph

            def work():
                x = np.frombuffer((ctypes.c_float * n).from_address(ax), np.float32)
                y = np.frombuffer((ctypes.c_float * n).from_address(ay), np.float32)
                y[...] = x + 1

            cudart = sys.modules["cuda.bindings.runtime"]
            if stream in getattr(cudart, "capturing", {}):
                if not trt.capturable:
                    return False
                cudart.capturing[stream].append(work)  # recorded, not run
                return True
            trt.plain_runs += 1
            work()
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["x", "y"][i]

        def get_tensor_shape(self, name):
            return (-1, 4)

        def get_tensor_dtype(self, name):
            return types.SimpleNamespace(name="FLOAT")

        def get_tensor_mode(self, name):
            return "INPUT" if name == "x" else "OUTPUT"

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            trt.calls.append(("deserialize_cuda_engine",))
            if bytes(data) == b"PLAN:ROIAlign_TRT" and not trt.plugins_ready:
                return None  # TensorRT: "getPluginCreator could not find plugin ROIAlign_TRT version 2"
            return Engine() if bytes(data) in (b"PLAN", b"PLAN:ROIAlign_TRT") else None

    trt.Runtime = Runtime
    return trt


@pytest.fixture()
def fake_plan(tmp_path, monkeypatch):
    trt = add_fake_runtime(FakeTRT())
    cudart = FakeCudart()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    install_cuda(monkeypatch, cudart)
    plan = build_engine(make_onnx(tmp_path), tmp_path / "m_trt.plan", echo=lambda m: None)
    return plan, trt, cudart


def test_session_runs_and_reuses_buffers(fake_plan):
    plan, trt, cudart = fake_plan
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
    plan, trt, _ = fake_plan
    session = load(plan)
    feeds = [np.full((1 + i % 4, 4), i, np.float32) for i in range(8)]

    def worker(t):
        for i in range(20):
            k = (t + i) % len(feeds)
            np.testing.assert_array_equal(session.run({"x": feeds[k]})["y"], feeds[k] + 1)

    run_in_threads(worker, 4)
    assert len(trt.contexts) == 4 and all(len(c.threads) == 1 for c in trt.contexts)
    session.close()


def test_session_refuses_other_version_gpu_and_corrupt_plan(fake_plan):
    plan, trt, _ = fake_plan
    manifest = read_manifest(plan)
    trt.__version__ = "11.5.0"
    with pytest.raises(BadInput) as info:
        load(plan)
    one_line(str(info.value), "m_trt.plan", "TensorRT 11.5.0", "built by TensorRT 11.4.0")
    trt.__version__ = "11.4.0"
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
    plan, trt, cudart = fake_plan
    session = load(plan, cuda_graph=True)
    for i in range(4):  # new values each run: the replayed graph reads the current input buffer
        x = _x(2, i)
        np.testing.assert_array_equal(session.run({"x": x})["y"], x + 1)
    assert [c[0] for c in cudart.graph_calls] == [
        "cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiate",
        "cudaGraphLaunch", "cudaGraphLaunch", "cudaGraphLaunch"]
    assert cudart.graph_calls[0][1] == "ThreadLocal"  # other threads' CUDA calls stay legal during capture
    assert trt.plain_runs == 1  # the first run enqueues once before capturing; the rest are graph launches
    assert len(cudart.graphs) == len(cudart.execs) == 1
    session.close()


def test_cuda_graph_recaptured_when_the_shape_changes(fake_plan):
    plan, trt, cudart = fake_plan
    session = load(plan, cuda_graph=True)
    for batch in (2, 2, 1, 1, 2):
        x = _x(batch, batch)
        np.testing.assert_array_equal(session.run({"x": x})["y"], x + 1)  # a stale graph would compute 2 rows
    assert cudart.count("cudaStreamBeginCapture") == 3 and cudart.count("cudaGraphInstantiate") == 3
    assert cudart.count("cudaGraphLaunch") == 2 and trt.plain_runs == 3
    assert cudart.count("cudaGraphExecDestroy") == cudart.count("cudaGraphDestroy") == 2  # old ones freed
    assert len(cudart.graphs) == len(cudart.execs) == 1
    session.close()


def test_cuda_graph_freed_on_close_and_per_thread(fake_plan, run_in_threads):
    plan, trt, cudart = fake_plan
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

    plan, trt, cudart = fake_plan
    if how == "enqueue-fails":
        trt.capturable = False
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
    assert cudart.count("cudaGraphLaunch") == 0 and trt.plain_runs == 4
    assert cudart.graphs == {} and cudart.execs == {}  # nothing leaked
    assert len(session.capture_failures) == 1
    session.close()


def test_without_cuda_graph_no_capture(fake_plan):
    plan, trt, cudart = fake_plan
    session = load(plan)
    for _ in range(3):
        session.run({"x": _x(2, 0)})
    assert cudart.graph_calls == [] and trt.plain_runs == 3
    session.close()


def test_cuda_graph_refused_for_onnx(tmp_path):
    src = make_onnx(tmp_path)
    with pytest.raises(BadInput) as info:
        load(src, cuda_graph=True)
    one_line(str(info.value), "cuda_graph", "TensorRT engine", "'.onnx'")
    r = CliRunner().invoke(main, ["bench", str(src), "--cuda-graph", "--iterations", "1"])
    assert r.exit_code == 2 and "--cuda-graph" in r.output and "TensorRT engine" in r.output
