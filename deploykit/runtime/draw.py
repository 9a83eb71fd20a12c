"""Drawing detections on an image (PIL, no torch)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .preprocess import to_rgb

if TYPE_CHECKING:
    from PIL import Image as PILImage

    from .detector import Detections

#: Distinct, saturated colours; class ``label`` uses ``PALETTE[label % len(PALETTE)]``.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40),
    (128, 0, 0), (170, 255, 195), (128, 128, 0), (0, 0, 128),
)


def _text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


#: Opacity of a drawn instance mask.
MASK_ALPHA = 0.45


def _paint_masks(rgb: np.ndarray, dets: "Detections", min_score: float) -> np.ndarray:
    """``rgb`` with each mask (score >= ``min_score``) blended in its class colour, lowest score first."""
    out = rgb.astype(np.float32)
    order = np.argsort(dets.scores, kind="stable")
    for i in order:
        if dets.scores[i] < min_score:
            continue
        inside = dets.masks[i].astype(bool)
        colour = np.asarray(PALETTE[int(dets.labels[i]) % len(PALETTE)], np.float32)
        out[inside] = (1 - MASK_ALPHA) * out[inside] + MASK_ALPHA * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw_detections(image: np.ndarray, dets: "Detections", min_score: float = 0.0) -> "PILImage.Image":
    """Draw masks (Mask R-CNN), boxes and ``"<class name> <score>"`` captions on a copy of ``image``.

    Args:
        image: uint8 ``[H, W, 3]`` RGB (gray and RGBA are converted).
        dets: detections in this image's pixels (x1, y1, x2, y2).
        min_score: detections below this score are not drawn.

    Returns:
        An RGB ``PIL.Image``; colours are per class, the font is PIL's default.
    """
    from PIL import Image, ImageDraw, ImageFont

    rgb = np.ascontiguousarray(to_rgb(image))
    if getattr(dets, "masks", None) is not None:
        rgb = _paint_masks(rgb, dets, min_score)
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(1, round(max(canvas.size) / 320))
    for box, score, label in zip(dets.boxes, dets.scores, dets.labels):
        if score < min_score:
            continue
        colour = PALETTE[int(label) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle((x1, y1, max(x1, x2), max(y1, y2)), outline=colour, width=width)
        caption = f"{dets.label_name(int(label))} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        text_w, text_h = right - left, bottom - top
        # caption above the box, or inside it when the box touches the top edge
        ty = y1 - text_h - 2 if y1 - text_h - 2 >= 0 else y1
        draw.rectangle((x1, ty, x1 + text_w + 4, ty + text_h + 2), fill=colour)
        draw.text((x1 + 2 - left, ty + 1 - top), caption, fill=_text_colour(colour), font=font)
    return canvas
