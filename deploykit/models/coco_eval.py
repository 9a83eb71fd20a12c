"""COCO evaluation (pycocotools) of a torchvision-style detector: boxes, and masks for Mask R-CNN.

``evaluate_coco(model, data)`` runs ``model([image_tensor])`` (eval mode, no
grad) on every image and returns ``{"map": mAP@[.5:.95], "map50": mAP@.5,
"map75": ..., "n_images": ..., "n_annotations": ...}``; a model that outputs ``masks``
(Mask R-CNN) adds ``mask_map``, ``mask_map50``, ``mask_map75`` (segm, masks > 0.5).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["evaluate_coco"]


def _load_samples(data) -> list[tuple[np.ndarray, list[dict[str, Any]]]]:
    from PIL import Image

    from ..data.shapes import load_coco_dataset

    if isinstance(data, (str, os.PathLike)):
        paths, anns = load_coco_dataset(Path(data))
        out = []
        for p, a in zip(paths, anns):
            with Image.open(p) as im:
                out.append((np.array(im.convert("RGB")), a))
        return out
    return list(data)


def evaluate_coco(model, data: str | os.PathLike | Sequence[tuple[np.ndarray, list]] | Iterable,
                  batch_size: int = 1) -> dict[str, float]:
    """Evaluate ``model`` on a COCO dataset directory or a list of samples.

    ``data`` is a directory holding ``annotations.json`` and the images (as
    written by :func:`deploykit.data.shapes.write_dataset`), or a
    sequence of ``(HxWx3 uint8 RGB array, annotations)`` pairs as returned by
    :func:`~deploykit.data.shapes.make_sample`.
    """
    import torch

    from ..data.shapes import coco_dict
    from ..metrics import coco_metrics, segm_results

    samples = _load_samples(data)
    gt = coco_dict(samples)
    was_training = model.training
    model.eval()
    dets: list[dict[str, Any]] = []
    segm: list[dict[str, Any]] = []
    try:
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                chunk = samples[start:start + batch_size]
                tensors = [torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255)
                           for img, _ in chunk]
                outs = model(tensors)
                for k, o in enumerate(outs):
                    image_id = start + k + 1
                    boxes = o["boxes"].numpy().astype(np.float64)
                    for b, sc, lb in zip(boxes, o["scores"].tolist(), o["labels"].tolist()):
                        dets.append({"image_id": image_id, "category_id": int(lb),
                                     "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                                     "score": float(sc)})
                    if "masks" in o:
                        binary = (o["masks"][:, 0] > 0.5).numpy()
                        segm.extend(segm_results(image_id, binary, o["scores"].tolist(), o["labels"].tolist()))
    finally:
        model.train(was_training)
    metrics = coco_metrics(gt, dets)
    if segm or getattr(getattr(model, "roi_heads", None), "has_mask", lambda: False)():
        mask = coco_metrics(gt, segm, iou_type="segm")
        metrics.update({f"mask_{k}": v for k, v in mask.items() if k in ("map", "map50", "map75")})
    metrics["n_images"] = len(samples)
    metrics["n_annotations"] = len(gt["annotations"])
    return metrics
