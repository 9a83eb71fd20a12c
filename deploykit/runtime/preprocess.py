"""Detector preprocessing in numpy, matching torchvision's GeneralizedRCNNTransform.

Pixels-in graphs (manifest ``preprocessing.in_graph``) do all of this inside the graph: the
runtime only checks and stacks the uint8 images (:func:`pixel_batch`). Tensor-input graphs
get it here, in one of two modes:

* ``fixed``: a canvas ``H x W``; the graph expects what torchvision's transform produces
  when configured to fit that canvas (square canvas ``S``: ``min_size = max_size = S``);
* ``dynamic``: the model's own rule, ``scale = min(min_size / min(h, w), max_size / max(h, w))``,
  and the batch zero-padded to the largest size rounded up to ``size_divisible``
  (torchvision's ``batch_images``).

Steps:

1. uint8 ``[h, w, 3]`` RGB -> float32 ``[3, h, w]`` divided by 255;
2. normalised per channel: ``(x - mean) / std`` (float32);
3. resized with ``scale = min(H / h, W / w)`` (fixed) or the dynamic rule (Python float) to
   ``(int(h * scale), int(w * scale))`` by bilinear resampling with
   ``align_corners=False`` and no antialias, exactly like
   ``torch.nn.functional.interpolate(scale_factor=scale, recompute_scale_factor=True)``;
4. padded bottom/right with ``pad_value`` (0.0) up to ``H x W`` (fixed) or the batch's
   padded size (dynamic).

torchvision normalises before resizing; bilinear resampling is linear, so the
order only matters for float rounding, and following torchvision's order keeps
the result within float32 rounding of its output.

No torch here: this module is part of the thin runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import BadInput, expected_got

#: What this module implements, by manifest field. Anything else is refused.
SUPPORTED = {
    "resize": ("fit", "torchvision"),
    "interpolation": ("bilinear",),
    "color": ("RGB",),
    "mode": ("fixed", "dynamic"),
}
#: The graph input's dtype and layout, for tensor-input and pixels-in graphs.
INPUT_FORMAT = {False: {"input_dtype": ("float32",), "layout": ("NCHW",)},
                True: {"input_dtype": ("uint8",), "layout": ("NHWC",)}}


def _size_pair(value: Any, where: str, what: str = "[H, W] positive ints") -> tuple[int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise BadInput(expected_got(where, what, repr(value)))
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class Preprocessing:
    """The detector's ``preprocessing`` manifest section, checked.

    ``input_size`` is the network canvas ``(H, W)`` in pixels (fixed mode; None when
    dynamic); ``mean``/``std`` apply to RGB values already scaled to [0, 1] by
    ``pixel_scale``. Dynamic mode resizes by ``min_size``/``max_size`` and pads to a multiple
    of ``size_divisible``. ``in_graph``: the graph takes uint8 pixels and does everything
    itself; ``image_size_range`` ((min_h, min_w), (max_h, max_w)) is what it accepts.
    """

    input_size: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_scale: float = 1.0 / 255.0
    pad_value: float = 0.0
    mode: str = "fixed"
    in_graph: bool = False
    min_size: int | None = None
    max_size: int | None = None
    size_divisible: int = 32
    image_size_range: tuple[tuple[int, int], tuple[int, int]] | None = None

    @property
    def dynamic(self) -> bool:
        return self.mode == "dynamic"

    @classmethod
    def from_manifest(cls, section: Any, where: str = "manifest preprocessing") -> "Preprocessing":
        """Build from a manifest's ``preprocessing`` dict; BadInput names the bad field."""
        if not isinstance(section, dict):
            raise BadInput(expected_got(where, "a dict", type(section).__name__))
        in_graph = section.get("in_graph", False)
        if not isinstance(in_graph, bool):
            raise BadInput(expected_got(f"{where}.in_graph", "true or false", repr(in_graph)))
        for key, allowed in {**SUPPORTED, **INPUT_FORMAT[in_graph]}.items():
            value = section.get(key, allowed[0])
            if value not in allowed:
                raise BadInput(expected_got(f"{where}.{key}", " or ".join(map(repr, allowed)), repr(value)))
        mode = section.get("mode", "fixed")
        size = min_size = max_size = None
        if mode == "fixed":
            size = _size_pair(section.get("input_size"), f"{where}.input_size")
        else:
            for key in ("min_size", "max_size"):
                value = section.get(key)
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise BadInput(expected_got(f"{where}.{key}", "a positive int (dynamic mode)", repr(value)))
            min_size, max_size = int(section["min_size"]), int(section["max_size"])
        divisible = section.get("size_divisible", 32)
        if not isinstance(divisible, int) or isinstance(divisible, bool) or divisible <= 0:
            raise BadInput(expected_got(f"{where}.size_divisible", "a positive int", repr(divisible)))
        triples = {}
        for key in ("mean", "std"):
            value = section.get(key)
            if (not isinstance(value, (list, tuple)) or len(value) != 3
                    or not all(isinstance(v, (int, float)) for v in value)):
                raise BadInput(expected_got(f"{where}.{key}", "3 numbers (R, G, B)", repr(value)))
            triples[key] = tuple(float(v) for v in value)
        if any(v == 0 for v in triples["std"]):
            raise BadInput(expected_got(f"{where}.std", "non-zero values", repr(section["std"])))
        scale = section.get("pixel_scale", 1.0 / 255.0)
        if not isinstance(scale, (int, float)) or scale <= 0:
            raise BadInput(expected_got(f"{where}.pixel_scale", "a positive number such as 1/255", repr(scale)))
        pad = section.get("pad_value", 0.0)
        if not isinstance(pad, (int, float)):
            raise BadInput(expected_got(f"{where}.pad_value", "a number", repr(pad)))
        image_range = None
        if in_graph:
            rng = section.get("image_size_range")
            if not isinstance(rng, dict):
                raise BadInput(expected_got(f"{where}.image_size_range", "{min: [h, w], max: [h, w]}", repr(rng)))
            low = _size_pair(rng.get("min"), f"{where}.image_size_range.min")
            high = _size_pair(rng.get("max"), f"{where}.image_size_range.max")
            if low[0] > high[0] or low[1] > high[1]:
                raise BadInput(expected_got(f"{where}.image_size_range", "min <= max per side", repr(rng)))
            image_range = (low, high)
        return cls(size, triples["mean"], triples["std"], float(scale), float(pad), mode, in_graph, min_size,
                   max_size, int(divisible), image_range)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(h', w') the resize gives an ``height x width`` image, as torchvision computes it."""
        if self.dynamic:
            return torchvision_resized_size(height, width, min_size=self.min_size, max_size=self.max_size)
        return resized_size(height, width, self.input_size)

    def describe_range(self) -> str:
        (lh, lw), (hh, hw) = self.image_size_range
        return f"{lh}..{hh} x {lw}..{hw} (height x width, manifest image_size_range)"


def torchvision_resized_size(height: int, width: int, *, min_size: int | None = None, max_size: int | None = None,
                             canvas: tuple[int, int] | None = None) -> tuple[int, int]:
    """The resized size eager torchvision computes, in Python floats.

    ``scale = min(min_size / min(h, w), max_size / max(h, w))`` (``GeneralizedRCNNTransform``),
    or ``min(H / h, W / w)`` for a ``canvas``; each side is ``int(side * scale)`` (float64),
    as ``interpolate(recompute_scale_factor=True)`` floors it.
    """
    if canvas is not None:
        scale = min(canvas[0] / height, canvas[1] / width)
    else:
        scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)


def to_rgb(image: Any, what: str = "image") -> np.ndarray:
    """Return ``image`` as uint8 ``[H, W, 3]`` RGB.

    Accepts uint8 ``[H, W, 3]`` (RGB, returned as is), ``[H, W]`` or ``[H, W, 1]``
    (grayscale, replicated) and ``[H, W, 4]`` (RGBA, alpha dropped as PIL's
    RGBA -> RGB conversion does). Anything else raises BadInput.
    """
    if not isinstance(image, np.ndarray):
        raise BadInput(expected_got(what, "a numpy uint8 array [H, W, 3] (RGB)", type(image).__name__))
    if image.dtype != np.uint8:
        raise BadInput(expected_got(what, "dtype uint8 (0..255 RGB)", f"dtype {image.dtype}"))
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise BadInput(expected_got(what, "shape [H, W, 3] (or [H, W] gray, [H, W, 4] RGBA)",
                                    f"shape {list(image.shape)}"))
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise BadInput(expected_got(what, "a non-empty image", f"shape {list(image.shape)}"))
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 4:
        return image[:, :, :3]
    return image


def resized_size(height: int, width: int, canvas: tuple[int, int]) -> tuple[int, int]:
    """Size ``(h', w')`` of an ``height x width`` image fitted into ``canvas = (H, W)``.

    ``scale = min(H / height, W / width)`` in Python float; each side is
    ``int(side * scale)`` as ``torch.nn.functional.interpolate`` computes it with
    ``recompute_scale_factor=True``. For a square canvas ``S`` this is
    torchvision's ``min(S / min_side, S / max_side)`` policy.
    """
    return torchvision_resized_size(height, width, canvas=canvas)


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights along one axis, as ATen's CPU upsample_bilinear2d computes them.

    align_corners=False, no explicit scale: ratio = float32(in) / out; source =
    ratio * (dst + 0.5) - 0.5 clamped at 0; index0 = min(floor(source), in - 1);
    lambda1 = clamp(source - index0, 0, 1); index1 = index0 + 1 unless at the edge.
    """
    if in_size == out_size:  # ATen copies: weight 1 on the same pixel
        idx = np.arange(out_size)
        return idx, idx, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    ratio = np.float32(in_size) / np.float32(out_size)
    # ATen's kernel is compiled with FMA contraction: ratio * (dst + 0.5) - 0.5 is
    # rounded once. In float64 the product and difference are exact, so rounding
    # that to float32 gives the same single rounding.
    src = (np.float64(ratio) * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    idx0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - idx0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    lam0 = (np.float32(1.0) - lam1).astype(np.float32)
    idx1 = idx0 + (idx0 < in_size - 1)
    return idx0, idx1, lam0, lam1


def resize_bilinear(image: np.ndarray, size: tuple[int, int], layout: str = "CHW") -> np.ndarray:
    """Bilinear resize of float32 ``[C, h, w]`` (or ``[h, w, C]`` with ``layout="HWC"``).

    Same arithmetic as torch's upsample_bilinear2d (align_corners=False, no
    antialias) in float32: interpolate along the width, then along the height,
    ``h0 * (w0 * a + w1 * b) + h1 * (w0 * c + w1 * d)``. Only the input rows the
    output needs are interpolated along the width.
    """
    out_h, out_w = size
    if out_h <= 0 or out_w <= 0:
        raise BadInput(expected_got("resized image size", "both sides >= 1 pixel", f"{out_h}x{out_w}"))
    hwc = image if layout == "HWC" else image.transpose(1, 2, 0)
    x0, x1, wx0, wx1 = _linear_taps(hwc.shape[1], out_w)
    y0, y1, wy0, wy1 = _linear_taps(hwc.shape[0], out_h)
    needed = np.union1d(y0, y1)
    src = np.take(hwc, needed, axis=0)
    rows = np.take(src, x0, axis=1)
    rows *= wx0[:, None]
    tmp = np.take(src, x1, axis=1)
    tmp *= wx1[:, None]
    rows += tmp
    r0, r1 = np.searchsorted(needed, y0), np.searchsorted(needed, y1)
    out = np.take(rows, r0, axis=0)
    out *= wy0[:, None, None]
    tmp = np.take(rows, r1, axis=0)
    tmp *= wy1[:, None, None]
    out += tmp
    return out if layout == "HWC" else out.transpose(2, 0, 1)


def _pixel_divisor(pixel_scale: float) -> float | None:
    """255.0 for pixel_scale 1/255: divide (as torchvision users do) rather than multiply."""
    inv = 1.0 / pixel_scale
    return float(round(inv)) if abs(inv - round(inv)) < 1e-9 else None


def padded_batch_size(pre: Preprocessing, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The batch tensor's (H, W): the canvas (fixed), or the largest resized size rounded up to
    ``size_divisible`` (dynamic, torchvision's ``batch_images``)."""
    if not pre.dynamic:
        return pre.input_size
    d = pre.size_divisible
    if not sizes:
        return d, d
    return (-(-max(s[0] for s in sizes) // d) * d, -(-max(s[1] for s in sizes) // d) * d)


def _normalised_resized(rgb: np.ndarray, pre: Preprocessing, what: str) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 HWC RGB -> (float32 HWC normalised and resized, resized size)."""
    height, width = rgb.shape[:2]
    size = pre.resized_size(height, width)
    if min(size) < 1:
        rule = (f"min_size {pre.min_size} / max_size {pre.max_size}" if pre.dynamic
                else f"{pre.input_size[0]}x{pre.input_size[1]}")
        raise BadInput(expected_got(f"{what} size", f"an aspect ratio that resizes ({rule}) with both sides "
                                    ">= 1 pixel", f"{height}x{width}"))
    # Work in HWC (contiguous); per element the arithmetic is torchvision's:
    # x / 255, (x - mean) / std, then resize.
    x = rgb.astype(np.float32)
    divisor = _pixel_divisor(pre.pixel_scale)
    if divisor is not None:
        np.divide(x, np.float32(divisor), out=x)
    else:
        np.multiply(x, np.float32(pre.pixel_scale), out=x)
    np.subtract(x, np.asarray(pre.mean, dtype=np.float32), out=x)
    np.divide(x, np.asarray(pre.std, dtype=np.float32), out=x)
    return resize_bilinear(x, size, layout="HWC"), size


def preprocess_image(image: Any, pre: Preprocessing, what: str = "image") -> tuple[np.ndarray, tuple[int, int]]:
    """One image -> (float32 ``[3, H, W]`` padded tensor, resized size ``(h', w')`` before padding)."""
    x, size = _normalised_resized(to_rgb(image, what), pre, what)
    canvas = np.full((3, *padded_batch_size(pre, [size])), pre.pad_value, dtype=np.float32)
    canvas[:, : size[0], : size[1]] = x.transpose(2, 0, 1)
    return canvas, size


def preprocess_batch(images: Sequence[Any], pre: Preprocessing, names: Sequence[str] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Images -> (``images`` float32 [B, 3, H, W], ``image_sizes`` float32 [B, 2], resized sizes).

    For tensor-input graphs. ``names`` label the images in error messages (default
    ``image 0``, ``image 1``...). Dynamic mode pads the batch to its largest image.
    """
    if pre.in_graph:
        raise BadInput(expected_got("preprocess_batch", "a tensor-input detector",
                                    "a pixels-in graph (feed uint8 images: pixel_batch)"))
    if names is None:
        names = [f"image {i}" for i in range(len(images))] if len(images) > 1 else ["image"]
    resized, sizes = [], []
    for image, name in zip(images, names):
        x, size = _normalised_resized(to_rgb(image, name), pre, name)
        resized.append(x)
        sizes.append(size)
    height, width = padded_batch_size(pre, sizes)
    batch = np.full((len(resized), 3, height, width), pre.pad_value, dtype=np.float32)
    for i, (x, size) in enumerate(zip(resized, sizes)):
        batch[i, :, : size[0], : size[1]] = x.transpose(2, 0, 1)
    return batch, np.asarray(sizes, dtype=np.float32).reshape(-1, 2), sizes


def _rgb_in_range(images: Sequence[Any], pre: Preprocessing, names: Sequence[str] | None
                  ) -> tuple[Sequence[str], list[np.ndarray]]:
    """The images as RGB (gray/RGBA converted), each inside the manifest's ``image_size_range``, and their
    names for messages (``image`` / ``image i`` unless given)."""
    if names is None:
        names = [f"image {i}" for i in range(len(images))] if len(images) > 1 else ["image"]
    rgb = [to_rgb(image, name) for image, name in zip(images, names)]
    (low_h, low_w), (high_h, high_w) = pre.image_size_range
    for image, name in zip(rgb, names):
        h, w = image.shape[:2]
        if not (low_h <= h <= high_h and low_w <= w <= high_w):
            raise BadInput(expected_got(f"{name} size", f"{pre.describe_range()}", f"{h}x{w}"))
    return names, rgb


def pixel_batch(images: Sequence[Any], pre: Preprocessing, names: Sequence[str] | None = None) -> np.ndarray:
    """Images -> ``image`` uint8 [B, h, w, 3] for a pixels-in graph: RGB (gray/RGBA converted),
    every image inside the manifest's ``image_size_range`` and all of one size."""
    names, rgb = _rgb_in_range(images, pre, names)
    first = rgb[0].shape[:2] if rgb else None
    for image, name in zip(rgb[1:], names[1:]):
        if image.shape[:2] != first:
            raise BadInput(expected_got(f"{name} size", f"{first[0]}x{first[1]} like {names[0]} (the images of one "
                                        "batch share one size)", f"{image.shape[0]}x{image.shape[1]}"))
    if not rgb:
        return np.zeros((0, 1, 1, 3), np.uint8)
    return np.stack(rgb)


def image_list_batch(images: Sequence[Any], pre: Preprocessing, names: Sequence[str] | None = None
                     ) -> dict[str, np.ndarray]:
    """Images of any sizes -> the feed of an image-list graph (``deploykit export --input image-list``):
    ``image`` uint8 [B, H, W, 3] (each at the top-left of its slot, zeros beyond; H, W the largest),
    ``image_hw`` int32 [B, 2] (each image's size) and ``canvas`` uint8 [Hp, Wp] (zeros; its shape is the
    batch's padded size by torchvision's rule: :func:`padded_batch_size` of the resized sizes).
    Sizes are checked against the manifest's ``image_size_range``; no pixel is resampled here."""
    names, rgb = _rgb_in_range(images, pre, names)
    hw = np.asarray([image.shape[:2] for image in rgb], np.int32).reshape(-1, 2)
    height, width = (int(hw[:, 0].max()), int(hw[:, 1].max())) if len(rgb) else (1, 1)
    batch = np.zeros((len(rgb), height, width, 3), np.uint8)
    for i, image in enumerate(rgb):
        batch[i, : image.shape[0], : image.shape[1]] = image
    canvas = padded_batch_size(pre, [pre.resized_size(int(h), int(w)) for h, w in hw])
    return {"image": batch, "image_hw": hw, "canvas": np.zeros(canvas, np.uint8)}
