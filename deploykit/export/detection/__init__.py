"""The exportable detector, one idea per module.

- :mod:`.pixels_in` — the front end written in ONNX: uint8 pixels of any size -> torchvision's
  resize (exact float64 size arithmetic in int64), normalisation and padding;
- :mod:`.nms` — NMS as a keep mask (ONNX ``NonMaxSuppression`` in the graph);
- :mod:`.boxes` — box decoding, clipping, size filtering, the rescale to the original image;
- :mod:`.padding` — a fixed canvas made to compute what torchvision computes on the smaller padded image;
- :mod:`.roi_align` — ``MultiScaleRoIAlign`` as one ``RoiAlign`` over a mosaic of the levels;
- :mod:`.rows` — the mask branch on the batch's detections only, re-padded to K;
- :mod:`.faster_rcnn` — :class:`ExportableFasterRCNN`, torchvision's modules and weights in a
  fixed-shape graph.
"""

from .faster_rcnn import INPUT_NAMES, OUTPUT_NAMES, PAD_LABEL, RAW_OUTPUT_NAMES, ExportableFasterRCNN
from .nms import CUSTOM_TRANSLATIONS as _NMS
from .rows import CUSTOM_TRANSLATIONS as _ROWS

CUSTOM_TRANSLATIONS = {**_NMS, **_ROWS}

__all__ = ["ExportableFasterRCNN", "CUSTOM_TRANSLATIONS", "INPUT_NAMES", "OUTPUT_NAMES", "PAD_LABEL",
           "RAW_OUTPUT_NAMES"]
