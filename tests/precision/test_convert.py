"""FP16/INT8 conversion with ModelOpt under deploykit's policies, on the demo models."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("modelopt.onnx.quantization")

from deploykit.errors import BadInput, CheckFailed  # noqa: E402
from deploykit.manifest import read_manifest  # noqa: E402
from deploykit.precision.budget import Budget, layer_sensitivity, meet_budget, parse_budget  # noqa: E402
from deploykit.precision.convert import convert, dequantize_nodes, module_of, quantized_nodes  # noqa: E402


def _run(path_or_model, feeds):
    data = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    batch = session.get_inputs()[0].shape[0]
    outs = []
    for i in range(0, len(next(iter(feeds.values()))), batch):
        outs.append(session.run(None, {k: v[i:i + batch] for k, v in feeds.items()}))
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]


def _psnr(a, b):
    mse = float(np.mean(((a - b) / 2.0) ** 2))  # images in [-1, 1] -> peak 1 on [0, 1]
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.fixture(scope="module")
def det_int8(demo_detector_onnx, detector_feeds, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "det_int8.onnx"
    manifest = convert(demo_detector_onnx, out, "int8", feeds=detector_feeds,
                       calibration={"source": "synthetic test", "samples": 8})
    return out, manifest


def test_detector_int8_policy_keeps_coordinates_fp32(det_int8, demo_detector_onnx):
    out, manifest = det_int8
    model = onnx.load(str(out))
    fp32 = onnx.load(str(demo_detector_onnx))
    modules = {n.name: module_of(n) or "" for n in fp32.graph.node}
    quantized = quantized_nodes(model)
    assert len(quantized) >= 20
    ops = {n.name: n.op_type for n in model.graph.node}
    for name in quantized:
        module = modules[name]
        assert module.startswith(("backbone", "rpn_head", "box_head", "box_predictor")), (name, module)
        assert not module.endswith("bbox_pred"), f"box-delta predictor {name} was quantized"
    # every RoiAlign / NMS / TopK input is FP32 and not a dequantized tensor
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.op_type in ("RoiAlign", "NonMaxSuppression", "TopK"):
            assert not any(i in dq for i in node.input), node.name
    assert {"Conv", "Gemm"} <= {ops[n] for n in quantized}
    p = manifest["precision"]
    assert p["mode"] == "int8" and p["calibration"]["method"] == "entropy"
    assert p["calibration"]["samples"] == 8 and p["tool"].startswith("nvidia-modelopt")
    assert p["source"]["sha256"] == read_manifest(demo_detector_onnx)["artifact"]["sha256"]
    assert any(modules[n] == "rpn_head.bbox_pred" for n in p["kept_high_precision"])
    assert len(p["kept_high_precision"]) + p["low_precision_nodes"] == len(fp32.graph.node)
    # the written manifest verifies against the written graph
    assert read_manifest(out)["artifact"]["sha256"]


def test_modelopt_input_file_untouched(det_int8, demo_detector_onnx):
    # ModelOpt's quantize() rewrites its input in place; convert() must hand it a copy.
    assert read_manifest(demo_detector_onnx, verify=True)


def test_dequantize_all_layers_gives_the_fp32_graph_exactly(det_int8, demo_detector_onnx, detector_feeds):
    out, _ = det_int8
    int8, fp32 = onnx.load(str(out)), onnx.load(str(demo_detector_onnx))
    back = dequantize_nodes(int8, quantized_nodes(int8), fp32)
    assert not [n for n in back.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    feeds = {k: v[:2] for k, v in detector_feeds.items()}
    for a, b in zip(_run(back, feeds), _run(fp32, feeds)):
        np.testing.assert_array_equal(a, b)
    # ...while the INT8 graph itself differs (the comparison can fail)
    scores8 = _run(int8, feeds)[2]
    assert not np.array_equal(scores8, _run(fp32, feeds)[2])


def test_sensitivity_ranks_every_quantized_layer(det_int8, demo_detector_onnx, detector_feeds):
    out, _ = det_int8
    int8, fp32 = onnx.load(str(out)), onnx.load(str(demo_detector_onnx))
    ranking = layer_sensitivity(int8, fp32, detector_feeds, samples=4)
    assert {r["node"] for r in ranking} == set(quantized_nodes(int8))
    errors = [r["rel_error"] for r in ranking]
    assert errors == sorted(errors, reverse=True)
    assert errors[0] > 1e-4 and all(e >= 0 for e in errors)
    assert all(r["module"] for r in ranking)  # module paths come from the FP32 graph


def test_detector_fp16_policy(demo_detector_onnx, detector_feeds, tmp_path):
    out = tmp_path / "det_fp16.onnx"
    manifest = convert(demo_detector_onnx, out, "fp16", feeds=detector_feeds)
    model = onnx.load(str(out))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT] * 2
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for node in inferred.graph.node:
        if node.op_type in ("RoiAlign", "NonMaxSuppression", "TopK", "Exp"):
            for name in node.input:
                assert types.get(name, onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT16, (node.name, name)
    assert manifest["precision"]["mode"] == "fp16" and manifest["precision"]["low_precision_nodes"] > 30
    fp32 = _run(demo_detector_onnx, {k: v[:2] for k, v in detector_feeds.items()})
    fp16 = _run(out, {k: v[:2] for k, v in detector_feeds.items()})
    top = fp32[2] > 0.5
    assert np.abs(fp32[2][top] - fp16[2][top]).max() < 0.02


@pytest.mark.slow
def test_generator_int8_and_fp16_psnr(demo_generator_onnx, spade_feeds, tmp_path):
    ref = _run(demo_generator_onnx, spade_feeds)[0]
    for precision, floor in (("fp16", 45.0), ("int8", 30.0)):
        out = tmp_path / f"g_{precision}.onnx"
        manifest = convert(demo_generator_onnx, out, precision, feeds=spade_feeds)
        model = onnx.load(str(out))
        kept = set(manifest["precision"]["kept_high_precision"])
        fp32 = onnx.load(str(demo_generator_onnx))
        for node in fp32.graph.node:
            last = (module_of(node) or "").rsplit(".", 1)[-1]
            if last.startswith("norm") or node.op_type == "InstanceNormalization":
                assert node.name in kept, f"normalisation node {node.name} left FP32"
        if precision == "int8":
            assert quantized_nodes(model)
        psnr = _psnr(_run(out, spade_feeds)[0], ref)
        assert floor <= psnr < math.inf, (precision, psnr)


def test_budget_search_moves_the_fewest_layers(det_int8, demo_detector_onnx, detector_feeds):
    """A real metric (score PSNR vs FP32 on 4 images) and a budget between all-INT8 and FP32."""
    out, _ = det_int8
    feeds = {k: v[:4] for k, v in detector_feeds.items()}
    reference = _run(demo_detector_onnx, feeds)

    def evaluate(candidate):
        outs = _run(candidate, feeds)
        # boxes error of the top-scoring rows: a continuous stand-in for mAP
        return float(np.abs(outs[1][:, :5] - reference[1][:, :5]).max())

    all_int8 = evaluate(out)
    assert all_int8 > 0
    budget = Budget("map-drop", all_int8 / 4)  # 'max' direction: smaller is better
    result = meet_budget(out, demo_detector_onnx, budget, evaluate, detector_feeds, fp32_value=0.0)
    assert result.met and budget.met(result.value)
    k = len(result.moved)
    assert 1 <= k <= len(quantized_nodes(onnx.load(str(out))))
    tried = {e["moved"]: e["value"] for e in result.evaluations}
    if k - 1 in tried:
        assert not budget.met(tried[k - 1])
    assert set(result.latency_ms) == {"all_int8", "with_fp32_layers", "cost_percent"}
    # a budget even FP32 misses is refused
    with pytest.raises(CheckFailed, match="cannot be met even in FP32"):
        meet_budget(out, demo_detector_onnx, Budget("map-drop", -1.0), evaluate, detector_feeds, fp32_value=0.0)


@pytest.mark.parametrize("spec", ["", "map-drop", "map-drop=", "psnr=abc", "mAP=1", "speed=2", "psnr=nan"])
def test_malformed_budget(spec):
    with pytest.raises(BadInput, match="--accuracy-budget"):
        parse_budget(spec)


def test_budget_must_fit_the_model():
    assert parse_budget("map-drop=0.5", "detector") == Budget("map-drop", 0.5)
    assert parse_budget(" psnr = 35 ", "generator").limit == 35.0
    with pytest.raises(BadInput, match="for a generator"):
        parse_budget("map-drop=0.5", "generator")
    assert Budget("psnr", 35).met(36) and not Budget("psnr", 35).met(34)
    assert Budget("map-drop", 0.5).met(0.4) and not Budget("map-drop", 0.5).met(0.6)


def test_convert_refusals(demo_detector_onnx, detector_feeds, tmp_path):
    with pytest.raises(BadInput, match="precision"):
        convert(demo_detector_onnx, tmp_path / "x.onnx", "int4", feeds=detector_feeds)
    with pytest.raises(BadInput, match="calibration data"):
        convert(demo_detector_onnx, tmp_path / "x.onnx", "int8", feeds=None)
    with pytest.raises(BadInput, match="calibration method"):
        convert(demo_detector_onnx, tmp_path / "x.onnx", "int8", feeds=detector_feeds, method="minmax")
    with pytest.raises(BadInput, match="the source itself"):
        convert(demo_detector_onnx, demo_detector_onnx, "fp16")
    assert not list(tmp_path.iterdir())


def test_converted_graph_is_not_converted_again(det_int8, detector_feeds, tmp_path):
    out, _ = det_int8
    with pytest.raises(BadInput, match="an fp32 graph"):
        convert(out, tmp_path / "again.onnx", "int8", feeds=detector_feeds)
    assert json.loads(out.with_suffix(".json").read_text())["precision"]["mode"] == "int8"


def test_restore_casts_autocast_dropped():
    """ModelOpt 0.47 can drop Cast(bool->float) before ReduceSum; deploykit puts it back."""
    from onnx import TensorProto, helper

    from deploykit.precision.convert import restore_dropped_casts

    graph = helper.make_graph(
        [helper.make_node("Cast", ["mask"], ["maskf"], name="cast", to=TensorProto.FLOAT),
         helper.make_node("ReduceSum", ["maskf"], ["count"], name="sum", keepdims=0)],
        "g", [helper.make_tensor_value_info("mask", TensorProto.BOOL, [2, 3])],
        [helper.make_tensor_value_info("count", TensorProto.FLOAT, [])])
    source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    broken = onnx.ModelProto()
    broken.CopyFrom(source)
    del broken.graph.node[0]
    broken.graph.node[0].input[0] = "mask"  # what AutoCast left behind
    with pytest.raises(Exception):
        onnx.checker.check_model(broken, full_check=True)
    fixed = restore_dropped_casts(source, broken)
    onnx.checker.check_model(fixed, full_check=True)
    mask = np.array([[True, False, True], [True, True, False]])
    session = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"mask": mask})[0] == 4.0


def _tiny_detector(path, hw: int = 32):
    """Three Conv+Relu blocks tagged as a detector backbone, with a manifest: a deploykit graph
    that ``convert`` takes, small enough to calibrate on many samples in a second."""
    from onnx import TensorProto, helper, numpy_helper

    from deploykit.export.onnx_export import SCOPE_KEY
    from deploykit.manifest import write_manifest

    rng = np.random.default_rng(0)
    channels, nodes, inits, x = [3, 8, 8, 8], [], [], "images"
    for i in range(3):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, (channels[i + 1], channels[i], 3, 3))
                                             .astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    for node in nodes:
        node.metadata_props.add(key=SCOPE_KEY, value="backbone.body")
    shape_in, shape_out = [1, 3, hw, hw], [1, 8, hw, hw]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape_out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    write_manifest(path, {"kind": "detector", "model": {"name": "tiny"},
                          "inputs": [{"name": "images", "dtype": "float32", "shape": shape_in}],
                          "outputs": [{"name": x, "dtype": "float32", "shape": shape_out}],
                          "batch": {"dynamic": False, "min": 1, "opt": 1, "max": 1}})
    return path


@pytest.mark.parametrize("method", ["entropy", "max"])
def test_int8_calibration_memory_does_not_grow_with_samples(tmp_path, monkeypatch, method):
    """Each calibration run's outputs (one sample's tensors) are released before the run after
    next: ModelOpt folds every batch into the ranges (max) or histograms (entropy) as it goes,
    so the default 128 samples, or 512, take the memory of one."""
    import weakref

    src = _tiny_detector(tmp_path / "tiny.onnx")
    runs: list[list[weakref.ref]] = []  # weak references to what each ONNX Runtime run returned
    most_alive = [0]
    real_run = ort.InferenceSession.run

    def run(self, *args, **kwargs):
        most_alive[0] = max(most_alive[0], sum(any(r() is not None for r in refs) for refs in runs))
        outputs = real_run(self, *args, **kwargs)
        runs.append([weakref.ref(o) for o in outputs if isinstance(o, np.ndarray)])
        return outputs

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    samples = 24
    feeds = {"images": np.random.default_rng(1).normal(0, 1, (samples, 3, 32, 32)).astype(np.float32)}
    manifest = convert(src, tmp_path / "q.onnx", "int8", feeds=feeds, method=method)
    assert manifest["precision"]["calibration"]["method"] == method
    assert len(runs) >= samples  # one calibration run per sample
    assert most_alive[0] <= 2, f"{most_alive[0]} earlier runs' outputs alive at once (of {len(runs)} runs)"


def test_policies_keep_squeeze_excitation_convs_fp32():
    """A Conv on a globally pooled 1x1 vector stays FP32 even inside an eligible module."""
    from onnx import TensorProto, helper, numpy_helper

    from deploykit.precision.convert import policy_for

    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    w3 = numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w3")
    nodes = [helper.make_node("Conv", ["x", "w3"], ["y"], name="spatial", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["y"], ["p"], name="pool"),
             helper.make_node("Conv", ["p", "w"], ["s"], name="se_fc"),
             helper.make_node("Mul", ["y", "s"], ["z"], name="scale")]
    for n in nodes:
        n.metadata_props.add(key="deploykit.module", value="backbone.body.4.block.2")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8])], [w, w3])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    policy = policy_for("detector").apply(model)
    assert "se_fc" in policy.kept and "spatial" in policy.low_precision and "scale" in policy.low_precision


def test_fp16_range_check_uses_the_samples_that_fit(demo_detector_onnx, detector_feeds, tmp_path, monkeypatch):
    from deploykit.precision import convert as precision

    per_sample = precision.activation_bytes_per_sample(onnx.load(str(demo_detector_onnx)))
    monkeypatch.setattr(precision, "available_memory", lambda: int(per_sample * 6))  # half of it: 3 samples
    messages = []
    manifest = convert(demo_detector_onnx, tmp_path / "f.onnx", "fp16", feeds=detector_feeds, log=messages.append)
    assert manifest["precision"]["calibration"]["range_check_samples"] == 3
    assert any("range check on 3 of 8 samples" in m for m in messages)
