"""TensorRT ≤ 10 calibration cache written from a Q/DQ ONNX graph."""

from __future__ import annotations

import struct

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.errors import BadInput
from deploykit.precision.trt_cache import (
    activation_scales,
    read_calibration_cache,
    trt_version_int,
    write_calibration_cache,
)


def _scalar(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _qdq(tensor: str, scale: str, zp: str, out: str) -> list:
    return [helper.make_node("QuantizeLinear", [tensor, scale, zp], [f"{tensor}_q"]),
            helper.make_node("DequantizeLinear", [f"{tensor}_q", scale, zp], [out])]


def tiny_qdq_model() -> onnx.ModelProto:
    """x -Q/DQ(0.5)-> MatMul(W -Q/DQ per-tensor 0.25) -> h -Relu-> r -Q/DQ(Constant 2^-7)-> Add -> y.

    Also one uint8 quantizer (on ``r2``), which is not an INT8 activation."""
    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) / 16, "W")
    nodes = [
        *_qdq("x", "s_x", "zp", "x_dq"),
        *_qdq("W", "s_w", "zp", "W_dq"),
        helper.make_node("MatMul", ["x_dq", "W_dq"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Constant", [], ["s_r"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [2 ** -7])),
        *_qdq("r", "s_r", "zp", "r_dq"),
        helper.make_node("Relu", ["r_dq"], ["r2"]),
        *_qdq("r2", "s_u8", "zp_u8", "r2_dq"),
        helper.make_node("Add", ["r_dq", "r2_dq"], ["y"]),
    ]
    inits = [w, _scalar("s_x", 0.5), _scalar("s_w", 0.25), _scalar("zp", 0, np.int8),
             _scalar("s_u8", 0.1), _scalar("zp_u8", 128, np.uint8)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def test_exact_cache_text_for_known_scales(tmp_path):
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_qdq_model(), src)
    out = tmp_path / "calib.cache"
    n = write_calibration_cache(src, out)
    assert n == 2  # x and r; the weight W and the uint8 quantizer are skipped
    assert out.read_text() == "TRT-100000-EntropyCalibration2\nx: 3f000000\nr: 3c000000\n"
    assert read_calibration_cache(out) == {"x": 0.5, "r": 2 ** -7}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.cache", "tiny.onnx"]  # no temporary left


@pytest.mark.parametrize("version, header", [("8.6.1", 8601), ("8.5.3", 8503), ("10.0.0", 100000),
                                             ("10.7.0", 100700), ("10.14.1.48", 101401)])
def test_header_version_integer(version, header, tmp_path):
    assert trt_version_int(version) == header
    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_qdq_model(), src)
    write_calibration_cache(src, tmp_path / "c", trt_version=version)
    assert (tmp_path / "c").read_text().splitlines()[0] == f"TRT-{header}-EntropyCalibration2"


@pytest.mark.parametrize("version", ["11.4.0", "ten", "10"])
def test_bad_versions(version):
    with pytest.raises(BadInput, match="TensorRT version"):
        trt_version_int(version)


def test_round_trip_random_scales(tmp_path):
    rng = np.random.default_rng(0)
    scales = {f"t{i}": float(np.float32(v)) for i, v in enumerate(rng.uniform(1e-6, 10, 50))}
    lines = ["TRT-8601-EntropyCalibration2"] + [f"{k}: {struct.pack('>f', v).hex()}" for k, v in scales.items()]
    (tmp_path / "c").write_text("\n".join(lines) + "\n")
    assert read_calibration_cache(tmp_path / "c") == scales


def test_modelopt_int8_graph_round_trip(tmp_path):
    """A graph quantized by NVIDIA ModelOpt: the cache holds its activation scales, bit for bit."""
    pytest.importorskip("modelopt.onnx.quantization")
    from modelopt.onnx.quantization import quantize

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "W2")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W1"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "W2"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "m.onnx")
    quantize(str(tmp_path / "m.onnx"), quantize_mode="int8", output_path=str(tmp_path / "m.q.onnx"),
             calibration_data={"x": rng.standard_normal((4, 3, 16, 16)).astype(np.float32)},
             calibration_eps=["cpu"], high_precision_dtype="fp32")
    q = onnx.load(tmp_path / "m.q.onnx")
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    n = write_calibration_cache(tmp_path / "m.q.onnx", tmp_path / "m.cache")
    got = read_calibration_cache(tmp_path / "m.cache")
    assert n == len(got) >= 1 and "x" in got and "W1" not in got
    init = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    qx = next(nd for nd in q.graph.node if nd.op_type == "QuantizeLinear" and nd.input[0] == "x")
    assert got["x"] == float(np.float32(init[qx.input[1]]))
    assert got == activation_scales(q)


def test_errors(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        write_calibration_cache(tmp_path / "missing.onnx", tmp_path / "c")
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01 not a protobuf \xff" * 10)
    with pytest.raises(BadInput, match="junk.onnx"):
        write_calibration_cache(tmp_path / "junk.onnx", tmp_path / "c")
    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(BadInput, match="INT8 QuantizeLinear nodes"):
        write_calibration_cache(tmp_path / "plain.onnx", tmp_path / "c")
    assert not (tmp_path / "c").exists()
    (tmp_path / "bad.cache").write_text("TRT-8601-EntropyCalibration2\nx 3f000000\n")
    with pytest.raises(BadInput, match="line 2"):
        read_calibration_cache(tmp_path / "bad.cache")
    (tmp_path / "bad2.cache").write_text("hello\n")
    with pytest.raises(BadInput, match="line 1"):
        read_calibration_cache(tmp_path / "bad2.cache")
