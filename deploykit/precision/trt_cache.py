"""TensorRT ≤ 10 calibration cache from an explicitly quantized (Q/DQ) ONNX graph.

TensorRT 11 has no calibrator: INT8 lives in the graph as QuantizeLinear /
DequantizeLinear pairs (NVIDIA ModelOpt ONNX PTQ). Deployments still on
TensorRT ≤ 10 with implicit quantization (``BuilderFlag.INT8`` + a calibration
cache) can reuse the same calibration through this text file::

    TRT-100000-EntropyCalibration2
    images: 3c010a14
    /backbone/conv1/Conv_output_0: 3d8f5c29

First line ``TRT-<version>-EntropyCalibration2`` where ``<version>`` is the
integer TensorRT compiles in (``NV_TENSORRT_VERSION``): ``major·1000 + minor·100 +
patch`` before 10 (8.6.1 → ``8601``), ``major·10000 + minor·100 + patch`` from 10
(10.0.0 → ``100000``). Then one line per activation tensor: ``name: <8 hex
digits>``, the big-endian IEEE float32 bits of the INT8 scale (TensorRT's dynamic
range is ``scale · 127``).

Activation tensors are the data inputs of INT8 ``QuantizeLinear`` nodes whose
scale is a scalar (initializer or ``Constant``) and whose input is not itself a
constant (weights are skipped: TensorRT quantizes weights itself). When that
input is the output of a ``Cast`` (ModelOpt's FP16 high-precision mode casts the
graph input before quantizing it), the entry is named after the Cast's own input,
the tensor of the FP32 graph that TensorRT ≤ 10 builds. A tensor quantized by
several nodes keeps the largest scale. Non-INT8 quantizers (FP8,
INT4) have no place in a calibration cache and are skipped.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np

from ..errors import BadInput, expected_got
from ..fileio import atomic_path

ALGORITHM = "EntropyCalibration2"
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")
_LINE = re.compile(r"^(.+): ([0-9a-fA-F]{8})$")

__all__ = ["write_calibration_cache", "read_calibration_cache", "activation_scales", "trt_version_int",
           "scale_to_hex", "hex_to_scale"]


def trt_version_int(version: str) -> int:
    """``"8.6.1"`` → 8601, ``"10.0.0"`` → 100000 (TensorRT's ``NV_TENSORRT_VERSION``)."""
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)*", str(version).strip())
    if not m:
        raise BadInput(expected_got("TensorRT version", "MAJOR.MINOR[.PATCH] such as 10.0.0", repr(version)))
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    if major >= 11:
        raise BadInput(expected_got("TensorRT version", "<= 10 (TensorRT 11 has no calibration cache: "
                                    "use the Q/DQ ONNX itself)", version))
    if minor > 99 or patch > 99:
        raise BadInput(expected_got("TensorRT version", "minor and patch <= 99", version))
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    """float32 ``scale`` → 8 lowercase hex digits of its big-endian bits (0.5 → ``3f000000``)."""
    return struct.pack(">f", float(scale)).hex()


def hex_to_scale(text: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(text))[0])


def activation_scales(model) -> dict[str, float]:
    """Activation tensor name → INT8 scale, from the QuantizeLinear nodes of ``model`` (ModelProto)."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = attr.t
    cast_source = {node.output[0]: node.input[0] for node in graph.node if node.op_type == "Cast"}
    scales: dict[str, float] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 2:
            continue
        data, scale_name = node.input[0], node.input[1]
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        while data in cast_source and data not in constants:
            data = cast_source[data]
        if data in constants or scale_name not in constants:
            continue  # weights, or a scale computed at run time
        zp = constants.get(zp_name) if zp_name is not None else None
        out_type = zp.data_type if zp is not None else next(
            (a.i for a in node.attribute if a.name == "output_dtype"), TensorProto.UINT8)  # ONNX default: uint8
        if out_type != TensorProto.INT8:
            continue  # uint8 / FP8 / INT4 quantizers: not TensorRT INT8 activations
        if zp is not None:
            if np.any(numpy_helper.to_array(zp) != 0):
                raise BadInput(expected_got(f"QuantizeLinear {node.name or data} zero point",
                                            "0 (TensorRT INT8 is symmetric)", numpy_helper.to_array(zp).tolist()))
        value = numpy_helper.to_array(constants[scale_name])
        if value.size != 1:
            continue  # per-channel scales only occur on weights
        s = float(np.float32(value.reshape(-1)[0]))
        if not np.isfinite(s) or s <= 0:
            raise BadInput(expected_got(f"QuantizeLinear {node.name or data} scale", "a positive finite number", s))
        scales[data] = max(s, scales.get(data, 0.0))
    return scales


def write_calibration_cache(qdq_onnx_path: str | os.PathLike, out_path: str | os.PathLike,
                            trt_version: str = "10.0.0") -> int:
    """Write the calibration cache of ``qdq_onnx_path`` to ``out_path`` (atomically); returns the entry count.

    Raises :class:`BadInput` for a missing or unreadable ONNX file, a graph with no
    INT8 activation quantizers, or a TensorRT version the format does not cover.
    """
    import onnx

    header = f"TRT-{trt_version_int(trt_version)}-{ALGORITHM}"
    path = Path(qdq_onnx_path)
    if not path.is_file():
        raise BadInput(expected_got(f"ONNX model {path}", "an existing file", "no such file"))
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends
        raise BadInput(expected_got(f"ONNX model {path}", "a readable ONNX file", str(e).splitlines()[0][:120]
                                    if str(e) else type(e).__name__)) from None
    scales = activation_scales(model)
    if not scales:
        raise BadInput(expected_got(f"ONNX model {path}", "INT8 QuantizeLinear nodes on activations "
                                    "(quantize it with ModelOpt first)", "none"))
    lines = [header] + [f"{name}: {scale_to_hex(s)}" for name, s in scales.items()]
    with atomic_path(out_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return len(scales)


def read_calibration_cache(path: str | os.PathLike) -> dict[str, float]:
    """Tensor name → scale from a TensorRT calibration cache (any version and algorithm in the header)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(expected_got(f"calibration cache {path}", "an existing file", "no such file"))
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise BadInput(expected_got(f"calibration cache {path}", "a text file", "binary data")) from None
    if not lines or not _HEADER.match(lines[0].strip()):
        got = repr(lines[0][:60]) if lines else "an empty file"
        raise BadInput(expected_got(f"calibration cache {path} line 1", "TRT-<version>-<algorithm>", got))
    out: dict[str, float] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        m = _LINE.match(line.rstrip())
        if not m:
            raise BadInput(expected_got(f"calibration cache {path} line {n}", "'tensor_name: <8 hex digits>'",
                                        repr(line[:60])))
        out[m[1]] = hex_to_scale(m[2])
    return out
