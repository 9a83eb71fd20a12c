"""Seeded synthetic layout → image data for the ``spade_demo`` generator.

Each sample is a scene: a sky with a wavy horizon over ground (grass, sand,
water or road), then a few objects (houses, brick walls, trees, rocks, balls,
flowers), several instances per class, some overlapping. It yields

- ``label``    [H, W] uint8, classes ``0..NUM_CLASSES-1`` and 255 (dontcare) for
  a small unlabelled patch;
- ``instance`` [H, W] int32, ``class * 1000 + k`` (stuff regions use ``k = 0``);
- ``image``    [H, W, 3] uint8, rendered with per-class colour, texture and shading.

Rendering is a deterministic function of the layout: textures are periodic in
absolute pixel coordinates (periods that are powers of two, aligned to the
image grid), shading depends on the object's own geometry (sphere shading for
round objects, a bevel for boxes) and on image height (sky gradient). So a
generator can in principle reproduce it exactly from the label and instance
maps, and L1/PSNR on held-out scenes measure how well it does.

Sample ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, split_id, i])``:
the data are the same on every machine and in every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASS_NAMES = ("sky", "grass", "sand", "water", "road", "house", "wall", "tree", "rock", "ball")
NUM_CLASSES = len(CLASS_NAMES)
DONTCARE = 255
SPLITS = {"train": 0, "heldout": 1}

# Base colours (RGB, 0..1).
_COLOURS = {
    "sky": (0.45, 0.65, 0.95), "grass": (0.25, 0.6, 0.2), "sand": (0.85, 0.75, 0.5),
    "water": (0.15, 0.35, 0.7), "road": (0.4, 0.4, 0.42), "house": (0.8, 0.35, 0.25),
    "wall": (0.7, 0.45, 0.3), "tree": (0.1, 0.4, 0.15), "rock": (0.55, 0.52, 0.5),
    "ball": (0.95, 0.8, 0.1),
}
_DONTCARE_RGB = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Sample:
    label: np.ndarray     # [H, W] uint8
    instance: np.ndarray  # [H, W] int32
    image: np.ndarray     # [H, W, 3] uint8


def make_sample(index: int, *, size: int = 128, seed: int = 0, split: str = "train") -> Sample:
    """Scene ``index`` of ``split`` (``train`` or ``heldout``), ``size``×``size`` pixels."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {sorted(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS[split], index])
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    label = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.int32)
    shade = np.ones((h, w), np.float32)  # per-object multiplicative shading

    # background: sky over a wavy horizon, ground of one or two stuff classes
    horizon = h * rng.uniform(0.25, 0.55) + h * 0.06 * np.sin(
        2 * np.pi * (xx[0] / w * rng.uniform(0.5, 2) + rng.uniform()))
    ground = yy >= horizon[None, :]
    g1, g2 = rng.choice([1, 2, 3, 4], size=2, replace=False)
    label[ground] = g1
    if rng.uniform() < 0.6:  # a second ground band (e.g. a road across grass)
        y0 = rng.uniform(horizon.max(), h * 0.9)
        band = ground & (yy >= y0) & (yy < y0 + rng.uniform(0.08, 0.25) * h + 0.02 * h * np.sin(xx / 9.0))
        label[band] = g2
    inst[:] = label.astype(np.int32) * 1000

    # objects, painted back to front (lower on the image = nearer = later)
    n_obj = int(rng.integers(3, 9))
    objs = []
    for _ in range(n_obj):
        cls = int(rng.integers(5, NUM_CLASSES))
        r = rng.uniform(0.06, 0.16) * w
        cx = rng.uniform(0.05, 0.95) * w
        cy = rng.uniform(horizon.min() - 0.2 * h, 0.95 * h)
        objs.append((cy, cls, r, cx))
    objs.sort()
    counts: dict[int, int] = {}
    for cy, cls, r, cx in objs:
        counts[cls] = counts.get(cls, 0) + 1
        name = CLASS_NAMES[cls]
        if name in ("house", "wall"):
            hw = r * (1.4 if name == "wall" else 1.0)
            hh = r * (0.6 if name == "wall" else 1.0)
            m = (np.abs(xx - cx) <= hw) & (np.abs(yy - cy) <= hh)
            # bevel: darker towards the bottom-right edges
            u = np.clip((xx - (cx - hw)) / (2 * hw), 0, 1)
            v = np.clip((yy - (cy - hh)) / (2 * hh), 0, 1)
            s = 1.1 - 0.35 * np.maximum(u, v) ** 3
        else:
            rr = r if name != "tree" else r * 1.2
            d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / rr**2
            m = d2 <= 1.0
            # sphere lit from the upper left
            nz = np.sqrt(np.clip(1 - d2, 0, 1))
            nx, ny = (xx - cx) / rr, (yy - cy) / rr
            s = 0.35 + 0.75 * np.clip(-0.5 * nx - 0.5 * ny + 0.7 * nz, 0, 1)
        label[m] = cls
        inst[m] = cls * 1000 + counts[cls]
        shade[m] = s[m]

    # a small unlabelled patch in one of three scenes
    if rng.uniform() < 0.33:
        y0, x0 = rng.integers(0, h - 12), rng.integers(0, w - 12)
        dh, dw = rng.integers(6, 16, size=2)
        label[y0:y0 + dh, x0:x0 + dw] = DONTCARE
        inst[y0:y0 + dh, x0:x0 + dw] = -1

    image = render(label, shade, yy, xx, horizon)
    return Sample(label=label, instance=inst, image=image)


def render(label: np.ndarray, shade: np.ndarray, yy: np.ndarray, xx: np.ndarray, horizon: np.ndarray) -> np.ndarray:
    """Paint each class with its colour × texture × shading; returns [H, W, 3] uint8."""
    h, w = label.shape
    out = np.zeros((h, w, 3), np.float32)
    tau = 2 * np.pi
    tex = {
        # sky: lighter towards the horizon
        "sky": 0.75 + 0.35 * np.clip(yy / np.maximum(horizon[None, :], 1), 0, 1),
        # grass: vertical blades, period 4
        "grass": 0.8 + 0.25 * (np.sin(tau * xx / 4) > 0),
        # sand: fine dots on an 8-pixel grid
        "sand": 1.0 - 0.25 * (((xx % 8) < 2) & ((yy % 8) < 2)),
        # water: horizontal ripples, period 8
        "water": 0.85 + 0.3 * (0.5 + 0.5 * np.sin(tau * yy / 8)),
        # road: dashed centre marks every 32 pixels, otherwise plain asphalt
        "road": 1.0 + 0.6 * (((xx % 32) < 16) & ((yy % 16) < 2)),
        # house: 8x8 window grid
        "house": 1.0 - 0.45 * (((xx % 16) >= 4) & ((xx % 16) < 12) & ((yy % 16) >= 4) & ((yy % 16) < 12)),
        # wall: bricks 16x8, offset every other row, dark mortar lines
        "wall": 1.0 - 0.5 * (((yy % 8) == 0) | (((xx + 8 * ((yy // 8) % 2)) % 16) == 0)),
        # tree: diagonal leaf stripes, period 8
        "tree": 0.8 + 0.35 * (((xx + yy) % 8) < 3),
        # rock: checker of 4-pixel cells, faint
        "rock": 0.9 + 0.15 * ((((xx // 4) + (yy // 4)) % 2) == 0),
        # ball: two horizontal bands
        "ball": 1.0 - 0.4 * ((yy % 16) < 4),
    }
    for cls, name in enumerate(CLASS_NAMES):
        m = label == cls
        if not m.any():
            continue
        t = tex[name] * shade
        out[m] = np.asarray(_COLOURS[name], np.float32)[None, :] * t[m][:, None]
    out[label == DONTCARE] = _DONTCARE_RGB
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_batch(indices, *, size: int = 128, seed: int = 0, split: str = "train"):
    """Stack samples: labels [B, H, W] uint8, instances [B, H, W] int32, images [B, H, W, 3] uint8."""
    samples = [make_sample(int(i), size=size, seed=seed, split=split) for i in indices]
    return (np.stack([s.label for s in samples]), np.stack([s.instance for s in samples]),
            np.stack([s.image for s in samples]))
