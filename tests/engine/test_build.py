"""`deploykit build` (deploykit.engine): optimisation-profile shapes from the manifest, the plan manifest,
the command line, and the build flow against a recording `tensorrt` module derived from TensorRT's real
Python module (tests/trt_real.py: every call bound against the real signatures). No GPU needed; the
engine on a real GPU is tested in tests/runtime/test_tensorrt.py."""

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
from trt_real import FakeCudart, built_plan, install_cuda, install_stand_ins, make_onnx, one_line, plugin_stub

from deploykit.cli import main
from deploykit.engine.build import build_engine, plan_manifest
from deploykit.engine.profiles import profile_shapes
from deploykit.errors import BadInput
from deploykit.manifest import read_manifest, write_manifest
from deploykit.runtime import load
from deploykit.runtime.tensorrt import INSTALL_HINT


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


@pytest.fixture()
def stand_in(monkeypatch):
    """The recording `tensorrt` module (derived from TensorRT's real one) and a one-GPU cuda-python, installed."""
    return install_stand_ins(monkeypatch)[0]


@pytest.fixture()
def fake_plan(tmp_path, monkeypatch):
    """``(plan, stand_in, cudart)``: y = x + 1 built with the stand-ins, which stay installed."""
    return built_plan(tmp_path, monkeypatch)


# -- profile shapes and the plan manifest -------------------------------------------------------------

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


def test_old_style_plan_manifests_are_still_read(fake_plan, tmp_path):
    plan, fake, _ = fake_plan
    new = tmp_path / "m_trt.plan.json"
    new.rename(tmp_path / "m_trt.json")  # where plans kept their manifest before X.plan.json
    assert read_manifest(plan)["artifact"]["file"] == "m_trt.plan"  # found, sha256 verified
    with load(plan) as session:
        assert session.manifest["tensorrt"]["version"] == fake.module.__version__
        np.testing.assert_array_equal(session.run({"x": np.ones((2, 4), np.float32)})["y"], 2)
    other = tmp_path / "m.plan"  # m.json is m.onnx's manifest: it does not describe m.plan
    other.write_bytes(plan.read_bytes())
    with pytest.raises(BadInput) as info:
        read_manifest(other)
    one_line(str(info.value), "m.plan.json", "no such file")


# -- the command line without TensorRT or a GPU, bad usage ---------------------------------------------

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
    install_cuda(monkeypatch, FakeCudart(count=0))
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


def test_build_refuses_a_manifest_name_shared_with_the_onnx_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_onnx(tmp_path, "m.plan")  # m.plan.onnx keeps its manifest at m.plan.json, the plan's name
    result = CliRunner().invoke(main, ["build", "m.plan.onnx", "-o", "m.plan"])
    assert result.exit_code == 2, result.output
    one_line(result.output.strip(), "output m.plan", "m.plan.json", "own manifest")


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


# -- the build flow against the stand-in derived from TensorRT's real module ----------------------------

def test_build_flow_with_stand_in_tensorrt(tmp_path, stand_in):
    real = stand_in.module._real
    src = make_onnx(tmp_path)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    plan = build_engine(src, tmp_path / "m_trt.plan", workspace_mb=64, timing_cache=cache, echo=lambda m: None)
    names = [c[0] for c in stand_in.calls]
    assert ("create_network", ()) in stand_in.calls  # strongly typed by default: no flags
    assert ("set_memory_pool_limit", real.MemoryPoolType.WORKSPACE, 64 << 20) in stand_in.calls
    assert ("set_shape", "x", (1, 4), (2, 4), (4, 4)) in stand_in.calls
    assert ("create_timing_cache", b"old") in stand_in.calls
    assert ("set_timing_cache", True) in stand_in.calls  # a cache from another GPU is still a start
    assert names.index("parse") < names.index("set_shape") < names.index("build_serialized_network")
    assert names.index("init_libnvinfer_plugins") < names.index("Builder")  # the standard plugins first
    assert plan.read_bytes() == b"PLAN"
    assert cache.read_bytes() == b"CACHE:old"  # saved for the next build
    manifest = read_manifest(plan)  # sha256 matches the plan
    assert manifest["artifact"]["format"] == "tensorrt-plan" and manifest["artifact"]["file"] == "m_trt.plan"
    assert manifest["tensorrt"]["version"] == real.__version__
    assert manifest["tensorrt"]["gpu"] == "Fake GPU" and manifest["tensorrt"]["compute_capability"] == "8.9"
    assert manifest["tensorrt"]["source_onnx_sha256"] == json.loads((tmp_path / "m.json").read_text())[
        "artifact"]["sha256"]
    assert (tmp_path / "m_trt.plan.json").is_file()  # X.plan -> X.plan.json
    assert manifest["tensorrt"]["plugins"] == [] and manifest["tensorrt"]["needs_standard_plugins"] is False


def test_build_parser_errors_one_per_line(tmp_path, stand_in):
    stand_in.parse_ok = False
    src = make_onnx(tmp_path)
    result = CliRunner().invoke(main, ["build", str(src), "-o", str(tmp_path / "m_trt.plan")])
    assert result.exit_code == 2
    lines = result.output.rstrip().splitlines()
    assert lines[:2] == ["  parser: node 0: unsupported op Foo", "  parser: node 1: unsupported op Foo"]
    assert len(lines) == 3 and lines[2].startswith("error:") and "2 parser error(s)" in lines[2]
    assert not (tmp_path / "m_trt.plan").exists() and not (tmp_path / "m_trt.plan.json").exists()


def test_build_when_the_standard_plugins_do_not_initialise(tmp_path, stand_in):
    """init_libnvinfer_plugins is TensorRT's real binding, calling the stub library: make it report failure."""
    plugin_stub("dk_plugins_result").value = 0
    result = CliRunner().invoke(main, ["build", str(make_onnx(tmp_path)), "-o", str(tmp_path / "m_trt.plan")])
    assert result.exit_code == 2, result.output
    one_line(result.output.strip(), "TensorRT standard plugins", "init_libnvinfer_plugins returned False")
    assert "Builder" not in [c[0] for c in stand_in.calls] and not (tmp_path / "m_trt.plan").exists()


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


def test_roialign_build_initialises_standard_plugins_first_and_records_them(tmp_path, stand_in):
    into_stub = plugin_stub("dk_plugins_calls").value
    plan = build_engine(make_roialign_onnx(tmp_path), tmp_path / "roi.plan", echo=lambda m: None)
    names = [c[0] for c in stand_in.calls]
    assert ("init_libnvinfer_plugins", "") in stand_in.calls
    assert names.index("init_libnvinfer_plugins") < names.index("parse")
    section = read_manifest(plan)["tensorrt"]
    assert section["plugins"] == ["ROIAlign_TRT v2"] and section["needs_standard_plugins"] is True

    stand_in.plugins_ready, stand_in.calls[:] = False, []  # a fresh process: the registry is empty again
    session = load(plan)
    names = [c[0] for c in stand_in.calls]
    assert names.index("init_libnvinfer_plugins") < names.index("deserialize_cuda_engine")
    session.close()
    assert plugin_stub("dk_plugins_calls").value == into_stub + 2  # both through the real binding into C


def test_stand_in_refuses_roialign_without_plugins(tmp_path, stand_in, monkeypatch):
    """Without init_libnvinfer_plugins the stand-in fails like TensorRT: parse, then deserialize."""
    import deploykit.engine.build
    import deploykit.runtime.tensorrt

    src = make_roialign_onnx(tmp_path)
    plan = build_engine(src, tmp_path / "roi.plan", echo=lambda m: None)
    monkeypatch.setattr(deploykit.engine.build, "init_plugins", lambda trt, logger: None)
    monkeypatch.setattr(deploykit.runtime.tensorrt, "init_plugins", lambda trt, logger: None)
    stand_in.plugins_ready = False
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

    install_stand_ins(monkeypatch)
    result = CliRunner().invoke(main, ["build", "demo.onnx", "-o", "demo.plan"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "demo.onnx", "demo.plan", "demo.plan.json"]
    assert (tmp_path / "demo.json").read_bytes() == onnx_manifest
    assert read_manifest(tmp_path / "demo.onnx")["artifact"]["file"] == "demo.onnx"
    assert read_manifest(tmp_path / "demo.plan")["artifact"]["file"] == "demo.plan"
    with load(tmp_path / "demo.plan") as session:
        np.testing.assert_array_equal(session.run({"x": np.ones((1, 4), np.float32)})["y"], 2)
