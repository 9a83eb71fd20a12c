"""torch.nn.Module -> ONNX file with the torch.export-based exporter, checked and deterministic."""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import onnx
import torch

from ..errors import CheckFailed
from ..fileio import atomic_path
from .rules import check_graph

DEFAULT_OPSET = 18


def versions(opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Versions recorded in every manifest."""
    import onnxruntime
    import torchvision

    from .. import __version__

    return {
        "deploykit": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": opset,
    }


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter prints progress and warnings; keep the CLI output clean."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, old):
            lg.setLevel(lvl)


SCOPE_KEY = "deploykit.module"


def _module_scope(node: onnx.NodeProto) -> str | None:
    """The innermost PyTorch module path the exporter recorded for ``node`` ('' = top level)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            if isinstance(scopes, (list, tuple)) and len(scopes) >= 2:
                return str(scopes[-2])
            return ""
    return None


def _make_deterministic(model: onnx.ModelProto) -> None:
    """Remove fields that vary between runs (doc strings with stack traces, metadata).

    One metadata entry per node is kept: ``deploykit.module``, the PyTorch
    module path the node came from (e.g. ``backbone.body.layer2.0``). Precision
    policies (:mod:`deploykit.precision.convert`) read it to decide which nodes
    may run in FP16/INT8.
    """
    model.doc_string = ""
    model.producer_name = "deploykit"
    from .. import __version__

    model.producer_version = __version__
    del model.metadata_props[:]
    graphs = [model.graph] + [f for f in model.functions]
    for g in graphs:
        g.doc_string = "" if hasattr(g, "doc_string") else None
        for n in g.node:
            n.doc_string = ""
            scope = _module_scope(n)
            del n.metadata_props[:]
            if scope is not None:
                n.metadata_props.add(key=SCOPE_KEY, value=scope)
        if hasattr(g, "metadata_props"):
            del g.metadata_props[:]
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        vi.doc_string = ""
        del vi.metadata_props[:]
    for t in model.graph.initializer:
        t.doc_string = ""
        del t.metadata_props[:]


def export_module(
    module: torch.nn.Module,
    example_inputs: tuple,
    out_path: str | os.PathLike | None,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: int | None = None,
    opset: int = DEFAULT_OPSET,
    custom_translation_table: dict | None = None,
    check: bool = True,
    dynamic_shapes: tuple | None = None,
    dim_names: dict[str, str] | None = None,
    static_outputs: bool = True,
) -> onnx.ModelProto:
    """Export ``module(*example_inputs)`` to ``out_path`` and return the saved model.

    ``dynamic_batch``: ``None`` for a static batch (the examples' batch size), or
    the largest batch the graph must accept (axis 0 of every input and output is
    then named ``batch``). ``dynamic_shapes`` (torch.export's, one entry per input)
    replaces that for graphs with other dynamic axes; ``dim_names`` renames the
    exporter's symbolic dimensions (e.g. ``{"32*h32": "padded_height"}``). The graph
    is checked against the rules in :mod:`deploykit.export.rules` before anything is
    written (``static_outputs=False`` lets outputs have dynamic axes); a failing graph
    raises :class:`CheckFailed` and leaves no file behind. ``out_path=None`` only
    returns the model.
    """
    if dynamic_shapes is None and dynamic_batch is not None:
        batch = torch.export.Dim("batch", min=1, max=max(2, int(dynamic_batch)))
        dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    module = module.eval()
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                module,
                tuple(example_inputs),
                dynamo=True,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=custom_translation_table,
                optimize=True,
                verbose=False,
                report=False,
            )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckFailed(f"torch.onnx.export(dynamo=True) of {type(module).__name__} failed: {first}") from e
    model = program.model_proto
    if dynamic_batch is not None:
        for vi in list(model.graph.input) + list(model.graph.output):
            dims = vi.type.tensor_type.shape.dim
            if len(dims) and not dims[0].HasField("dim_value"):
                dims[0].dim_param = "batch"
    if dim_names:
        rename_dims(model, dim_names)
    _make_deterministic(model)
    if check:
        check_graph(model, dynamic_batch=dynamic_batch is not None, static_outputs=static_outputs)
    if out_path is not None:
        save_model(model, out_path)
    return model


def rename_dims(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename symbolic dimensions everywhere they appear (inputs, outputs, value_info)."""
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def save_model(model: onnx.ModelProto, out_path: str | os.PathLike) -> None:
    """Write ``model`` atomically (a reader never sees a half-written file)."""
    with atomic_path(out_path) as tmp:
        onnx.save_model(model, str(tmp))


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    return onnx.load(str(Path(path)))
