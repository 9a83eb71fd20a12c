"""Graph rules every exported ONNX file must satisfy (DESIGN.md, "Verification rules").

``check_graph`` collects every violation and raises one :class:`CheckFailed`
listing them, so a user fixing an export sees all problems at once. The rules
include TensorRT readiness (:mod:`deploykit.export.trt_support`: every op, type
and attribute inside the TensorRT ONNX parser's support matrix), so a graph
TensorRT cannot parse fails its export or quantization on the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx
from onnx import shape_inference

from ..errors import CheckFailed, printable
from .trt_support import trt_violations

FORBIDDEN_OPS = {
    "If", "Loop", "Scan",
    "SequenceConstruct", "SequenceAt", "SequenceEmpty", "SequenceInsert", "SequenceErase",
    "SequenceLength", "SplitToSequence", "ConcatFromSequence", "SequenceMap",
}
STANDARD_DOMAINS = {"", "ai.onnx"}


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None  # type: ignore[return-value]
    out: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def graph_violations(model: onnx.ModelProto, *, dynamic_batch: bool = False,
                     allowed_domains: tuple[str, ...] = (), tensorrt: bool = True,
                     static_outputs: bool = True, data_dependent: Mapping[str, set[int]] | None = None) -> list[str]:
    """Return a list of human-readable rule violations (empty when the graph is fine).

    ``tensorrt``: include the TensorRT-readiness rules (on by default; custom-domain
    graphs allowed by ``allowed_domains`` are meant for plugins and skip them).
    ``static_outputs=False``: outputs may have dynamic axes (raw tensors of a dynamic graph).
    Otherwise an output dimension is static, the batch (``dynamic_batch``), or one of the graph
    inputs' own symbolic dimensions (e.g. the image's ``height``/``width`` for image-size masks):
    derived from the input shapes, never from data — but the output dimensions ``data_dependent``
    declares (``{"masks": {1}}``: pasted masks with one row per detection; TensorRT serves them through an
    output allocator).
    """
    problems: list[str] = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # onnx raises several exception types
        problems.append(f"onnx.checker: {str(e).splitlines()[0]}")
    try:
        inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:
        problems.append(f"shape inference failed: {str(e).splitlines()[0]}")
        inferred = model

    g = inferred.graph
    known = {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}
    allowed = STANDARD_DOMAINS | set(allowed_domains)
    for n in g.node:
        where = f"node {n.name or n.op_type!r} ({n.op_type})"
        if n.op_type in FORBIDDEN_OPS:
            problems.append(f"{where}: control-flow/sequence op not allowed")
        if n.domain not in allowed:
            problems.append(f"{where}: custom domain {n.domain!r} not allowed")
        for out in n.output:
            if out and out not in known:
                problems.append(f"{where}: output {out!r} has no inferred type/shape")
            elif out:
                dims = _dims(known[out])
                if dims is None:
                    problems.append(f"{where}: output {out!r} has no inferred shape")
    input_dims = {d for i in g.input for d in (_dims(i) or []) if isinstance(d, str)}
    for o in g.output:
        dims = _dims(o)
        if dims is None:
            problems.append(f"graph output {o.name!r}: no shape")
            continue
        for i, d in enumerate(dims):
            if isinstance(d, int):
                continue
            if (i == 0 and dynamic_batch) or not static_outputs or (i > 0 and d in input_dims) or \
                    i in (data_dependent or {}).get(o.name, ()):
                continue
            problems.append(f"graph output {o.name!r}: dimension {i} is {d!r}, expected a static size")
    if tensorrt and not allowed_domains:
        problems.extend(v.line() for v in trt_violations(inferred, inferred=True, data_dependent=data_dependent))
    # de-duplicate while keeping order; names from the file may hold control characters: one line each
    seen: set[str] = set()
    return [p for p in map(printable, problems) if not (p in seen or seen.add(p))]


def check_graph(model: onnx.ModelProto, *, dynamic_batch: bool = False,
                allowed_domains: tuple[str, ...] = (), static_outputs: bool = True,
                data_dependent: Mapping[str, set[int]] | None = None) -> None:
    """Raise :class:`CheckFailed` naming every rule the graph breaks (``static_outputs=False``:
    outputs may have dynamic axes, e.g. raw detector tensors of a dynamic-size graph; ``data_dependent``:
    output dimensions declared data-dependent)."""
    problems = graph_violations(model, dynamic_batch=dynamic_batch, allowed_domains=allowed_domains,
                                static_outputs=static_outputs, data_dependent=data_dependent)
    if problems:
        shown = "; ".join(problems[:8])
        more = f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""
        raise CheckFailed(f"exported graph breaks {len(problems)} rule(s): {shown}{more}")
