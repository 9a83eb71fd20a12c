"""TensorRT readiness (deploykit.export.trt_support): one small hand-built graph per rule, passing and failing,
the project's own graphs, the pixels-in front-end pattern, `deploykit check`, and export refusing a graph."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from deploykit.cli import main
from deploykit.errors import CheckFailed
from deploykit.export.trt_support import OPS, SOURCE, UINT8_RULE, check_readiness, required_plugins

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def const(name, elem, values, shape=None):
    values = np.asarray(values)
    return helper.make_tensor(name, elem, list(values.shape) if shape is None else shape, values.reshape(-1).tolist())


def graph(nodes, inputs, outputs, inits=(), opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def violations(model, manifest=None):
    return check_readiness(model, manifest).violations


def one(model, *, node, rule, words=()):
    """Exactly the violations of ``node``/``rule`` exist (others allowed elsewhere) and name ``words``."""
    found = [v for v in violations(model) if v.node == node and v.rule == rule]
    assert found, [v.line() for v in violations(model)]
    text = " ".join(v.line() for v in found)
    for w in words:
        assert w in text, (w, text)
    return found


def unary(op, elem_in=F, elem_out=None, **attrs):
    return graph([helper.make_node(op, ["x"], ["y"], name="n", **attrs)], [vi("x", elem_in, [1, 4])],
                 [vi("y", elem_out or elem_in, [1, 4])])


# -- ops -----------------------------------------------------------------------------------------


def test_ops_in_the_table_pass_and_others_are_named():
    assert violations(unary("Relu")) == []
    one(unary("Hardmax"), node="n", rule="op", words=["Hardmax (not in the table)", "deploykit's TensorRT support table"])


def test_ort_integer_ops_and_custom_domains_are_refused():
    x, w = vi("x", TensorProto.UINT8, [1, 1, 4, 4]), const("w", TensorProto.UINT8, np.ones((1, 1, 1, 1)))
    s, z = const("s", F, [0.1], []), const("z", TensorProto.UINT8, [0], [])
    q = helper.make_node("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"], ["y"], name="qconv")
    m = graph([q], [x], [vi("y", TensorProto.UINT8, [1, 1, 4, 4])], [w, s, z])
    one(m, node="qconv", rule="op", words=["ONNX Runtime integer kernel", "QuantizeLinear/DequantizeLinear"])
    custom = graph([helper.make_node("Foo", ["x"], ["y"], name="foo", domain="com.example")],
                   [vi("x", F, [1])], [vi("y", F, [1])])
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    one(custom, node="foo", rule="op", words=["'com.example'"])


# -- element types -------------------------------------------------------------------------------


def test_element_types():
    add = graph([helper.make_node("Add", ["a", "b"], ["c"], name="add")], [vi("a", I64, [2]), vi("b", I64, [2])],
                [vi("c", I64, [2])])
    assert violations(add) == []  # INT64 arithmetic is native in TensorRT 10
    one(graph([helper.make_node("MatMul", ["a", "b"], ["c"], name="mm")],
              [vi("a", TensorProto.INT32, [2, 2]), vi("b", TensorProto.INT32, [2, 2])],
              [vi("c", TensorProto.INT32, [2, 2])]), node="mm", rule="type", words=["got INT32"])
    double = graph([helper.make_node("Cast", ["x"], ["y"], name="to_double", to=TensorProto.DOUBLE)],
                   [vi("x", F, [2])], [vi("y", TensorProto.DOUBLE, [2])])
    one(double, node="to_double", rule="attribute", words=["attribute to", "got DOUBLE"])
    one(double, node="to_double", rule="type", words=["no DOUBLE"])


def test_uint8_only_at_the_io_through_cast():
    ok = graph([helper.make_node("Cast", ["img"], ["f"], name="cast", to=F),
                helper.make_node("Transpose", ["f"], ["y"], name="t", perm=[0, 3, 1, 2])],
               [vi("img", TensorProto.UINT8, [1, 4, 4, 3])], [vi("y", F, [1, 3, 4, 4])])
    assert violations(ok) == []
    bad = graph([helper.make_node("Transpose", ["img"], ["t"], name="t", perm=[0, 3, 1, 2]),
                 helper.make_node("Cast", ["t"], ["y"], name="cast", to=F)],
                [vi("img", TensorProto.UINT8, [1, 4, 4, 3])], [vi("y", F, [1, 3, 4, 4])])
    one(bad, node="t", rule="type", words=["got UINT8"])


def test_uint8_is_cast_from_and_to_float_only():
    """NvInferRuntimeBase.h DataType::kUINT8: conversions only to/from FLOAT and HALF (no BOOL -> UINT8)."""
    for elem, ok in ((F, True), (TensorProto.FLOAT16, True), (TensorProto.BOOL, False), (TensorProto.INT32, False)):
        model = unary("Cast", elem_in=elem, elem_out=TensorProto.UINT8, to=TensorProto.UINT8)
        if ok:
            assert violations(model) == [], elem
        else:
            one(model, node="n", rule="type", words=["-> UINT8", "FLOAT or FLOAT16", "DataType::kUINT8"])
    one(unary("Cast", elem_in=TensorProto.UINT8, elem_out=TensorProto.INT32, to=TensorProto.INT32), node="n",
        rule="type", words=["UINT8 -> INT32", "got INT32"])


def test_int8_only_between_quantize_and_dequantize():
    s, z = const("s", F, [0.1], []), const("z", TensorProto.INT8, [0], [])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    assert violations(graph(nodes, [vi("x", F, [4])], [vi("y", F, [4])], [s, z])) == []
    nodes.append(helper.make_node("Identity", ["q"], ["q2"], name="leak"))
    m = graph(nodes, [vi("x", F, [4])], [vi("y", F, [4]), vi("q2", TensorProto.INT8, [4])], [s, z])
    one(m, node="leak", rule="type", words=["input 0 ('q')", "got INT8"])


def test_quantize_zero_points_must_be_zero_int8():
    def qdq(zp_elem, zp):
        s, z = const("s", F, [0.1], []), const("z", zp_elem, [zp], [])
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
        return graph(nodes, [vi("x", F, [4])], [vi("y", F, [4])], [s, z])

    assert violations(qdq(TensorProto.INT8, 0)) == []
    one(qdq(TensorProto.INT8, 3), node="q", rule="attribute", words=["zero point", "all zeros", "1 non-zero"])
    one(qdq(TensorProto.UINT8, 0), node="q", rule="type", words=["zero point element type", "UINT8"])


# -- attributes and constant inputs --------------------------------------------------------------


def _topk(sorted_=1, k=2, k_const=True):
    inits = [const("k", I64, [k])] if k_const else []
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", sorted=sorted_)]
    inputs = [vi("x", F, [1, 5000])] + ([] if k_const else [vi("k", I64, [1])])
    return graph(nodes, inputs, [vi("v", F, [1, k]), vi("i", I64, [1, k])], inits)


def test_topk_sorted_k_limit_and_constant_k():
    assert violations(_topk()) == [] and violations(_topk(k=3840)) == []
    one(_topk(sorted_=0), node="topk", rule="attribute", words=["attribute sorted", "got 0"])
    one(_topk(k=3841), node="topk", rule="attribute", words=["K <= 3840", "got 3841"])
    one(_topk(k_const=False), node="topk", rule="constant-input", words=["input 1 ('k')", "an initializer"])


def _resize(**attrs):
    sizes = const("sizes", I64, [1, 3, 8, 8])
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="resize", **attrs)
    return graph([node], [vi("x", F, [1, 3, 4, 4])], [vi("y", F, [1, 3, 8, 8])], [sizes])


def test_resize_modes():
    for ctm in ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners"):
        assert violations(_resize(mode="linear", coordinate_transformation_mode=ctm)) == [], ctm
    assert violations(_resize(mode="nearest", nearest_mode="floor")) == []
    one(_resize(mode="cubic"), node="resize", rule="attribute", words=["attribute mode", "'cubic'"])
    one(_resize(mode="linear", antialias=1), node="resize", rule="attribute", words=["antialias"])
    one(_resize(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"), node="resize",
        rule="attribute", words=["coordinate_transformation_mode", "'tf_crop_and_resize'"])
    one(_resize(mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn", nearest_mode="floor"),
        node="resize", rule="attribute", words=["round_prefer_floor with tf_half_pixel_for_nn"])
    one(_resize(mode="linear", keep_aspect_ratio_policy="not_larger"), node="resize", rule="attribute",
        words=["keep_aspect_ratio_policy"])


def test_resize_linear_scales_on_the_last_three_axes_only():
    def scaled(scales):
        node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="resize", mode="linear")
        return graph([node], [vi("x", F, [2, 3, 4, 4])], [vi("y", F, None)], [const("s", F, scales)])

    assert violations(scaled([1, 1, 2, 2])) == []
    one(scaled([2, 1, 2, 2]), node="resize", rule="attribute", words=["last three axes"])


def test_roialign_attributes_and_plugin():
    def roi(**attrs):
        node = helper.make_node("RoiAlign", ["x", "rois", "idx"], ["y"], name="roi", output_height=2, output_width=2,
                                **attrs)
        return graph([node], [vi("x", F, [1, 4, 8, 8])], [vi("y", F, [2, 4, 2, 2])],
                     [const("rois", F, np.zeros((2, 4))), const("idx", I64, [0, 0])], opset=17)

    ok = roi(coordinate_transformation_mode="output_half_pixel", sampling_ratio=2)
    assert violations(ok) == [] and required_plugins(ok) == ["ROIAlign_TRT v2"]
    one(roi(sampling_ratio=-1), node="roi", rule="attribute", words=["sampling_ratio", ">= 0"])
    assert required_plugins(unary("Relu")) == []


def _reduce_axes(computed: bool):
    nodes, inits = [], [const("ax", I64, [1])]
    if computed:  # axes = Shape(x)[0] - 1, computed in the graph: TensorRT reads axes at build time
        nodes += [helper.make_node("Shape", ["x"], ["s"], name="shape"),
                  helper.make_node("Slice", ["s", "z", "one"], ["ax0"], name="first"),
                  helper.make_node("Sub", ["ax0", "ax"], ["axes"], name="minus")]
        inits += [const("z", I64, [0]), const("one", I64, [1])]
    nodes.append(helper.make_node("ReduceSum", ["x", "axes" if computed else "ax"], ["y"], name="sum", keepdims=0))
    return graph(nodes, [vi("x", F, [2, 4])], [vi("y", F, [2])], inits)


def test_reduce_axes_must_be_constant():
    assert violations(_reduce_axes(False)) == []
    one(_reduce_axes(True), node="sum", rule="constant-input", words=["input 1 ('axes')", "a computed tensor"])


# -- shape tensors and output shapes ------------------------------------------------------------


def _reshape_from(shape_nodes, shape_name, inits=(), extra_inputs=()):
    nodes = list(shape_nodes) + [helper.make_node("Reshape", ["x", shape_name], ["y"], name="reshape")]
    return graph(nodes, [vi("x", F, ["batch", 4, 4])] + list(extra_inputs), [vi("y", F, ["batch", 16])], inits)


def test_shape_inputs_computed_from_shapes_pass():
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "i0"], ["b"], name="batch", axis=0),
             helper.make_node("Concat", ["b", "c16"], ["shape_out"], name="concat", axis=0)]
    assert violations(_reshape_from(nodes, "shape_out", [const("i0", I64, [0]), const("c16", I64, [16])])) == []


def test_shape_inputs_from_tensor_values_are_data_dependent():
    nodes = [helper.make_node("ReduceMax", ["x", "ax"], ["m"], name="max_value", keepdims=0),
             helper.make_node("Cast", ["m"], ["mi"], name="to_int", to=I64),
             helper.make_node("Concat", ["mi", "c16"], ["shape_out"], name="concat", axis=0)]
    m = _reshape_from(nodes, "shape_out", [const("ax", I64, [1, 2]), const("c16", I64, [16])])
    one(m, node="reshape", rule="shape-tensor",
        words=["values of graph input 'x', read by ReduceMax node 'max_value'", "data-dependent shape"])


def test_shape_inputs_from_graph_input_values_are_refused():
    m = _reshape_from([], "target", extra_inputs=[vi("target", I64, [2])])
    one(m, node="reshape", rule="shape-tensor", words=["values of graph input 'target'"])


def test_shape_tensors_stay_small_and_one_dimensional():
    ones = const("ones", I64, np.ones(100, np.int64))
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Concat", ["s", "ones"], ["big"], name="big_concat", axis=0),
             helper.make_node("ReduceSum", ["big", "ax"], ["n"], name="total", keepdims=0),
             helper.make_node("Range", ["zero", "n", "step"], ["y"], name="range")]
    m = graph(nodes, [vi("x", F, [2, 4])], [vi("y", I64, ["n"])],
              [ones, const("ax", I64, [0]), const("zero", I64, 0, []), const("step", I64, 1, [])])
    one(m, node="range", rule="shape-tensor", words=["Concat node 'big_concat' making 102 values", "at most 64"])
    rank2 = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Unsqueeze", ["s", "ax"], ["s2"], name="to_rank2"),
             helper.make_node("Reshape", ["s2", "flat"], ["sf"], name="flatten_shape")]
    m2 = _reshape_from(rank2, "sf", [const("ax", I64, [0]), const("flat", I64, [-1])])
    one(m2, node="reshape", rule="shape-tensor", words=["Unsqueeze node 'to_rank2' making a rank-2 tensor"])


def test_data_dependent_shapes_must_not_reach_an_output():
    m = graph([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [vi("x", F, [1, 8])], [vi("y", I64, [2, "n"])])
    one(m, node="graph", rule="output-shape", words=["output 'y' dimension 1", "from NonZero node 'nz'"])
    batch = graph([helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x", F, ["batch", 8])],
                  [vi("y", F, ["batch", 8])])
    assert violations(batch) == []  # a symbol of a graph-input dimension is fine


def test_ort_lowering_manifest_is_refused():
    m = unary("Relu")
    assert violations(m, {"precision": {"mode": "int8"}}) == []
    (v,) = violations(m, {"precision": {"mode": "int8", "ort_lowering": {"output_qdq_pairs": 7}}})
    assert v.node == "manifest" and v.line().startswith("manifest precision: precision.ort_lowering")
    assert "ONNX Runtime CPU only" in v.got and "7 output Q/DQ pairs" in v.got


def pixels_in_front_end(floor_in_float: bool = False):
    """The pixels-in detector front end as the lead's graphs build it: uint8 NHWC in, torchvision's resize rule in
    int64 shape arithmetic, bilinear Resize to computed sizes, zero-pad to a multiple of 32 with computed pads,
    anchors from Range over the padded size, and an Expand to [B, K, 4]."""
    c = lambda name, v: const(name, I64, v, [] if np.ndim(v) == 0 else None)  # noqa: E731
    inits = [c("i0", 0), c("i1", 1), c("i2", 2), c("min_size", 800), c("max_size", 1333), c("d32", 32),
             c("three", [3]), c("zeros6", [0, 0, 0, 0, 0, 0]), c("ax0", [0]), c("k4", [10, 4]), c("one", 1),
             const("box", F, np.zeros((1, 1, 4), np.float32)), const("ratio", F, [1.0], [])]
    n = helper.make_node
    nodes = [
        n("Cast", ["image"], ["f"], name="to_float", to=F),
        n("Transpose", ["f"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        n("Shape", ["f"], ["s"], name="shape"),  # the dimensions of the float copy: UINT8 is read by Cast only
        n("Gather", ["s", "i0"], ["b"], name="b"), n("Gather", ["s", "i1"], ["h"], name="h"),
        n("Gather", ["s", "i2"], ["w"], name="w"),
        n("Min", ["h", "w"], ["short"], name="short"), n("Max", ["h", "w"], ["long"], name="long"),
        # scale = min(800 / short, 1333 / long): compare 800 * long with 1333 * short in integers
        n("Mul", ["long", "min_size"], ["a"], name="a"), n("Mul", ["short", "max_size"], ["bb"], name="bb"),
        n("Less", ["a", "bb"], ["by_short"], name="by_short"),
        n("Where", ["by_short", "min_size", "max_size"], ["num"], name="num"),
        n("Where", ["by_short", "short", "long"], ["den"], name="den"),
    ]
    if floor_in_float:  # floor(h * scale) in float: Floor is no shape-tensor op in TensorRT
        nodes += [n("Cast", ["num"], ["numf"], name="numf", to=F), n("Cast", ["den"], ["denf"], name="denf", to=F),
                  n("Div", ["numf", "denf"], ["scale"], name="scale"),
                  n("Cast", ["h"], ["hf"], name="hf", to=F), n("Mul", ["hf", "scale"], ["nhf"], name="nhf"),
                  n("Floor", ["nhf"], ["nhfl"], name="floor_h"), n("Cast", ["nhfl"], ["nh"], name="nh", to=I64)]
    else:
        nodes += [n("Mul", ["h", "num"], ["hn"], name="hn"), n("Div", ["hn", "den"], ["nh"], name="nh")]
    nodes += [
        n("Mul", ["w", "num"], ["wn"], name="wn"), n("Div", ["wn", "den"], ["nw"], name="nw"),
        n("Unsqueeze", ["b", "ax0"], ["b1"], name="b1"), n("Unsqueeze", ["nh", "ax0"], ["nh1"], name="nh1"),
        n("Unsqueeze", ["nw", "ax0"], ["nw1"], name="nw1"),
        n("Concat", ["b1", "three", "nh1", "nw1"], ["sizes"], name="sizes", axis=0),
        n("Resize", ["nchw", "", "", "sizes"], ["resized"], name="resize", mode="linear",
          coordinate_transformation_mode="pytorch_half_pixel"),
        # bottom/right padding to a multiple of 32: (32 - n % 32) % 32
        n("Mod", ["nh1", "d32"], ["rh"], name="rh"), n("Sub", ["d32", "rh"], ["ph0"], name="ph0"),
        n("Mod", ["ph0", "d32"], ["ph"], name="ph"),
        n("Mod", ["nw1", "d32"], ["rw"], name="rw"), n("Sub", ["d32", "rw"], ["pw0"], name="pw0"),
        n("Mod", ["pw0", "d32"], ["pw"], name="pw"),
        n("Concat", ["zeros6", "ph", "pw"], ["pads"], name="pads", axis=0),
        n("Pad", ["resized", "pads"], ["padded"], name="pad", mode="constant"),
        n("Pad", ["resized", "pads"], ["edged"], name="pad_edge", mode="edge"),
        n("ReduceSum", ["pads", "ax0"], ["pad_total"], name="pad_total", keepdims=0),
        n("Equal", ["pad_total", "i0"], ["unpadded"], name="unpadded"),
        n("Greater", ["nh", "nw"], ["tall"], name="tall"),
        # anchors: Range over the padded height, a ConstantOfShape grid
        n("Add", ["nh", "ph"], ["hp1"], name="hp1"), n("Squeeze", ["hp1", "ax0"], ["hp"], name="hp"),
        n("Range", ["i0", "hp", "d32"], ["ys"], name="ys"),
        n("Concat", ["ph", "pw"], ["grid_shape"], name="grid_shape", axis=0),
        n("ConstantOfShape", ["grid_shape"], ["grid"], name="grid", value=const("v", F, [1.0], [1])),
        n("Concat", ["b1", "k4"], ["out_shape"], name="out_shape", axis=0),
        n("Expand", ["box", "out_shape"], ["boxes"], name="boxes"),
    ]
    return graph(nodes, [vi("image", TensorProto.UINT8, ["batch", "height", "width", 3])],
                 [vi("boxes", F, ["batch", 10, 4])], inits)


def test_pixels_in_front_end_pattern_passes():
    model = pixels_in_front_end()
    onnx.checker.check_model(model, full_check=True)
    r = check_readiness(model)
    assert r.ok, [v.line() for v in r.violations]
    for op in ("Resize", "Pad", "Range", "Expand", "ConstantOfShape", "Where", "Mod", "ReduceSum", "Cast"):
        assert r.ops[op] >= 1 and op in OPS


def test_pixels_in_front_end_with_float_floor_names_the_floor():
    one(pixels_in_front_end(floor_in_float=True), node="resize", rule="shape-tensor",
        words=["Floor node 'floor_h'", "data-dependent shape"])


# -- the project's graphs, the CLI, export ----------------------------------------------------


def test_project_graphs_are_ready(demo_detector_pixels_onnx, demo_generator_onnx):
    det = check_readiness(onnx.load(str(demo_detector_pixels_onnx)))  # pixels in: uint8 read by one Cast
    assert det.ok, [v.line() for v in det.violations]
    assert det.plugins == ["ROIAlign_TRT v2"] and det.ops["RoiAlign"] >= 1 and det.ops["NonMaxSuppression"] >= 1
    gen = check_readiness(onnx.load(str(demo_generator_onnx)))
    assert gen.ok and gen.plugins == []


def test_cli_check(demo_detector_pixels_onnx, tmp_path):
    out = tmp_path / "report.json"
    r = CliRunner().invoke(main, ["check", str(demo_detector_pixels_onnx), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1].startswith("pix.onnx: ready for TensorRT")
    report = json.loads(out.read_text())
    assert report["ready"] and report["plugins"] == ["ROIAlign_TRT v2"] and report["needs_standard_plugins"]
    assert report["table"]["matrix"] == SOURCE["matrix"] and report["violations"] == []

    bad = tmp_path / "topk.onnx"
    onnx.save(_topk(sorted_=0, k=3841), str(bad))
    r = CliRunner().invoke(main, ["check", str(bad), "--json", str(out)])
    assert r.exit_code == 1, r.output
    lines = r.output.rstrip().splitlines()
    assert lines[:2] == ["  node 'topk' (TopK): attribute sorted: expected one of {1}, got 0",
                         "  node 'topk' (TopK): K: expected 0 <= K <= 3840 (TensorRT's TopK limit), got 3841"]
    assert "NOT ready for TensorRT: 2 violation(s)" in lines[2] and lines[3].startswith("error:")
    assert [v["rule"] for v in json.loads(out.read_text())["violations"]] == ["attribute", "attribute"]

    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    for path in (tmp_path / "junk.onnx", tmp_path / "missing.onnx"):
        r = CliRunner().invoke(main, ["check", str(path)])
        assert r.exit_code == 2 and r.output.startswith("error:") and "\n" not in r.output.strip(), r.output


def test_cli_check_refuses_uint8_read_by_shape(demo_detector_pixels_onnx, tmp_path):
    """Pixels-in graphs exported before the front end read its Shape from the float copy: `image` (UINT8) fed
    Shape too. onnx-tensorrt's operators.md (UINT8 I/O only, no UINT8 for Shape) and NvInfer.h's kUINT8 (convert
    before other layers) are stricter than IShapeLayer (any type): deploykit check follows the stricter."""
    model = onnx.load(str(demo_detector_pixels_onnx))
    (cast,) = [n for n in model.graph.node if "image" in n.input]
    assert cast.op_type == "Cast"  # the fresh export: nothing else reads the uint8 input
    shape = next(n for n in model.graph.node if n.op_type == "Shape" and list(n.input) == [cast.output[0]])
    shape.input[0] = "image"  # the old-style front end
    old = tmp_path / "old_style.onnx"
    onnx.save(model, str(old))
    out = tmp_path / "report.json"
    r = CliRunner().invoke(main, ["check", str(old), "--json", str(out)])
    assert r.exit_code == 1, r.output
    lines = r.output.rstrip().splitlines()
    assert lines[0] == (f"  node {shape.name!r} (Shape): input 0 ('image') element type: expected {UINT8_RULE}, "
                        "got UINT8")
    assert "onnx-tensorrt docs/operators.md" in lines[0] and "NvInfer.h" in lines[0]
    assert "NOT ready for TensorRT: 1 violation(s)" in lines[1] and lines[2].startswith("error:")
    report = json.loads(out.read_text())
    assert [(v["node"], v["rule"]) for v in report["violations"]] == [(shape.name, "type")]
    assert report["table"]["uint8"] == SOURCE["uint8"] and "NvInferRuntimeBase.h" in SOURCE["uint8"]
    assert "UINT8" not in OPS["Shape"].types and "UINT8" not in OPS["Size"].types


def test_export_fails_on_a_graph_tensorrt_cannot_parse(tmp_path):
    import torch

    from deploykit.export import export_module

    class Double(torch.nn.Module):
        def forward(self, x):
            return (x.double() * 2).float()

    out = tmp_path / "double.onnx"
    with pytest.raises(CheckFailed, match="DOUBLE") as info:
        export_module(Double(), (torch.ones(1, 4),), out, input_names=["x"], output_names=["y"])
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written
