"""Seeded synthetic shapes dataset in COCO detection format.

Each image has a textured, noisy or gradient background with a handful of
filled shapes (six classes) of varied colour, size (about 12 to 160 px),
rotation and position.  Shapes are drawn in order, so later shapes may cover
earlier ones.  Annotations describe the *visible* extent: the box is the
tight box of the shape's pixels that remain visible in the final image, the
area is the number of those pixels, and a shape that is mostly hidden (less
than ``MIN_VISIBLE_FRACTION`` of its pixels visible) gets no annotation.

Every annotation also carries its instance mask — exactly the shape's visible pixels — as a
COCO ``segmentation`` (uncompressed run-length encoding, :func:`deploykit.runtime.masks.rle_encode`),
so the same images train and evaluate Mask R-CNN (:func:`instance_masks` decodes them).

Everything is driven by a ``numpy.random.Generator``: the same seed gives
byte-identical images and identical annotations.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..runtime.masks import rle_decode, rle_encode

CLASS_NAMES: list[str] = [
    "__background__",
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "cross",
]

MIN_SIDE, MAX_SIDE = 160, 480
MIN_ASPECT, MAX_ASPECT = 0.5, 2.0
MIN_OBJ, MAX_OBJ = 12, 160
MAX_OBJECTS = 8
MIN_VISIBLE_FRACTION = 0.5

__all__ = [
    "CLASS_NAMES",
    "make_sample",
    "sample_for_index",
    "write_dataset",
    "load_coco_dataset",
    "coco_dict",
    "instance_masks",
]


# --------------------------------------------------------------------------- shapes


def _regular_polygon(cx: float, cy: float, r: float, n: int, rot: float) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(cx: float, cy: float, r: float, rot: float, inner: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rr = r if k % 2 == 0 else r * inner
        a = rot + math.pi * k / 5
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _cross(cx: float, cy: float, r: float, rot: float, arm: float = 0.36) -> list[tuple[float, float]]:
    # Plus sign inscribed in a circle of radius r: arms of half-width w, length L.
    w = r * arm
    L = math.sqrt(max(r * r - w * w, 1.0))
    base = [(w, L), (w, w), (L, w), (L, -w), (w, -w), (w, -L),
            (-w, -L), (-w, -w), (-L, -w), (-L, w), (-w, w), (-w, L)]
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]


def _shape_polygon(cls: str, cx: float, cy: float, r: float, rot: float):
    """Return ('ellipse', bbox) or ('polygon', points) for a shape of circumradius r."""
    if cls == "circle":
        return "ellipse", [cx - r, cy - r, cx + r, cy + r]
    if cls == "square":
        return "polygon", _regular_polygon(cx, cy, r, 4, rot)
    if cls == "triangle":
        return "polygon", _regular_polygon(cx, cy, r, 3, rot)
    if cls == "star":
        return "polygon", _star(cx, cy, r, rot)
    if cls == "hexagon":
        return "polygon", _regular_polygon(cx, cy, r, 6, rot)
    if cls == "cross":
        return "polygon", _cross(cx, cy, r, rot)
    raise ValueError(f"unknown shape class {cls!r}")


def _draw(draw: ImageDraw.ImageDraw, kind: str, geom, fill, outline=None, width: int = 0) -> None:
    if kind == "ellipse":
        draw.ellipse(geom, fill=fill, outline=outline, width=width if outline is not None else 1)
    else:
        pts = [(round(x, 2), round(y, 2)) for x, y in geom]
        if outline is not None and width > 0:
            draw.polygon(pts, fill=fill, outline=outline, width=width)
        else:
            draw.polygon(pts, fill=fill)


# ----------------------------------------------------------------------- background


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 HxWx3 in [0,255]."""
    kind = int(rng.integers(0, 5))
    c1 = rng.uniform(0, 255, size=3)
    c2 = rng.uniform(0, 255, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # linear gradient
        a = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    elif kind == 1:  # radial gradient
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        t = t / max(float(t.max()), 1.0)
        img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    elif kind == 2:  # stripes / waves
        f = rng.uniform(0.02, 0.15)
        a = rng.uniform(0, math.pi)
        t = 0.5 + 0.5 * np.sin((xx * math.cos(a) + yy * math.sin(a)) * f)
        c2 = c1 + rng.uniform(-70, 70, size=3)
        img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    elif kind == 3:  # checkerboard, low contrast
        cell = int(rng.integers(8, 48))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
        c2 = c1 + rng.uniform(-50, 50, size=3)
        img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    else:  # smooth blotchy noise (upsampled random field)
        gh, gw = int(rng.integers(3, 10)), int(rng.integers(3, 10))
        field = rng.uniform(0, 255, size=(gh, gw, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(field).resize((w, h), Image.BILINEAR), dtype=np.float32)
        img = img * rng.uniform(0.3, 0.8) + c1[None, None] * 0.3
    img = img + rng.normal(0, rng.uniform(0, 12), size=(h, w, 1)) if rng.random() < 0.5 else img
    return np.clip(img, 0, 255).astype(np.float32)


def _pick_colour(rng: np.random.Generator, ref: np.ndarray) -> tuple[int, int, int]:
    """A random colour far enough from ``ref`` (mean background colour under the shape)."""
    best, best_d = None, -1.0
    for _ in range(20):
        c = rng.integers(0, 256, size=3)
        d = float(np.linalg.norm(c.astype(np.float32) - ref))
        if d > best_d:
            best, best_d = c, d
        if d >= 90:
            break
    return int(best[0]), int(best[1]), int(best[2])


# -------------------------------------------------------------------------- sample


def make_sample(rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one image and its annotations.

    Returns ``(image, annotations)``: ``image`` is an HxWx3 uint8 RGB array and
    each annotation is ``{"bbox": [x, y, w, h], "category_id": int,
    "area": float, "iscrowd": 0, "segmentation": RLE}`` with the box in pixel
    coordinates (COCO convention: ``x, y`` top-left, the box covers pixels
    ``x .. x+w-1``) and the visible pixels as an uncompressed COCO RLE.
    """
    while True:
        h = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        w = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        if MIN_ASPECT <= w / h <= MAX_ASPECT:
            break
    bg = _background(rng, h, w)
    canvas = Image.fromarray(bg.astype(np.uint8), "RGB")
    mask = Image.new("L", (w, h), 0)
    dcanvas = ImageDraw.Draw(canvas)
    dmask = ImageDraw.Draw(mask)

    n_obj = int(rng.integers(1, MAX_OBJECTS + 1))
    max_obj = min(MAX_OBJ, int(0.85 * min(h, w)))
    objs = []  # (instance id, class id, full pixel count)
    for i in range(n_obj):
        cls_id = int(rng.integers(1, len(CLASS_NAMES)))
        size = float(math.exp(rng.uniform(math.log(MIN_OBJ), math.log(max_obj))))  # diameter
        r = size / 2
        cx = float(rng.uniform(r, w - r))
        cy = float(rng.uniform(r, h - r))
        rot = float(rng.uniform(0, 2 * math.pi))
        kind, geom = _shape_polygon(CLASS_NAMES[cls_id], cx, cy, r, rot)
        x0, y0 = max(int(cx - r), 0), max(int(cy - r), 0)
        x1, y1 = min(int(cx + r) + 1, w), min(int(cy + r) + 1, h)
        ref = bg[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
        fill = _pick_colour(rng, ref)
        outline, width = None, 0
        if rng.random() < 0.3 and size >= 24:
            outline = tuple(int(v) for v in rng.integers(0, 256, size=3))
            width = int(rng.integers(1, max(2, int(size / 12)) + 1))
        inst = i + 1
        # Count this shape's own pixels on a scratch mask (its full extent).
        scratch = Image.new("L", (w, h), 0)
        _draw(ImageDraw.Draw(scratch), kind, geom, fill=255, outline=255 if outline else None, width=width)
        full = int(np.count_nonzero(np.asarray(scratch)))
        if full == 0:
            continue
        _draw(dcanvas, kind, geom, fill=fill, outline=outline, width=width)
        _draw(dmask, kind, geom, fill=inst, outline=inst if outline else None, width=width)
        objs.append((inst, cls_id, full))

    img = np.asarray(canvas, dtype=np.float32)
    sigma = float(rng.uniform(0, 10))
    if sigma > 1:
        img = img + rng.normal(0, sigma, size=img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    m = np.asarray(mask)
    anns: list[dict[str, Any]] = []
    for inst, cls_id, full in objs:
        visible = m == inst
        ys, xs = np.nonzero(visible)
        if len(xs) < MIN_VISIBLE_FRACTION * full or len(xs) == 0:
            continue
        bx0, by0 = int(xs.min()), int(ys.min())
        bw, bh = int(xs.max()) - bx0 + 1, int(ys.max()) - by0 + 1
        anns.append({
            "bbox": [float(bx0), float(by0), float(bw), float(bh)],
            "category_id": cls_id,
            "area": float(len(xs)),
            "iscrowd": 0,
            "segmentation": rle_encode(visible),
        })
    return image, anns


def sample_for_index(seed: int, index: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Image ``index`` of the dataset with ``seed`` (independent of the others)."""
    return make_sample(np.random.default_rng([int(seed), int(index)]))


def instance_masks(anns: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """The annotations' instance masks, uint8 [N, height, width] of 0/1."""
    if not anns:
        return np.zeros((0, height, width), np.uint8)
    return np.stack([rle_decode(a["segmentation"]) for a in anns])


# ----------------------------------------------------------------------------- COCO


def coco_dict(samples, file_names=None) -> dict[str, Any]:
    """COCO ground-truth dict for a list of ``(image, annotations)`` samples."""
    images, annotations = [], []
    ann_id = 1
    for i, (img, anns) in enumerate(samples):
        image_id = i + 1
        h, w = int(img.shape[0]), int(img.shape[1])
        name = file_names[i] if file_names is not None else f"{image_id:06d}.png"
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for a in anns:
            annotations.append({
                "id": ann_id,
                "image_id": image_id,
                "category_id": int(a["category_id"]),
                "bbox": [float(v) for v in a["bbox"]],
                "area": float(a["area"]),
                "iscrowd": int(a.get("iscrowd", 0)),
                **({"segmentation": a["segmentation"]} if "segmentation" in a else {}),
            })
            ann_id += 1
    categories = [{"id": i, "name": n, "supercategory": "shape"}
                  for i, n in enumerate(CLASS_NAMES) if i > 0]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_dataset(out_dir: str | os.PathLike, n_images: int, seed: int, split_name: str = "val") -> str:
    """Write ``n_images`` PNGs and ``annotations.json`` (COCO) into ``out_dir``.

    Image ``i`` is ``sample_for_index(seed, i)``.  Returns the JSON path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples, names = [], []
    for i in range(n_images):
        img, anns = sample_for_index(seed, i)
        name = f"{split_name}_{i:06d}.png"
        Image.fromarray(img).save(out / name, format="PNG")
        samples.append((np.zeros((img.shape[0], img.shape[1], 0), np.uint8), anns))
        names.append(name)
    coco = coco_dict(samples, names)
    coco["info"] = {"description": f"deploykit synthetic shapes, split {split_name}",
                    "seed": int(seed), "n_images": int(n_images), "generator": __name__}
    path = out / "annotations.json"
    tmp = out / ".annotations.json.tmp"
    tmp.write_text(json.dumps(coco))
    os.replace(tmp, path)
    return str(path)


def load_coco_dataset(directory: str | os.PathLike) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """Read a dataset written by :func:`write_dataset` (or any COCO dir with
    ``annotations.json`` beside the images).

    Returns ``(image_paths, annotations)`` in image-id order, where
    ``annotations[i]`` is the list of annotation dicts (``bbox`` xywh,
    ``category_id``, ``area``, ``iscrowd``) of image ``i``.
    """
    d = Path(directory)
    coco = json.loads((d / "annotations.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["id"])
    by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in images}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append({
            "bbox": list(a["bbox"]),
            "category_id": int(a["category_id"]),
            "area": float(a["area"]),
            "iscrowd": int(a.get("iscrowd", 0)),
            **({"segmentation": a["segmentation"]} if "segmentation" in a else {}),
        })
    paths = [str(d / im["file_name"]) for im in images]
    return paths, [by_image[im["id"]] for im in images]
