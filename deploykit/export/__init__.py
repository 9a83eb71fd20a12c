"""PyTorch -> ONNX: export-friendly wrappers, graph rules, manifests.

The graph rules (``check_graph``, ``graph_violations``, ``trt_support``) need only
``onnx``; the exporter names are imported on first use, so ``deploykit build`` and
``deploykit check`` can check a graph without importing torch.
"""

from .rules import check_graph, graph_violations

__all__ = ["check_graph", "graph_violations", "export_module", "versions", "DEFAULT_OPSET"]
_LAZY = {"export_module", "versions", "DEFAULT_OPSET"}


def __getattr__(name: str):
    if name in _LAZY:
        from . import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
