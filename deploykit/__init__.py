"""deploykit: PyTorch vision models to ONNX / TensorRT 11, proven against PyTorch.

Importing this package imports no torch; heavy dependencies are loaded by the
modules that need them (``deploykit.models``, ``deploykit.export``).
"""

__version__ = "0.1.0"
