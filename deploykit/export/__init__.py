"""PyTorch -> ONNX: export-friendly wrappers, graph rules, manifests."""

from .graph import check_graph, graph_violations
from .onnx_export import DEFAULT_OPSET, export_module, versions

__all__ = ["check_graph", "graph_violations", "export_module", "versions", "DEFAULT_OPSET"]
