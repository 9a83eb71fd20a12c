"""NMS as a keep-mask: torchvision's NMS in eager mode, the standard ONNX ``NonMaxSuppression`` op in the graph.

Classes (or RPN levels) go on the NMS batch or class axis, never torchvision's coordinate-offset
trick (``batched_nms`` offsets boxes by ``class × (max_coord + 1)``), which overflows FP16. The
ONNX translation scatters the data-dependent ``[K, 3]`` selection into a fixed-shape mask.
"""

from __future__ import annotations

import onnx
import torch
import torchvision
from torch import Tensor

REMOVED = -1.0  # score given to masked-out boxes; real scores are probabilities in [0, 1]


@torch.library.custom_op("deploykit::nms_keep_mask", mutates_args=())
def nms_keep_mask(boxes: Tensor, scores: Tensor, iou_threshold: float, max_per_class: int) -> Tensor:
    """Greedy NMS returning a keep mask.

    Args:
        boxes (Tensor[N, M, 4]): (x1, y1, x2, y2), shared by every class of a batch entry.
        scores (Tensor[N, C, M]): a score < 0 means "removed", never kept.
        iou_threshold: boxes overlapping a kept box with IoU > threshold are suppressed.
        max_per_class: at most this many boxes kept per (batch, class), highest scores first.

    Returns:
        Tensor[N, C, M] float32: 1.0 where kept, else 0.0.
    """
    n, c, m = scores.shape
    out = torch.zeros_like(scores)
    for b in range(n):
        for k in range(c):
            s = scores[b, k]
            idx = torch.nonzero(s >= 0).squeeze(1)
            if idx.numel() == 0:
                continue
            keep = torchvision.ops.nms(boxes[b, idx], s[idx], iou_threshold)[:max_per_class]
            out[b, k, idx[keep]] = 1.0
    return out


@nms_keep_mask.register_fake
def _nms_keep_mask_fake(boxes, scores, iou_threshold, max_per_class):
    return torch.empty_like(scores)


def _nms_keep_mask_onnx(boxes, scores, iou_threshold: float, max_per_class: int):
    from onnxscript import opset18 as op

    selected = op.NonMaxSuppression(
        boxes, scores,
        op.Constant(value_ints=[max_per_class]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[REMOVED / 2]),  # keeps every score >= 0, drops the removed ones
    )
    count = op.Shape(selected, start=0, end=1)
    ones = op.Expand(op.Constant(value_float=1.0), count)
    zeros = op.ConstantOfShape(op.Shape(scores),
                               value=onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0]))
    return op.ScatterND(zeros, selected, ones)


CUSTOM_TRANSLATIONS = {torch.ops.deploykit.nms_keep_mask.default: _nms_keep_mask_onnx}

