"""Instance masks: the one paste rule every runtime shares, and COCO run-length encoding. No torch.

A Mask R-CNN graph gives its masks in one of two forms (manifest ``postprocessing.masks``):

* **pasted** (default): ``masks`` [B, N, h, w], image-size masks in the original image's pixels,
  made inside the graph — uint8 0/1 (probability > ``mask_threshold``) or, exported with no
  threshold, float32 probabilities; N is the most detections an image of the batch has (or K,
  exported with ``mask_rows="all"``). The runtime only slices each image's first n.
* **compact**: ``mask_probs`` float32 [B, K, M, M] (the mask head's probabilities for the
  detection's class) and ``mask_boxes`` int32 [B, K, 4], the integer box each mask is pasted
  into. The runtime pastes them with :func:`paste_masks`.

The paste rule (torchvision's ``paste_masks_in_image``, float32 as PyTorch computes it):

1. the M×M mask gets a border of one zero pixel: (M+2)×(M+2);
2. the detection's box (x1, y1, x2, y2, original pixels) grows about its centre by (M+2)/M
   (``half_width × float32((M+2)/M)``) and its corners are truncated to integers
   (x0, y0, x1, y1) — :func:`mask_boxes`; the compact graph outputs these corners;
3. the padded mask is resized bilinearly (``align_corners=False``, no antialias) to
   ``h = max(y1 - y0 + 1, 1)`` rows and ``w = max(x1 - x0 + 1, 1)`` columns: output column j
   samples ``max(float32(M+2)/w · (j + 0.5) - 0.5, 0)``, between ``floor`` of it (at most M+1)
   and the next column (clamped), weighted by the fraction;
4. it is placed with its top-left corner at (x0, y0), clipped to the image; elsewhere 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import BadInput, expected_got

#: Masks are binarised with ``probability > threshold`` (torchvision users' convention).
DEFAULT_MASK_THRESHOLD = 0.5


def mask_boxes(boxes: np.ndarray, mask_size: int) -> np.ndarray:
    """Integer paste corners ``[N, 4]`` (x0, y0, x1, y1) of ``boxes`` [N, 4] for M×M masks (rule step 2)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    scale = np.float32((mask_size + 2) / mask_size)
    half_w = (b[:, 2] - b[:, 0]) * np.float32(0.5) * scale
    half_h = (b[:, 3] - b[:, 1]) * np.float32(0.5) * scale
    cx = (b[:, 2] + b[:, 0]) * np.float32(0.5)
    cy = (b[:, 3] + b[:, 1]) * np.float32(0.5)
    out = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    return np.trunc(out).astype(np.int64)


def _taps(size: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps of PyTorch's ``align_corners=False`` resize from ``size`` to ``out`` samples (float32)."""
    ratio = np.float32(size) / np.float32(out)
    src = ratio * (np.arange(out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    i1 = np.where(i0 < size - 1, i0 + 1, i0)
    return i0, i1, (np.float32(1) - lam1).astype(np.float32), lam1.astype(np.float32)


def paste_mask(prob: np.ndarray, corners: Any, image_hw: tuple[int, int]) -> np.ndarray:
    """One M×M probability mask pasted into an image of ``image_hw`` at integer ``corners`` -> float32 [H, W]."""
    m = np.asarray(prob, np.float32)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise BadInput(expected_got("mask", "a square M x M array", f"shape {list(m.shape)}"))
    height, width = int(image_hw[0]), int(image_hw[1])
    x0, y0, x1, y1 = (int(v) for v in corners)
    padded = np.pad(m, 1)
    size = padded.shape[0]
    w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    out = np.zeros((height, width), np.float32)
    xa, xb = max(x0, 0), min(x1 + 1, width)
    ya, yb = max(y0, 0), min(y1 + 1, height)
    if xa >= xb or ya >= yb:
        return out
    cx0, cx1, wx0, wx1 = (t[xa - x0:xb - x0] for t in _taps(size, w))
    cy0, cy1, wy0, wy1 = (t[ya - y0:yb - y0] for t in _taps(size, h))
    top, bottom = padded[cy0], padded[cy1]  # rows [n_rows, size]
    # PyTorch's order: across each row first, then between the two rows
    row0 = top[:, cx0] * wx0 + top[:, cx1] * wx1
    row1 = bottom[:, cx0] * wx0 + bottom[:, cx1] * wx1
    out[ya:yb, xa:xb] = row0 * wy0[:, None] + row1 * wy1[:, None]
    return out


def paste_masks(probs: np.ndarray, corners: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """``probs`` [N, M, M] at integer ``corners`` [N, 4] -> float32 [N, H, W] (the module's rule)."""
    probs = np.asarray(probs, np.float32)
    corners = np.asarray(corners).reshape(-1, 4)
    if probs.ndim != 3 or probs.shape[0] != corners.shape[0]:
        raise BadInput(expected_got("masks and their boxes", "[N, M, M] and [N, 4]",
                                    f"{list(probs.shape)} and {list(corners.shape)}"))
    out = np.zeros((probs.shape[0], int(image_hw[0]), int(image_hw[1])), np.float32)
    for i in range(probs.shape[0]):
        out[i] = paste_mask(probs[i], corners[i], image_hw)
    return out


# -- COCO run-length encoding (uncompressed: pycocotools reads it with frPyObjects) --------------

def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """A binary mask [H, W] -> ``{"size": [H, W], "counts": [...]}`` (column-major runs, zeros first)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise BadInput(expected_got("mask", "a 2-D array [H, W]", f"shape {list(m.shape)}"))
    flat = (m != 0).ravel(order="F")
    if flat.size == 0:
        return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": []}
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(r) for r in runs]}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """The inverse of :func:`rle_encode` -> uint8 [H, W] of 0/1."""
    try:
        h, w = (int(v) for v in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise BadInput(expected_got("RLE", '{"size": [H, W], "counts": [ints]}', repr(rle)[:80])) from None
    if counts.ndim != 1 or (counts < 0).any() or int(counts.sum()) != h * w:
        raise BadInput(expected_got("RLE counts", f"non-negative runs summing to {h}*{w}",
                                    f"{counts.size} runs summing to {int(counts.sum())}"))
    values = np.arange(counts.size) % 2
    return np.repeat(values.astype(np.uint8), counts).reshape((h, w), order="F")
