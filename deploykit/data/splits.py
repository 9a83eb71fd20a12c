"""The project's synthetic data splits, one seed each: training, held-out, calibration.

The demo detector trains on ``shapes.sample_for_index(TRAIN_SEED, i)`` and is measured on
``HELD_OUT_SEED``; calibration streams start at ``CALIBRATION_SEED_OFFSET`` (+ the user's seed),
so the three never overlap. spade_demo uses one seed with ``split="train"`` / ``"heldout"``.
No torch here.
"""

from __future__ import annotations

import numpy as np

TRAIN_SEED = 0
HELD_OUT_SEED = 1000  # the demo detector's held-out seed (training uses TRAIN_SEED)
#: Seed offset of the calibration streams (training uses 0, the held-out sets 1000).
CALIBRATION_SEED_OFFSET = 2000


def held_out_images(n: int, seed: int = HELD_OUT_SEED) -> list[np.ndarray]:
    """``n`` synthetic shape images (varied sizes and aspect ratios) from the held-out seed."""
    from .shapes import sample_for_index

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
