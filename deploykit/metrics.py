"""Every metric deploykit reports, defined once (numpy; pycocotools for COCO mAP, imported on use).

- detections: :func:`box_iou`, :func:`match_detections` (label, IoU, |Δscore|, both ways);
- tensors: :func:`tensor_stats`;
- images: :func:`psnr` (one definition: peak and cap are arguments), :func:`ssim`;
- COCO: :func:`coco_metrics` (mAP@[.5:.95], mAP@.5, ... of a ground-truth dict and detections, boxes or
  masks), :func:`segm_results` (masks as COCO results).

A leaf module: parity, eval, the demo and the demo models' training all use it.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BadInput, expected_got


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes a [N,4] and b [M,4], (x1, y1, x2, y2)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


@dataclass
class DetectionMatch:
    """Result of matching two detection sets both ways."""

    matched: int = 0
    unmatched_ref: list[dict] = field(default_factory=list)  # reference detections with no partner
    unmatched_got: list[dict] = field(default_factory=list)  # artifact detections with no partner
    min_iou: float = 1.0
    max_score_diff: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.unmatched_ref and not self.unmatched_got

    def merge(self, other: "DetectionMatch") -> "DetectionMatch":
        return DetectionMatch(self.matched + other.matched, self.unmatched_ref + other.unmatched_ref,
                              self.unmatched_got + other.unmatched_got, min(self.min_iou, other.min_iou),
                              max(self.max_score_diff, other.max_score_diff))


def _one_way(src, dst, min_score, iou_thr, score_tol, lower):
    """Every src detection with score >= min_score needs a dst partner (same label, IoU, score).

    dst detections scoring a little below ``min_score`` may still be partners (``lower``),
    so a score of 0.3001 vs 0.2999 is not reported as missing.
    """
    sb, ss, sl = src
    db, ds, dl = dst
    keep = ss >= min_score
    cand = ds >= lower
    iou = box_iou(sb[keep], db[cand]) if keep.any() and cand.any() else np.zeros((int(keep.sum()), 0))
    missing, ious, diffs = [], [], []
    for i, j in enumerate(np.flatnonzero(keep)):
        best = None
        for k, m in enumerate(np.flatnonzero(cand)):
            if dl[m] != sl[j] or iou[i, k] < iou_thr or abs(ds[m] - ss[j]) > score_tol:
                continue
            if best is None or iou[i, k] > iou[i, best[0]]:
                best = (k, m)
        if best is None:
            missing.append({"box": [float(v) for v in sb[j]], "score": float(ss[j]), "label": int(sl[j])})
        else:
            ious.append(iou[i, best[0]])
            diffs.append(abs(ds[best[1]] - ss[j]))
    return missing, ious, diffs


def match_detections(ref, got, *, min_score: float = 0.3, iou: float = 0.99, score_tol: float = 1e-3
                     ) -> DetectionMatch:
    """Match reference and artifact detections of one image, both ways.

    ``ref`` and ``got`` are (boxes [N,4], scores [N], labels [N]). A detection with
    score >= ``min_score`` must have a partner on the other side with the same
    label, IoU >= ``iou`` and |Δscore| <= ``score_tol``.
    """
    ref = tuple(np.asarray(x) for x in ref)
    got = tuple(np.asarray(x) for x in got)
    lower = min_score - score_tol
    miss_ref, i1, d1 = _one_way(ref, got, min_score, iou, score_tol, lower)
    miss_got, i2, d2 = _one_way(got, ref, min_score, iou, score_tol, lower)
    ious = i1 + i2
    diffs = d1 + d2
    return DetectionMatch(matched=len(i1), unmatched_ref=miss_ref, unmatched_got=miss_got,
                          min_iou=float(min(ious)) if ious else 1.0,
                          max_score_diff=float(max(diffs)) if diffs else 0.0)


def tensor_stats(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Max/mean/p99 absolute and max relative error (Polygraphy-style per-output stats)."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs artifact {got.shape}")
    diff = np.abs(ref - got)
    rel = diff / np.maximum(np.abs(ref), 1e-12)
    if diff.size == 0:
        return {"max_abs": 0.0, "mean_abs": 0.0, "p99_abs": 0.0, "max_rel": 0.0}
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "p99_abs": float(np.quantile(diff, 0.99)), "max_rel": float(rel.max())}


PSNR_CAP_DB = 100.0


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of ``[..., H, W]`` with the 1-D window ``g`` (rows, then columns)."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = sliding_window_view(x, g.size, axis=-1) @ g
    return np.swapaxes(sliding_window_view(np.swapaxes(x, -1, -2), g.size, axis=-1) @ g, -1, -2)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM of two ``[C, H, W]`` (or ``[H, W]``) images in ``[0, data_range]``, averaged over channels.

    Wang et al. 2004: Gaussian-weighted local means, variances and covariance
    (window ``window``, σ ``sigma``, valid region only), ``C1 = (0.01 L)²``,
    ``C2 = (0.03 L)²``. Images must be at least ``window`` pixels on each side.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise BadInput(expected_got("ssim images", "equal shapes", f"{a.shape} and {b.shape}"))
    if a.ndim == 2:
        a, b = a[None], b[None]
    if min(a.shape[-2:]) < window:
        raise BadInput(expected_got("ssim image size", f">= {window} pixels per side", a.shape[-2:]))
    g = _gaussian_window(window, sigma)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a ** 2
    var_b = _filter_valid(b * b, g) - mu_b ** 2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean(axis=(-2, -1)).mean())


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0, cap: float | None = PSNR_CAP_DB) -> float:
    """PSNR in dB of two images with values in ``[0, peak]``: ``10 log10(peak² / MSE)`` in float64.

    Capped at ``cap`` (default 100 dB, what identical images get); ``cap=None``: identical images
    give ``inf``. eval and the demo report [0, 1] images with peak 1 and the cap; parity reports
    uint8 images with peak 255 and no cap.
    """
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    value = float("inf") if mse == 0 else float(10 * np.log10(peak ** 2 / mse))
    return value if cap is None else float(min(cap, value))

def coco_metrics(gt: dict[str, Any], detections: list[dict[str, Any]], iou_type: str = "bbox") -> dict[str, float]:
    """COCO mAP numbers (pycocotools) of ``detections`` against the ground-truth dict ``gt``.

    ``iou_type``: ``"bbox"`` or ``"segm"`` (detections then carry RLE ``segmentation``).
    Returns ``map`` (mAP@[.5:.95]), ``map50``, ``map75``, ``map_small/medium/large``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not detections:
            return {"map": 0.0, "map50": 0.0, "map75": 0.0}
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = [float(max(v, 0.0)) for v in ev.stats]
    return {"map": s[0], "map50": s[1], "map75": s[2],
            "map_small": s[3], "map_medium": s[4], "map_large": s[5]}


def segm_results(image_id: int, masks: np.ndarray, scores, labels) -> list[dict[str, Any]]:
    """COCO ``segm`` results of one image: binary masks [N, H, W] as compressed RLE (pycocotools)."""
    from pycocotools import mask as mask_utils

    out = []
    for m, s, lab in zip(np.asarray(masks, dtype=np.uint8), scores, labels):
        rle = mask_utils.encode(np.asfortranarray(m))
        out.append({"image_id": int(image_id), "category_id": int(lab), "score": float(s), "segmentation": rle})
    return out
