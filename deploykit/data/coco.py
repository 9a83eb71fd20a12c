"""A COCO detection folder (``annotations.json`` + the images it names), read and checked. No torch."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, expected_got


def load_coco_dir(directory: str | os.PathLike, samples: int | None = None
                  ) -> tuple[list[np.ndarray], dict[str, Any], list[int]]:
    """A COCO detection directory → (images, ground-truth dict, image ids), first ``samples`` by image id.

    Raises :class:`BadInput` naming the directory or file: missing directory, no
    ``annotations.json``, invalid JSON, missing ``images``/``annotations``/``categories``,
    an image entry without ``id``/``file_name``, a missing or unreadable image.
    """
    from ..runtime.images import load_image

    d = Path(directory)
    if not d.exists():
        raise BadInput(expected_got(f"--data {d}", "an existing COCO dataset directory", "no such directory"))
    if not d.is_dir():
        raise BadInput(expected_got(f"--data {d}", "a COCO dataset directory (annotations.json + images)", "a file"))
    ann = d / "annotations.json"
    if not ann.is_file():
        entries = sum(1 for _ in d.iterdir())
        raise BadInput(expected_got(f"--data {d}", "a COCO dataset directory with annotations.json beside the images",
                                    f"no annotations.json ({entries} entries)"))
    try:
        coco = json.loads(ann.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(expected_got(f"{ann}", "COCO JSON", f"parse error ({str(e).splitlines()[0]})")) from None
    missing = [k for k in ("images", "annotations", "categories")
               if not isinstance(coco, dict) or not isinstance(coco.get(k), list)]
    if missing:
        raise BadInput(expected_got(f"{ann}", "COCO keys images, annotations, categories (lists)",
                                    f"missing {missing}"))
    images = coco["images"]
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise BadInput(expected_got(f"{ann} images[{i}]", "an object with id and file_name", repr(im)[:80]))
    if not images:
        raise BadInput(expected_got(f"{ann}", "at least one image", "an empty images list"))
    images = sorted(images, key=lambda im: im["id"])[:samples]
    ids = [im["id"] for im in images]
    keep = set(ids)
    for i, a in enumerate(coco["annotations"]):
        if not isinstance(a, dict) or not {"image_id", "bbox", "category_id"} <= set(a):
            raise BadInput(expected_got(f"{ann} annotations[{i}]", "an object with image_id, bbox, category_id",
                                        repr(a)[:80]))
    gt = {"images": images,
          "annotations": [{"area": float(a["bbox"][2]) * float(a["bbox"][3]), "iscrowd": 0, **a,
                           "id": a.get("id", n + 1)}
                          for n, a in enumerate(coco["annotations"]) if a["image_id"] in keep],
          "categories": coco["categories"]}
    arrays = [load_image(d / im["file_name"]) for im in images]
    return arrays, gt, ids
