"""Box arithmetic written to match torchvision's float operations, on fixed-shape tensors."""

from __future__ import annotations

import torch
from torch import Tensor


def decode_boxes(deltas: Tensor, ref: Tensor, weights: tuple[float, float, float, float], clip: float) -> Tensor:
    """torchvision ``BoxCoder.decode_single`` on trailing dims: deltas [..., 4], ref [..., 4] -> [..., 4]."""
    widths = ref[..., 2] - ref[..., 0]
    heights = ref[..., 3] - ref[..., 1]
    ctr_x = ref[..., 0] + 0.5 * widths
    ctr_y = ref[..., 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=clip)
    dh = torch.clamp(deltas[..., 3] / wh, max=clip)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = 0.5 * (torch.exp(dw) * widths)
    half_h = 0.5 * (torch.exp(dh) * heights)
    return torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=-1)


def clip_to_sizes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Clamp x to [0, width], y to [0, height]. boxes [B, ..., 4]; sizes [B, 2] = (height, width)."""
    shape = (sizes.shape[0],) + (1,) * (boxes.dim() - 2)
    h = sizes[:, 0].reshape(shape)
    w = sizes[:, 1].reshape(shape)
    zero = torch.zeros_like(h)
    x1 = torch.minimum(torch.maximum(boxes[..., 0], zero), w)
    y1 = torch.minimum(torch.maximum(boxes[..., 1], zero), h)
    x2 = torch.minimum(torch.maximum(boxes[..., 2], zero), w)
    y2 = torch.minimum(torch.maximum(boxes[..., 3], zero), h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def big_enough(boxes: Tensor, min_size: float) -> Tensor:
    """torchvision ``remove_small_boxes`` as a mask: width and height >= min_size."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, N, D], idx [B, K] -> [B, K, D]."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scale_to_original(boxes: Tensor, resized: Tensor, original: Tensor) -> Tensor:
    """torchvision's ``resize_boxes``: boxes [B, K, 4] from resized to original pixels, unclipped.

    x is multiplied by ``original_w / resized_w`` and y by ``original_h / resized_h`` (float32).
    ``resized``, ``original``: [B, 2] = (height, width).
    """
    ratio = original / resized  # [B, 2] (h, w)
    rh, rw = ratio[:, 0:1], ratio[:, 1:2]
    return torch.stack((boxes[..., 0] * rw, boxes[..., 1] * rh, boxes[..., 2] * rw, boxes[..., 3] * rh), dim=-1)


def rescale_to_original(boxes: Tensor, resized: Tensor, original: Tensor) -> Tensor:
    """torchvision's ``transform.postprocess`` for boxes: :func:`scale_to_original`, then clamped to the
    original image (the scaled clip of torchvision can exceed it by a rounding ulp)."""
    return clip_to_sizes(scale_to_original(boxes, resized, original), original)
