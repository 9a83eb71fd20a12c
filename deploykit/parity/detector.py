"""End-to-end detector parity: exported ONNX through ``Detector.predict`` vs torchvision ``model([img])``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..runtime import Detector
from .metrics import DetectionMatch, match_detections

HELD_OUT_SEED = 1000  # the demo detector's held-out seed (training uses seed 0)


@dataclass
class DetectorParity:
    images: int = 0
    match: DetectionMatch = field(default_factory=DetectionMatch)
    per_image: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.match.ok

    def summary(self) -> dict:
        return {"images": self.images, "matched": self.match.matched, "ok": self.ok,
                "unmatched_reference": len(self.match.unmatched_ref),
                "unmatched_artifact": len(self.match.unmatched_got),
                "min_iou": self.match.min_iou, "max_score_diff": self.match.max_score_diff}


def reference_detections(model, image: np.ndarray):
    """torchvision's own forward on one H×W×3 uint8 RGB image -> (boxes, scores, labels) numpy."""
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0
    with torch.no_grad():
        out = model([tensor])[0]
    return out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy()


def detector_parity(artifact, model, images: Sequence[np.ndarray], *, min_score: float = 0.3,
                    iou: float = 0.99, score_tol: float = 1e-3, threads: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> DetectorParity:
    """Compare every image's detections both ways (label, IoU >= ``iou``, |Δscore| <= ``score_tol``)."""
    report = DetectorParity()
    with Detector(artifact, threads=threads) as det:
        for i, img in enumerate(images):
            ref = reference_detections(model, img)
            got = det.predict(img)
            m = match_detections(ref, (got.boxes, got.scores, got.labels), min_score=min_score, iou=iou,
                                 score_tol=score_tol)
            report.match = report.match.merge(m)
            report.per_image.append({"index": i, "size": list(img.shape[:2]), "matched": m.matched,
                                     "ok": m.ok, "min_iou": m.min_iou, "max_score_diff": m.max_score_diff})
            report.images += 1
            if progress:
                progress(i + 1, len(images))
    return report


def held_out_images(n: int, seed: int = HELD_OUT_SEED) -> list[np.ndarray]:
    """``n`` synthetic shape images (varied sizes and aspect ratios) from the held-out seed."""
    from ..models.synthetic_shapes import sample_for_index

    return [sample_for_index(seed, i)[0] for i in range(n)]


#: (height, width) of the held-out "photos": sides 200..2000 px, aspect ratios 1:3 .. 3:1
PHOTO_SIZES = [(200, 600), (600, 200), (2000, 667), (667, 2000), (300, 300), (1080, 1920), (1920, 1080),
               (480, 640), (750, 1000), (1000, 750), (800, 800), (201, 577), (1999, 1000), (333, 999),
               (1234, 411), (256, 768), (1500, 1500), (731, 1207), (1023, 1023), (211, 383), (640, 1137),
               (900, 300), (1111, 2000), (500, 1500)]


def held_out_photos(n: int = len(PHOTO_SIZES), seed: int = HELD_OUT_SEED) -> list[np.ndarray]:
    """``n`` held-out synthetic scenes resized (PIL bilinear) to :data:`PHOTO_SIZES` (cycled): the
    sizes and aspect ratios of real photos and video frames, for dynamic-size parity."""
    from PIL import Image

    out = []
    for i, img in enumerate(held_out_images(n, seed)):
        h, w = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        out.append(np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR)))
    return out
