"""The thin runtime: run exported artifacts without torch.

- :func:`load` opens an ``.onnx`` (ONNX Runtime) or ``.plan`` (TensorRT) artifact
  as a :class:`Session` with ``inputs``, ``outputs``, ``manifest`` and
  ``run(feed) -> {name: array}``.
- :class:`Detector` wraps an exported detector with torchvision-equivalent
  pre- and post-processing: ``predict(image) -> Detections``.
- :class:`Generator` wraps an exported SPADE generator: ``generate(label_map) -> image``.
- :func:`load_image` reads an image file as uint8 ``[H, W, 3]`` RGB.

Importing this package imports neither torch nor onnxruntime (the latter is
loaded when a session is created). See docs/runtime.md.
"""

from .backends import load
from .detector import Detections, Detector
from .generator import Generator
from .images import load_image
from .session import Session, TensorSpec

__all__ = ["load", "Session", "TensorSpec", "Detector", "Detections", "Generator", "load_image"]
