"""Work on the detections a batch holds, not on all K rows: the mask branch's gather and scatter.

The detection outputs are padded to K rows per image (fixed output shapes: a TensorRT engine
needs no output allocator for them). The mask branch is the costly part after NMS (four 3×3
convolutions of 256 channels on 14×14 per row, then the paste of each row into the image), and a
photo usually holds far fewer than K detections; eager torchvision runs it on the detections alone.
So the branch runs on the first ``n`` rows of every image, ``n = max(1, the most detections an
image of the batch has)`` (detections are packed first), and its results are scattered back into
K zero rows.

In ONNX the row list is ``NonZero`` of ``arange(K) < n`` (an explicitly data-dependent shape, as
TensorRT's ``INonZeroLayer`` gives; shape tensors are only taken from its shape), the rows are read
with ``GatherND`` and written back with ``ScatterND`` into zeros of the fixed [B, K, ...] shape —
the pattern of the NMS keep mask. No ``Loop``/``If``; every graph output keeps its shape.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import Tensor

INDEX_OUTPUT = "mask_rows"  # [B, n, 2] (image, row): exposed for the in-graph paste, never a final output


@torch.library.custom_op("deploykit::row_index", mutates_args=())
def row_index(num: Tensor, k: int) -> Tensor:
    """(image, row) pairs int64 [B, n, 2] of the first ``n = min(k, max(1, max(num)))`` rows of each image."""
    b = num.shape[0]
    n = min(k, max(1, int(num.max()) if b else 1))
    images = torch.arange(b).reshape(b, 1, 1).expand(b, n, 1)
    rows = torch.arange(n).reshape(1, n, 1).expand(b, n, 1)
    return torch.cat([images, rows], dim=2)


@row_index.register_fake
def _row_index_fake(num, k):
    n = torch.library.get_ctx().new_dynamic_size(min=1, max=k)
    return num.new_empty((num.shape[0], n, 2), dtype=torch.int64)


@torch.library.custom_op("deploykit::gather_rows", mutates_args=())
def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x`` [B, K, ...] at ``index`` [B, n, 2] -> [B, n, ...]."""
    return x[index[..., 0], index[..., 1]]


@gather_rows.register_fake
def _gather_rows_fake(x, index):
    return x.new_empty((*index.shape[:2], *x.shape[2:]))


@torch.library.custom_op("deploykit::scatter_rows", mutates_args=())
def scatter_rows(y: Tensor, index: Tensor, k: int) -> Tensor:
    """``y`` [B, n, ...] written at ``index`` [B, n, 2] into zeros [B, k, ...]."""
    out = y.new_zeros((y.shape[0], k, *y.shape[2:]))
    out[index[..., 0], index[..., 1]] = y
    return out


@scatter_rows.register_fake
def _scatter_rows_fake(y, index, k):
    return y.new_empty((y.shape[0], k, *y.shape[2:]))


def _row_index_onnx(num, k: int):
    from onnxscript import opset18 as op

    most = op.Max(op.ReduceMax(op.Cast(num, to=onnx.TensorProto.FLOAT), keepdims=1), op.Constant(value_float=1.0))
    grid = op.Constant(value=onnx.numpy_helper.from_array(np.arange(k, dtype=np.float32)))
    rows = op.Reshape(op.NonZero(op.Cast(op.Less(grid, most), to=onnx.TensorProto.FLOAT)),
                      op.Constant(value_ints=[1, -1, 1]))  # [1, n, 1]
    batch = op.Shape(num, start=0, end=1)
    images = op.Reshape(op.Range(op.Constant(value_int=0), op.Squeeze(batch), op.Constant(value_int=1)),
                        op.Constant(value_ints=[-1, 1, 1]))  # [B, 1, 1]
    shape = op.Concat(batch, op.Shape(rows, start=1, end=2), op.Constant(value_ints=[1]), axis=0)
    return op.Concat(op.Expand(images, shape), op.Expand(rows, shape), axis=2)


def _gather_rows_onnx(x, index):
    from onnxscript import opset18 as op

    return op.GatherND(x, index)


def _scatter_rows_onnx(y, index, k: int):
    from onnxscript import opset18 as op

    shape = op.Concat(op.Shape(y, start=0, end=1), op.Constant(value_ints=[k]), op.Shape(y, start=2), axis=0)
    return op.ScatterND(op.Expand(op.CastLike(op.Constant(value_float=0.0), y), shape), index, y)


CUSTOM_TRANSLATIONS = {torch.ops.deploykit.row_index.default: _row_index_onnx,
                       torch.ops.deploykit.gather_rows.default: _gather_rows_onnx,
                       torch.ops.deploykit.scatter_rows.default: _scatter_rows_onnx}
