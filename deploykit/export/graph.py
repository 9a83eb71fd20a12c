"""Graph rules every exported ONNX file must satisfy (DESIGN.md, "Verification rules").

``check_graph`` collects every violation and raises one :class:`CheckFailed`
listing them, so a user fixing an export sees all problems at once.
"""

from __future__ import annotations

import onnx
from onnx import shape_inference

from ..errors import CheckFailed

FORBIDDEN_OPS = {
    "If", "Loop", "Scan",
    "SequenceConstruct", "SequenceAt", "SequenceEmpty", "SequenceInsert", "SequenceErase",
    "SequenceLength", "SplitToSequence", "ConcatFromSequence", "SequenceMap",
}
MAX_TOPK = 3840  # TensorRT's TopK limit
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


def _const_value(name: str, inits: dict[str, onnx.TensorProto], consts: dict[str, onnx.TensorProto]):
    from onnx import numpy_helper

    t = inits.get(name) or consts.get(name)
    return None if t is None else numpy_helper.to_array(t)


def graph_violations(model: onnx.ModelProto, *, dynamic_batch: bool = False,
                     allowed_domains: tuple[str, ...] = (), static_outputs: bool = True) -> list[str]:
    """Return a list of human-readable rule violations (empty when the graph is fine)."""
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
    inits = {t.name: t for t in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = a.t
    known = {vi.name: vi for vi in list(g.value_info) + list(g.input) + list(g.output)}
    allowed = STANDARD_DOMAINS | set(allowed_domains)
    for n in g.node:
        where = f"node {n.name or n.op_type!r} ({n.op_type})"
        if n.op_type in FORBIDDEN_OPS:
            problems.append(f"{where}: control-flow/sequence op not allowed")
        if n.domain not in allowed:
            problems.append(f"{where}: custom domain {n.domain!r} not allowed")
        if n.op_type == "TopK" and len(n.input) > 1:
            k = _const_value(n.input[1], inits, consts)
            if k is None:
                problems.append(f"{where}: K is not a constant (TensorRT needs K <= {MAX_TOPK} known at build time)")
            elif int(k.reshape(-1)[0]) > MAX_TOPK:
                problems.append(f"{where}: K = {int(k.reshape(-1)[0])} exceeds TensorRT's limit {MAX_TOPK}")
        for out in n.output:
            if out and out not in known:
                problems.append(f"{where}: output {out!r} has no inferred type/shape")
            elif out:
                dims = _dims(known[out])
                if dims is None:
                    problems.append(f"{where}: output {out!r} has no inferred shape")
    for o in g.output:
        dims = _dims(o)
        if dims is None:
            problems.append(f"graph output {o.name!r}: no shape")
            continue
        for i, d in enumerate(dims):
            if isinstance(d, int):
                continue
            if (i == 0 and dynamic_batch) or not static_outputs:
                continue
            problems.append(f"graph output {o.name!r}: dimension {i} is {d!r}, expected a static size")
    # de-duplicate while keeping order
    seen: set[str] = set()
    return [p for p in problems if not (p in seen or seen.add(p))]


def check_graph(model: onnx.ModelProto, *, dynamic_batch: bool = False,
                allowed_domains: tuple[str, ...] = (), static_outputs: bool = True) -> None:
    """Raise :class:`CheckFailed` naming every rule the graph breaks (``static_outputs=False``:
    outputs may have dynamic axes, e.g. raw detector tensors of a dynamic-size graph)."""
    problems = graph_violations(model, dynamic_batch=dynamic_batch, allowed_domains=allowed_domains,
                                static_outputs=static_outputs)
    if problems:
        shown = "; ".join(problems[:8])
        more = f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""
        raise CheckFailed(f"exported graph breaks {len(problems)} rule(s): {shown}{more}")
