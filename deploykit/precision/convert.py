"""FP16 and INT8 ONNX graphs with NVIDIA ModelOpt, under model-aware policies.

TensorRT 11 builds strongly typed networks only, so precision is written into
the ONNX graph: FP16 as Casts (ModelOpt AutoCast, I/O types kept) and INT8 as
explicit QuantizeLinear/DequantizeLinear pairs (ModelOpt ONNX PTQ: per-channel
symmetric weights, entropy or max calibration). deploykit does not
re-implement either; it decides *which nodes* may leave FP32, which ModelOpt
cannot know:

* **both** -- convolutions on globally pooled 1x1 vectors (squeeze-excitation
  blocks) stay FP32: free, and measured the most INT8-sensitive layers.
* **detector** -- only the feature computation may run in reduced precision:
  the backbone, the FPN, the RPN head's shared 3x3 conv and the box head's
  fc6/fc7. Everything that carries box coordinates or thresholds stays FP32:
  baked anchors, the predictors (RPN objectness and deltas, class scores and
  box deltas: small 1x1 convs / FCs whose outputs are compared with
  thresholds or become coordinates), decoding, clipping, RoiAlign and its
  coordinates, NMS inputs, score comparisons, and the padding-emulation
  masks' comparisons.
* **generator** (SPADE) -- the convolutions (the SPADE MLPs, the residual
  blocks, ``conv_img``) may; normalisation statistics (``param_free_norm``:
  instance-norm means and variances, folded batch-norm affine) stay FP32, and
  AutoCast keeps any node whose values, measured on the calibration data,
  exceed FP16's safe range (``data_max``).

The node-to-module mapping comes from the ``deploykit.module`` metadata the
exporter writes on every node. The manifest of the result records the
precision, the calibration (method, samples, source), the source graph and
its sha256, and the nodes kept in higher precision.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from ..errors import BadInput, CheckFailed, expected_got
from ..export.onnx_export import SCOPE_KEY
from ..fileio import scratch_dir, sha256_file
from ..manifest import read_manifest, write_artifact

__all__ = ["PRECISIONS", "METHODS", "Policy", "policy_for", "convert", "quantized_nodes",
           "dequantize_nodes", "module_of"]

PRECISIONS = ("fp32", "fp16", "int8")
METHODS = ("entropy", "max")

# Ops that compute features; anything else (comparisons, casts, index
# arithmetic, Where, Gather...) stays FP32 even inside an eligible module.
FEATURE_OPS = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "LeakyRelu", "Add", "Mul", "Sub", "Div",
    "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Resize", "Sigmoid",
    "HardSigmoid", "HardSwish", "Clip", "Tanh", "Concat", "Reshape", "Flatten", "Transpose",
    "Squeeze", "Unsqueeze", "Pad", "Identity",
}
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def module_of(node: onnx.NodeProto) -> str | None:
    for prop in node.metadata_props:
        if prop.key == SCOPE_KEY:
            return prop.value
    return None


@dataclass
class Policy:
    """Which nodes of a graph may run in FP16/INT8, and why the others may not."""

    kind: str
    description: str
    eligible: Callable[[onnx.NodeProto, str], bool]
    low_precision: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def apply(self, model: onnx.ModelProto) -> "Policy":
        missing = [n.name for n in model.graph.node if module_of(n) is None]
        if len(missing) == len(model.graph.node):
            raise BadInput(expected_got("ONNX graph", f"node metadata '{SCOPE_KEY}' written by deploykit export "
                                        "(re-export with this deploykit version)", "none on any node"))
        self.low_precision, self.kept = [], []
        pooled = _convs_on_pooled_vectors(model)
        for node in model.graph.node:
            module = module_of(node) or ""
            ok = self.eligible(node, module) and node.name not in pooled
            (self.low_precision if ok else self.kept).append(node.name)
        return self


def _convs_on_pooled_vectors(model: onnx.ModelProto) -> set[str]:
    """Convs whose input is 1x1 spatially: squeeze-excitation FCs on globally pooled features.

    They cost nothing next to the spatial convs and were measured to be the most
    INT8-sensitive layers of MobileNetV3 (SQNR 10-17 dB against 25-50 dB for the
    rest), so the policies keep them in FP32.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    found = set()
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input:
            shape = shapes.get(node.input[0])
            if shape and len(shape) == 4 and shape[2] == 1 and shape[3] == 1:
                found.add(node.name)
    return found


def _detector_eligible(node: onnx.NodeProto, module: str) -> bool:
    if node.op_type not in FEATURE_OPS:
        return False
    # The predictors (RPN objectness and box deltas, class scores and box deltas)
    # produce the scores that are compared with thresholds and the deltas that
    # become coordinates: FP32. They are 1x1 convs / small FCs, and the RPN
    # objectness conv measured as the most INT8-sensitive layer of every detector.
    # Mask R-CNN: the mask head's convs and the predictor's upsampling deconv are features;
    # its 1x1 class-logit conv, the RoiAlign before it and the paste (no module) stay FP32.
    return module.startswith(("backbone", "rpn_head.conv", "box_head", "mask_head", "mask_predictor.conv5_mask"))


GENERATOR_EXTRA_OPS = {"Gather", "ReduceSum"}  # the first SPADE conv, exported as table look-ups + sum


def _generator_eligible(node: onnx.NodeProto, module: str) -> bool:
    if node.op_type not in FEATURE_OPS and node.op_type not in GENERATOR_EXTRA_OPS:
        return False
    if module == "":
        return False  # top level: label-map decoding, tap indices, output scaling
    last = module.rsplit(".", 1)[-1]
    # A SPADE module's own ops are the parameter-free normalisation (instance-norm
    # statistics or folded batch-norm) and the modulation x * (1 + gamma) + beta.
    return not (last.startswith("norm") or "param_free_norm" in module)


def policy_for(kind: str) -> Policy:
    if kind == "detector":
        return Policy(kind, "detector: backbone, FPN, RPN shared conv, box-head fc6/fc7 and mask-head convs in "
                      "reduced precision; predictors (objectness, class scores, box deltas, mask logits), anchors, "
                      "decoding, clipping, RoiAlign, NMS, score thresholds, the mask paste and squeeze-excitation FCs "
                      "FP32", _detector_eligible)
    if kind == "generator":
        return Policy(kind, "generator: convolutions and activations in reduced precision; normalisation "
                      "statistics (param_free_norm) and label-map look-ups FP32; AutoCast keeps nodes whose "
                      "calibration values exceed FP16's safe range", _generator_eligible)
    raise BadInput(expected_got("manifest kind", "'detector' or 'generator'", repr(kind)))


def _anchored(names: list[str]) -> list[str]:
    return [f"^{re.escape(n)}$" for n in names]


@contextlib.contextmanager
def _modelopt_quiet(verbose: bool):
    """ModelOpt logs at INFO and prints tqdm bars; keep the terminal for deploykit's own progress."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("modelopt", "modelopt.onnx", "modelopt.onnx.autocast",
                                              "modelopt.onnx.quantization")] + [logging.getLogger()]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _import_modelopt():
    try:
        import modelopt.onnx.autocast as autocast  # noqa: F401
        import modelopt.onnx.quantization as quantization  # noqa: F401
    except ImportError as e:
        raise BadInput(expected_got("NVIDIA ModelOpt", "installed: pip install 'deploykit[precision]'",
                                    f"import failed ({e})")) from None
    import modelopt

    return autocast, quantization, getattr(modelopt, "__version__", "unknown")


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that read at least one input through a DequantizeLinear."""
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in model.graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(i in dq for i in n.input)]


def _fp16_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of non-Cast nodes that produce a float16 tensor."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(inferred.graph.value_info) + list(inferred.graph.output)}
    for t in inferred.graph.initializer:
        types[t.name] = t.data_type
    f16 = onnx.TensorProto.FLOAT16
    return [n.name for n in inferred.graph.node
            if n.op_type != "Cast" and any(types.get(o) == f16 for o in n.output)]


def activation_bytes_per_sample(model: onnx.ModelProto) -> int:
    """Bytes of every float tensor of one sample: what AutoCast's FP16 range check keeps per sample.

    (Its reference run marks every tensor as an output and keeps every sample's
    results until it aggregates them; resnet50_fpn at 800x800: 2.55 GB a sample.
    ModelOpt's INT8 calibration does not: it folds each sample into the ranges and
    histograms before running the next, so its memory does not grow with the sample count.)
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    sizes = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.DOUBLE: 8}
    batch = model.graph.input[0].type.tensor_type.shape.dim[0] if model.graph.input else None
    per_batch = batch.dim_value if batch is not None and batch.HasField("dim_value") and batch.dim_value > 0 else 1
    total = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        t = vi.type.tensor_type
        if t.elem_type not in sizes or not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        total += int(np.prod(dims, dtype=np.int64)) * sizes[t.elem_type]
    return total // per_batch


def measured_activation_bytes(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> int:
    """Bytes of every float tensor of one run on ``feed``, measured with ONNX Runtime.

    For graphs whose intermediate shapes follow the input (pixels-in, dynamic size), where
    :func:`activation_bytes_per_sample` cannot know them: one run with every float tensor
    as an output, which is what AutoCast's reference run keeps per sample.
    """
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    have = {o.name for o in inferred.graph.output}
    probe = onnx.ModelProto()
    probe.CopyFrom(inferred)
    for vi in inferred.graph.value_info:
        if vi.type.tensor_type.elem_type in floats and vi.name not in have:
            probe.graph.output.add().CopyFrom(vi)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feed)
    return int(sum(o.nbytes for o in outs if o.dtype.kind == "f"))


def sample_count(feeds: dict[str, np.ndarray] | list[dict[str, np.ndarray]] | None) -> int:
    """Calibration samples in stacked feeds (rows of axis 0) or a list of per-sample feeds."""
    if not feeds:
        return 0
    return len(feeds) if isinstance(feeds, list) else len(next(iter(feeds.values())))


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _fit_range_check(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None,
                     say: Callable[[str], None]) -> dict[str, np.ndarray] | None:
    """AutoCast's range check also keeps every activation of every sample: use the samples that fit.

    (spade_coco at 256x256 has 3 GB of activations a sample; 8 samples were
    OOM-killed on a 24 GB machine.) Ranges need few samples, so FP16 trims
    instead of refusing.
    """
    if not feeds:
        return feeds
    n = sample_count(feeds)
    free = available_memory()
    if isinstance(feeds, list):  # shapes follow the input: measure the largest sample
        largest = max(feeds, key=lambda f: sum(a.size for a in f.values()))
        per_sample = measured_activation_bytes(model, largest) if free is not None else 0
    else:
        per_sample = activation_bytes_per_sample(model)
    if free is None or per_sample <= 0:
        return feeds
    fits = max(1, int(0.5 * free // per_sample))
    if fits >= n:
        return feeds
    say(f"FP16 range check on {fits} of {n} samples ({per_sample / 1e9:.2f} GB of activations a sample, "
        f"{free / 1e9:.1f} GB available)")
    return feeds[:fits] if isinstance(feeds, list) else {k: v[:fits] for k, v in feeds.items()}


def _save_input_copy(model_path: Path, tmpdir: Path) -> Path:
    # ModelOpt's quantize() rewrites the file it is given in place: give it a copy.
    work = tmpdir / "input.onnx"
    shutil.copyfile(model_path, work)
    return work


def _run_autocast(autocast, source: Path, tmpdir: Path, policy: Policy, feeds: dict[str, np.ndarray] | None,
                  data_max: float) -> onnx.ModelProto:
    calib = None
    if isinstance(feeds, list) and feeds:  # one NPZ per sample: AutoCast's multi-batch directory
        calib = tmpdir / "calib"
        calib.mkdir()
        for i, feed in enumerate(feeds):
            np.savez(calib / f"{i:06d}.npz", **feed)
    elif feeds:
        calib = tmpdir / "calib.npz"
        np.savez(calib, **feeds)
    kwargs = dict(low_precision_type="fp16", nodes_to_exclude=_anchored(policy.kept), keep_io_types=True,
                  data_max=data_max, providers=["cpu"])
    if calib is not None:
        kwargs["calibration_data"] = str(calib)
    result = autocast.convert_to_mixed_precision(str(source), **kwargs)
    _forget_placeholder_dims(result)
    return restore_dropped_casts(onnx.load(str(source)), result)


def _forget_placeholder_dims(model: onnx.ModelProto, placeholder: str = "unk") -> None:
    """AutoCast names every dimension it could not infer ``unk``; for ONNX Runtime one symbol
    means one size, so tensors of different dynamic sizes would share a buffer (a dynamic-size
    detector then fails: "Shape mismatch attempting to re-use buffer"). Leave them unnamed."""
    for vi in list(model.graph.value_info) + list(model.graph.output):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param == placeholder:
                dim.ClearField("dim_param")


def restore_dropped_casts(source: onnx.ModelProto, result: onnx.ModelProto) -> onnx.ModelProto:
    """Put back Casts from bool/integer tensors that AutoCast removed as 'redundant'.

    ModelOpt 0.47's cast clean-up drops ``Cast(bool -> float)`` in some graphs
    (MobileNetV3's masked SE means: a mask cast to float and summed), leaving
    ReduceSum reading a bool tensor -- an invalid graph. Each such Cast is
    re-inserted before its first consumer with its original name and output.
    """
    inferred = onnx.shape_inference.infer_shapes(source)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(inferred.graph.value_info) + list(inferred.graph.input)}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    present = {n.name for n in result.graph.node}
    source_inputs = {n.name: list(n.input) for n in source.graph.node}
    nodes = list(result.graph.node)
    for cast in source.graph.node:
        if cast.op_type != "Cast" or cast.name in present or types.get(cast.input[0]) in floats | {None}:
            continue
        first = None
        for index, node in enumerate(nodes):
            original = source_inputs.get(node.name)
            if original is None:
                continue
            for k, name in enumerate(node.input):
                if name == cast.input[0] and k < len(original) and original[k] == cast.output[0]:
                    node.input[k] = cast.output[0]
                    first = index if first is None else first
        if first is not None:
            nodes.insert(first, copy.deepcopy(cast))
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return result


def _FeedReader(feeds: list[dict[str, np.ndarray]]):
    """A calibration data reader (ONNX Runtime's protocol, plus ModelOpt's ``get_first``) over
    per-sample feeds, whose shapes may differ from sample to sample."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.calibration_data_list = list(feeds)
            self._next = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._next >= len(self.calibration_data_list):
                return None
            self._next += 1
            return self.calibration_data_list[self._next - 1]

        def get_first(self) -> dict[str, np.ndarray]:
            return self.calibration_data_list[0]

        def rewind(self) -> None:
            self._next = 0

        def set_range(self, start_index: int, end_index: int) -> None:
            self.calibration_data_list = self.calibration_data_list[start_index:end_index]
            self._next = 0

        def __len__(self) -> int:
            return len(self.calibration_data_list)

    return Reader()


def _run_quantize(quantization, source: Path, tmpdir: Path, policy: Policy, feeds: dict[str, np.ndarray],
                  method: str, model: onnx.ModelProto) -> onnx.ModelProto:
    """ModelOpt INT8 PTQ of ``source`` with the policy's nodes.

    ModelOpt 0.47 patches ONNX Runtime's calibrators to run one graph batch at a time and fold
    it into the running ranges (max) or histograms (entropy) before the next, so memory is one
    sample's calibrated tensors whatever the sample count (``docs/precision.md``, measured by
    ``scripts/calib_memory.py`` and pinned by ``tests/calib/test_precision.py``).
    """
    work = _save_input_copy(source, tmpdir)
    out = tmpdir / "int8.onnx"
    eligible = set(policy.low_precision)
    targets = [n.name for n in model.graph.node if n.op_type in QUANTIZABLE_OPS and n.name in eligible]
    excluded = [n.name for n in model.graph.node if n.op_type in QUANTIZABLE_OPS and n.name not in eligible]
    if not targets:
        raise CheckFailed(f"{source}: the {policy.kind} policy leaves no Conv/Gemm/MatMul node to quantize")
    data: dict[str, Any] = ({"calibration_data_reader": _FeedReader(feeds)} if isinstance(feeds, list)
                            else {"calibration_data": feeds})
    quantization.quantize(
        str(work), quantize_mode="int8", **data, calibration_method=method,
        calibration_eps=["cpu"], high_precision_dtype="fp32", op_types_to_quantize=list(QUANTIZABLE_OPS),
        nodes_to_quantize=_anchored(targets), nodes_to_exclude=_anchored(excluded), output_path=str(out),
        log_level="ERROR")
    result = onnx.load(str(out))
    # ModelOpt puts one Q/DQ pair on a tensor and lets every consumer read it,
    # so a kept node sharing an input with a quantized one (the RPN's box-delta
    # conv beside its objectness conv) reads INT8 too: give those back FP32.
    leaked = [n for n in quantized_nodes(result) if n not in eligible]
    return dequantize_nodes(result, leaked, model) if leaked else result


def convert(source: str | os.PathLike, out: str | os.PathLike, precision: str, *,
            feeds: dict[str, np.ndarray] | None = None, calibration: dict[str, Any] | None = None,
            method: str = "entropy", data_max: float = 512.0, verbose: bool = False,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write ``out``: the FP32 deploykit graph ``source`` in ``precision``, with its manifest.

    Args:
        source: an FP32 ``.onnx`` written by ``deploykit export`` (manifest beside it).
        out: the ``.onnx`` to write (manifest beside it, same stem).
        precision: ``fp16`` or ``int8`` (``fp32`` copies the graph).
        feeds: calibration inputs stacked on axis 0 (see
            :func:`deploykit.data.calibration.calibration_feeds`); required for INT8,
            used by FP16's range check when given.
        calibration: description of the feeds for the manifest
            (source, samples, seed).
        method: INT8 activation calibration, ``entropy`` or ``max``.
    Returns the manifest written.
    """
    source, out = Path(source), Path(out)
    say = log or (lambda _msg: None)
    if precision not in PRECISIONS:
        raise BadInput(expected_got("precision", " | ".join(PRECISIONS), repr(precision)))
    if method not in METHODS:
        raise BadInput(expected_got("calibration method", " | ".join(METHODS), repr(method)))
    if source.suffix != ".onnx" or not source.is_file():
        raise BadInput(expected_got(f"source {source}", "an existing .onnx file", "no such file" if not
                                    source.exists() else f"suffix {source.suffix!r}"))
    if out.suffix != ".onnx":
        raise BadInput(expected_got(f"output {out}", "a path ending in .onnx", repr(out.suffix)))
    if out.resolve() == source.resolve():
        raise BadInput(expected_got(f"output {out}", "a path other than the source", "the source itself"))
    manifest = read_manifest(source)
    mode = (manifest.get("precision") or {}).get("mode", "fp32")
    if mode != "fp32":
        raise BadInput(expected_got(f"source {source} precision", "an fp32 graph from deploykit export",
                                    repr(mode)))
    if precision == "int8" and not feeds:
        raise BadInput(expected_got("INT8 calibration data", "at least one sample", "none"))
    try:
        model = onnx.load(str(source))
    except Exception as e:
        raise BadInput(expected_got(f"source {source}", "a readable ONNX model", str(e).splitlines()[0])) from None
    policy = policy_for(manifest["kind"]).apply(model)

    started = time.perf_counter()
    with scratch_dir("deploykit-precision-") as tmp:
        tmpdir = Path(tmp)
        if precision == "fp32":
            result = model
            low: list[str] = []
            tool = None
        else:
            autocast, quantization, version = _import_modelopt()
            tool = f"nvidia-modelopt {version}"
            with _modelopt_quiet(verbose):
                if precision == "fp16":
                    say(f"FP16 AutoCast ({len(policy.low_precision)} of {len(model.graph.node)} nodes eligible)")
                    feeds = _fit_range_check(model, feeds, say)
                    result = _run_autocast(autocast, source, tmpdir, policy, feeds, data_max)
                    low = _fp16_nodes(result)
                else:
                    n_samples = sample_count(feeds)
                    say(f"INT8 PTQ, {method} calibration on {n_samples} samples")
                    result = _run_quantize(quantization, source, tmpdir, policy, feeds, method, model)
                    low = quantized_nodes(result)
        _finish(result, manifest)
    original = {n.name for n in model.graph.node}
    low_set = set(low)
    kept = [n for n in (x.name for x in model.graph.node) if n not in low_set]
    record: dict[str, Any] = {
        "mode": precision,
        "tool": tool,
        "policy": policy.description,
        "source": {"file": os.path.relpath(source.resolve(), out.resolve().parent), "sha256": sha256_file(source)},
        "low_precision_nodes": len([n for n in low if n in original]),
        "kept_high_precision": kept if precision != "fp32" else [],
        "seconds": round(time.perf_counter() - started, 2),
    }
    if precision == "int8":
        record["calibration"] = {"method": method, **(calibration or {})}
    elif precision == "fp16":
        record["keep_io_types"] = True
        record["data_max"] = data_max
        if feeds:
            record["calibration"] = {"method": "range check (data_max)", **(calibration or {}),
                                     "range_check_samples": sample_count(feeds)}
    new = copy.deepcopy(manifest)
    new["precision"] = record
    # the graph and its manifest are published together: a kill leaves the old pair or the new one
    write_artifact(out, lambda staged: onnx.save_model(result, str(staged)), new)
    return read_manifest(out)


def _finish(model: onnx.ModelProto, manifest: dict[str, Any]) -> None:
    """Check the converted graph and keep I/O names and types as the manifest says."""
    from ..export.rules import graph_violations
    from ..export.trt_support import declared_data_dependent

    problems = [p for p in graph_violations(model, dynamic_batch=bool((manifest.get("batch") or {}).get("dynamic")),
                                            data_dependent=declared_data_dependent(manifest))
                if "opset" not in p]
    if problems:
        raise CheckFailed("converted graph breaks the graph rules: " + "; ".join(problems[:5]))
    names = [i.name for i in model.graph.input]
    want = [i["name"] for i in manifest.get("inputs", [])]
    if names != want:
        raise CheckFailed(f"converted graph inputs {names} differ from the source's {want}")


def dequantize_nodes(model: onnx.ModelProto, nodes: list[str], fp32: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of INT8 ``model`` where ``nodes`` read their inputs in FP32 again.

    Each listed node's DequantizeLinear inputs are bypassed: activations are
    read from the QuantizeLinear's float input, weights from the FP32 source
    graph ``fp32`` (ModelOpt stores weights already quantized). Q/DQ nodes
    left without consumers are removed. Calibrated scales elsewhere are
    untouched, so no recalibration is needed.
    """
    result = copy.deepcopy(model)
    g = result.graph
    producer = {o: n for n in g.node for o in n.output}
    fp32_inits = {t.name: t for t in fp32.graph.initializer}
    inits = {t.name for t in g.initializer}
    wanted = set(nodes)
    added: set[str] = set()
    for node in g.node:
        if node.name not in wanted:
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            src = dq.input[0]
            q = producer.get(src)
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[k] = q.input[0]
                continue
            # weights: int8 initializer -> the FP32 original of the same node
            original = _fp32_twin(src, fp32_inits)
            if original is None:
                raise CheckFailed(f"cannot find the FP32 weight for {src} (input {k} of {node.name})")
            if original.name not in inits and original.name not in added:
                g.initializer.append(original)
                added.add(original.name)
            node.input[k] = original.name
    _remove_dead(result)
    return result


def _fp32_twin(name: str, fp32_inits: dict[str, onnx.TensorProto]) -> onnx.TensorProto | None:
    for suffix in ("", "_i8", "_quantized", "_int8"):
        base = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
        if base in fp32_inits:
            return fp32_inits[base]
    return None


def _remove_dead(model: onnx.ModelProto) -> None:
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    live = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
