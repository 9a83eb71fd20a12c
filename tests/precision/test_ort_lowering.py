"""deploykit.precision.ort_lowering: exact Q/DQ insertion after quantized Conv/Gemm, and the weight
encoding per CPU target (U8S8 for VNNI CPUs, U8U8 for every x86 CPU).

Nothing here depends on the CPU's integer instructions: fused-kernel outputs are compared
exactly only for the U8U8 lowering (exact on every x86 CPU); the U8S8 one is checked for
structure and under reference kernels.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.errors import BadInput
from deploykit.precision.ort_lowering import TARGETS, add_output_qdq, lower_for_ort, target_for, uint8_weights
from deploykit.runtime import cpu

OPSET = 19
RNG = np.random.default_rng(0)
S_IN, S_MID = 0.02, 0.05  # activation scales (input quantizer, quantizer after the block)


class _Builder:
    """Tiny graph builder mimicking ModelOpt's INT8 pattern (int8 symmetric, zero point 0,
    per-channel weights, Q/DQ only on Conv/Gemm inputs)."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def name(self, stem: str) -> str:
        self.n += 1
        return f"{stem}_{self.n}"

    def const(self, value: np.ndarray, stem: str = "c") -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def qdq(self, x: str, scale: float) -> str:
        s = self.const(np.float32(scale), "scale")
        z = self.const(np.int8(0), "zp")
        return self.node("DequantizeLinear", [self.node("QuantizeLinear", [x, s, z]), s, z])

    def weight(self, shape: tuple[int, ...]) -> str:
        w = RNG.normal(0, 0.2, shape).astype(np.float32)
        scale = np.abs(w).reshape(shape[0], -1).max(1) / 127
        q = np.clip(np.round(w / scale.reshape(-1, *[1] * (len(shape) - 1))), -127, 127).astype(np.int8)
        return self.node("DequantizeLinear", [self.const(q, "w"), self.const(scale.astype(np.float32), "ws"),
                                              self.const(np.zeros(shape[0], np.int8), "wz")], axis=0)

    def conv(self, x: str, cin: int, cout: int, bias: bool = True) -> str:
        ins = [x, self.weight((cout, cin, 3, 3))]
        if bias:
            ins.append(self.const(RNG.normal(0, 0.1, cout).astype(np.float32), "b"))
        return self.node("Conv", ins, pads=[1, 1, 1, 1], kernel_shape=[3, 3])

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[tuple[str, list]]) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, shape) for o, shape in outputs]
        graph = helper.make_graph(self.nodes, "g", inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 9
        onnx.checker.check_model(model)
        return model


def in_graph_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """ModelOpt's form (``high_precision_dtype='fp32'``): each stored int8 weight becomes a float
    initializer ``q * scale`` quantized in the graph by a QuantizeLinear sharing the DQ's scale
    and zero point (ONNX Runtime folds it back to the same int8 values)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    nodes = []
    for node in out.graph.node:
        w = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if w is not None and w.data_type == TensorProto.INT8:
            q = numpy_helper.to_array(w).astype(np.float32)
            scale = numpy_helper.to_array(inits[node.input[1]])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * q.ndim
            shape[axis] = -1
            out.graph.initializer.append(numpy_helper.from_array(q * scale.reshape(shape), f"{w.name}_float"))
            nodes.append(helper.make_node("QuantizeLinear", [f"{w.name}_float", *node.input[1:]], [f"{w.name}_q"],
                                          axis=axis))
            node.input[0] = f"{w.name}_q"
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    onnx.checker.check_model(out)
    return out


def _image_input(c: int = 8, hw: int = 16) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])


def conv_block_model() -> onnx.ModelProto:
    """Q/DQ -> Conv -> Relu -> Mul(0/1 mask from a comparison) -> MaxPool -> Q/DQ -> Conv
    -> Relu -> Resize(nearest) -> Q/DQ -> Conv -> output. The first two Convs can be lowered."""
    b = _Builder()
    x = b.qdq("x", S_IN)
    y = b.node("Relu", [b.conv(x, 8, 16)])
    # mask: 1 inside the top-left 12x12, as deploykit's padding emulation builds it
    ramp = b.const(np.arange(16, dtype=np.float32).reshape(1, 1, 16, 1), "ramp")
    inside = b.node("And", [b.node("Less", [ramp, b.const(np.float32(12))]),
                            b.node("Less", [b.node("Transpose", [ramp], perm=[0, 1, 3, 2]),
                                            b.const(np.float32(12))])])
    mask = b.node("Cast", [inside], to=TensorProto.FLOAT)
    y = b.node("Mul", [y, mask])
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.qdq(y, S_MID)
    y = b.node("Relu", [b.conv(y, 16, 16)])
    y = b.node("Resize", [y, "", b.const(np.array([1, 1, 2, 2], np.float32), "sc")], mode="nearest")
    y = b.qdq(y, S_MID)
    out = b.conv(y, 16, 4)
    b.nodes.append(helper.make_node("Identity", [out], ["y"], name="out"))
    return b.model([_image_input()], [("y", [1, 4, 16, 16])])


def gemm_model() -> onnx.ModelProto:
    """Q/DQ -> Gemm -> Relu -> Q/DQ -> Gemm -> output (the box head's FC layers)."""
    b = _Builder()
    x = b.qdq("x", S_IN)
    w1 = b.weight((32, 64))
    y = b.node("Relu", [b.node("Gemm", [x, w1, b.const(RNG.normal(0, 0.1, 32).astype(np.float32))], transB=1)])
    y = b.qdq(y, S_MID)
    w2 = b.weight((16, 32))
    out = b.node("Gemm", [y, w2, b.const(RNG.normal(0, 0.1, 16).astype(np.float32))], transB=1)
    b.nodes.append(helper.make_node("Identity", [out], ["y"], name="out"))
    return b.model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])], [("y", [4, 16])])


def _session(model: onnx.ModelProto, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, optimized=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = level
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> Counter:
    path = tmp_path / "optimized.onnx"
    _session(model, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, optimized=path)
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _inputs(shape, n=5):
    rng = np.random.default_rng(1)
    return [rng.normal(0, 1.5, shape).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("build,shape,expect", [(conv_block_model, (1, 8, 16, 16), 2), (gemm_model, (4, 64), 1)])
def test_count_and_outputs_bit_identical(build, shape, expect):
    model = build()
    lowered, count = add_output_qdq(model)
    assert count == expect
    onnx.checker.check_model(lowered)
    ops_before = Counter(n.op_type for n in model.graph.node)
    ops_after = Counter(n.op_type for n in lowered.graph.node)
    assert ops_after["QuantizeLinear"] - ops_before["QuantizeLinear"] == count
    assert ops_after["DequantizeLinear"] - ops_before["DequantizeLinear"] == count
    # The rewrite is exact: reference kernels (no fusion) give bit-identical outputs.
    ref = _session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    low = _session(lowered, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    for x in _inputs(shape):
        np.testing.assert_array_equal(low.run(None, {"x": x})[0], ref.run(None, {"x": x})[0])


def test_input_model_not_modified():
    model = conv_block_model()
    before = model.SerializeToString()
    add_output_qdq(model)
    assert model.SerializeToString() == before


def test_inserted_scale_is_the_downstream_one():
    lowered, _ = add_output_qdq(conv_block_model())
    inits = {t.name: numpy_helper.to_array(t) for t in lowered.graph.initializer}
    added = [n for n in lowered.graph.node if n.name.endswith("_ortq_QuantizeLinear")]
    assert len(added) == 2
    for q in added:
        assert float(inits[q.input[1]]) == pytest.approx(S_MID)
        assert inits[q.input[2]].dtype == np.int8 and inits[q.input[2]] == 0


@pytest.mark.parametrize("target", list(TARGETS))
def test_ort_fuses_qlinearconv(tmp_path, target):
    model = conv_block_model()
    before = _optimized_ops(model, tmp_path)
    lowered, record = lower_for_ort(model, target)
    assert before["QLinearConv"] == 0
    assert _optimized_ops(lowered, tmp_path)["QLinearConv"] == 2
    assert record["output_qdq_pairs"] == 2 and record["cpu_class"] == target
    assert record["lowering"] == ("u8u8" if target == "x86" else "u8s8")
    inits = {t.name: t for t in lowered.graph.initializer}
    weights = [inits[n.input[0]] for n in lowered.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert {t.data_type for t in weights} == {TensorProto.UINT8 if target == "x86" else TensorProto.INT8}
    assert record["uint8_weights"] == (3 if target == "x86" else 0)  # all three Convs' weights


def _saturating_conv_model(cin: int = 16, cout: int = 8, hw: int = 10):
    """Q/DQ(x) -> Conv(DQ(w), no bias) -> Relu -> Q/DQ -> y with int8 weights of magnitude 64..127 and
    power-of-two scales, and the exact integer model of its output for on-grid inputs.

    Activations 60..127 (uint8 188..255 once ONNX Runtime shifts them) times same-sign
    weights make every adjacent pair of products exceed int16 (2 * 188 * 64 > 32767): the
    U8S8 kernels of CPUs without VNNI saturate on it (their output is off by up to 15
    LSB: ``scripts/int8_cpu_check.py --emulate Haswell-v4`` runs them under QEMU).
    """
    rng = np.random.default_rng(0)
    sx, sy = 2.0 ** -4, 2.0 ** 3
    qw = (rng.integers(64, 128, (cout, cin, 3, 3)) * rng.choice([-1, 1], (cout, cin, 3, 3))).astype(np.int8)
    sw = (2.0 ** -rng.integers(6, 9, cout)).astype(np.float32)
    b = _Builder()
    x = b.qdq("x", sx)
    w = b.node("DequantizeLinear", [b.const(qw, "w"), b.const(sw, "ws"), b.const(np.zeros(cout, np.int8), "wz")],
               axis=0)
    y = b.qdq(b.node("Relu", [b.node("Conv", [x, w], pads=[1, 1, 1, 1], kernel_shape=[3, 3])]), sy)
    b.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    model = b.model([_image_input(cin, hw)], [("y", [1, cout, hw, hw])])

    qx = rng.integers(60, 128, (cin, hw, hw))
    qx[:, ::3, ::2] = -rng.integers(0, 129, qx[:, ::3, ::2].shape)  # some negative ones too
    padded = np.pad(qx, ((0, 0), (1, 1), (1, 1)))
    acc = sum(np.einsum("oc,chw->ohw", qw[:, :, i, j].astype(np.int64), padded[:, i:i + hw, j:j + hw])
              for i in range(3) for j in range(3))
    scale = (np.float32(sx) * sw / np.float32(sy)).astype(np.float32)  # ONNX Runtime's requantization scale
    yq = np.clip(np.rint(acc.astype(np.float32) * scale[:, None, None]), -128, 127)
    assert np.abs(acc).max() > 2 ** 16 and np.abs(yq).max() < 127  # large sums, nothing clipped
    expected = (np.maximum(yq, 0) * np.float32(sy)).astype(np.float32)[None]
    return model, (qx * sx).astype(np.float32)[None], expected


@pytest.mark.parametrize("form", ["stored", "in_graph"])
def test_u8u8_fused_kernels_are_exact(form):
    """The lowering for every x86 CPU: ONNX Runtime's fused QLinearConv equals the exact integer
    computation bit for bit (as the Q/DQ graph under reference kernels does), on any CPU."""
    model, x, expected = _saturating_conv_model()
    model = in_graph_weights(model) if form == "in_graph" else model
    lowered, record = lower_for_ort(model, "x86")
    assert record["lowering"] == "u8u8" and record["output_qdq_pairs"] == 1 and record["uint8_weights"] == 1
    np.testing.assert_array_equal(_session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, {"x": x})[0],
                                  expected)
    fused = _session(lowered)
    np.testing.assert_array_equal(fused.run(None, {"x": x})[0], expected)


@pytest.mark.parametrize("form", ["stored", "in_graph"])
@pytest.mark.parametrize("build,shape", [(conv_block_model, (1, 8, 16, 16)), (gemm_model, (4, 64))])
def test_uint8_weights_change_no_value(build, shape, form):
    model = add_output_qdq(build())[0]
    model = in_graph_weights(model) if form == "in_graph" else model
    u8, count = uint8_weights(model)
    weight_dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[2].startswith("wz")]
    assert count == len(weight_dqs) >= 2
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    inits = {t.name: numpy_helper.to_array(t) for t in u8.graph.initializer}
    old_dq = {n.name: n for n in model.graph.node}
    for node in u8.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[2].startswith("wz"):
            assert inits[node.input[2]].dtype == np.uint8 and np.all(inits[node.input[2]] == 128)
            if node.op_type == "DequantizeLinear" and form == "stored":  # the int8 values plus 128
                original = before[old_dq[node.name].input[0]]
                np.testing.assert_array_equal(inits[node.input[0]], (original.astype(np.int16) + 128).astype(np.uint8))
    assert not any(t.data_type == TensorProto.INT8 and len(t.dims) > 1 for t in u8.graph.initializer)
    # activations are left alone: their zero points stay int8
    assert sum(n.op_type == "QuantizeLinear" and inits[n.input[2]].dtype == np.int8 for n in u8.graph.node) >= 1
    onnx.checker.check_model(u8)
    ref = _session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    low = _session(u8, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    for x in _inputs(shape, 3):
        np.testing.assert_array_equal(low.run(None, {"x": x})[0], ref.run(None, {"x": x})[0])


def test_target_for_each_cpu_class():
    assert target_for(cpu.X86_VNNI) == "x86-vnni"
    assert target_for(cpu.X86_NO_VNNI) == "x86" and target_for(cpu.UNKNOWN) == "x86"
    with pytest.raises(BadInput, match="non-x86.*without --ort-lowering.*--ort-cpu x86"):
        target_for(cpu.NON_X86)
    with pytest.raises(BadInput, match="ORT lowering target"):
        lower_for_ort(gemm_model(), "arm")


@pytest.mark.parametrize("target", list(TARGETS))
def test_ort_fuses_qgemm(tmp_path, target):
    model = gemm_model()
    assert _optimized_ops(model, tmp_path)["QGemm"] == 0
    assert _optimized_ops(lower_for_ort(model, target)[0], tmp_path)["QGemm"] >= 1


def _single_conv_then(tail) -> onnx.ModelProto:
    b = _Builder()
    y = b.conv(b.qdq("x", S_IN), 8, 8)
    y = tail(b, y)
    out = b.conv(y, 8, 4)
    b.nodes.append(helper.make_node("Identity", [out], ["y"], name="out"))
    return b.model([_image_input()], [("y", ["n", "c", "h", "w"])])


@pytest.mark.parametrize("tail", [
    # Add is not exact under quantization
    lambda b, y: b.qdq(b.node("Add", [y, b.const(np.float32(0.5))]), S_MID),
    # LeakyRelu does not commute with rounding
    lambda b, y: b.qdq(b.node("LeakyRelu", [y], alpha=0.2), S_MID),
    # Mul by a non-mask
    lambda b, y: b.qdq(b.node("Mul", [y, b.const(np.float32(0.7))]), S_MID),
    # bilinear Resize interpolates
    lambda b, y: b.qdq(b.node("Resize", [b.node("Relu", [y]), "", b.const(np.array([1, 1, 2, 2], np.float32))],
                              mode="linear"), S_MID),
    # two quantizers with different scales downstream
    lambda b, y: b.node("Add", [b.qdq(b.node("Relu", [y]), S_MID), b.qdq(b.node("Relu", [y]), S_IN)]),
    # a float consumer besides the quantizer
    lambda b, y: b.node("Add", [b.qdq(b.node("Relu", [y]), S_MID), b.node("Sigmoid", [y])]),
])
def test_not_lowered(tail):
    lowered, count = add_output_qdq(_single_conv_then(tail))
    assert count == 0


def test_constant_mask_and_nonzero_zero_point():
    def mask_tail(b, y):
        mask = np.ones((1, 1, 16, 16), np.float32)
        mask[..., 10:, :] = 0
        return b.qdq(b.node("Mul", [b.const(mask), b.node("Relu", [y])]), S_MID)

    assert add_output_qdq(_single_conv_then(mask_tail))[1] == 1

    def asym_tail(b, y):
        s, z = b.const(np.float32(S_MID)), b.const(np.int8(3))
        return b.node("DequantizeLinear", [b.node("QuantizeLinear", [b.node("Relu", [y]), s, z]), s, z])

    assert add_output_qdq(_single_conv_then(asym_tail))[1] == 0


def shared_input_model() -> onnx.ModelProto:
    """The block input's Q/DQ pair feeds both a Conv and a (float) residual Add, as in ModelOpt's
    ResNet graphs: ORT fuses the Conv only if it gets a private Q/DQ copy."""
    b = _Builder()
    x = b.qdq("x", S_IN)
    y = b.qdq(b.node("Relu", [b.conv(x, 8, 8)]), S_MID)
    y = b.node("Add", [b.conv(y, 8, 8), x])
    b.nodes.append(helper.make_node("Identity", [y], ["y"], name="out"))
    return b.model([_image_input()], [("y", [1, 8, 16, 16])])


def test_shared_input_pair_is_duplicated(tmp_path):
    model = shared_input_model()
    lowered, count = add_output_qdq(model)
    assert count == 1
    assert _optimized_ops(lowered, tmp_path)["QLinearConv"] == 1
    ref = _session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    low = _session(lowered, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    for x in _inputs((1, 8, 16, 16)):
        np.testing.assert_array_equal(low.run(None, {"x": x})[0], ref.run(None, {"x": x})[0])


def test_add_with_quantized_inputs_becomes_qlinearadd(tmp_path):
    """Residual Add with both inputs quantized (ModelOpt with "Add" in op_types_to_quantize)
    followed by Relu -> Q: the output Q/DQ is inserted after the Add as well."""
    b = _Builder()
    x = b.qdq("x", S_IN)
    y = b.qdq(b.node("Relu", [b.conv(x, 8, 8)]), S_MID)
    y = b.node("Add", [b.qdq(b.conv(y, 8, 8), S_MID), x])
    y = b.qdq(b.node("Relu", [y]), S_MID)
    out = b.conv(y, 8, 4)
    b.nodes.append(helper.make_node("Identity", [out], ["y"], name="out"))
    model = b.model([_image_input()], [("y", [1, 4, 16, 16])])
    lowered, count = add_output_qdq(model)
    assert count == 2  # first Conv, and the Add
    ops = _optimized_ops(lowered, tmp_path)
    assert ops["QLinearAdd"] == 1 and ops["QLinearConv"] == 2  # the last Conv has a float output
    ref = _session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    low = _session(lowered, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    for x in _inputs((1, 8, 16, 16)):
        np.testing.assert_array_equal(low.run(None, {"x": x})[0], ref.run(None, {"x": x})[0])
