"""Model-aware comparison metrics (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
