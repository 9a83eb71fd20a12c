"""deploykit.runtime.preprocess against torch's interpolate and torchvision's GeneralizedRCNNTransform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from deploykit.errors import BadInput
from deploykit.runtime.preprocess import (
    Preprocessing,
    preprocess_batch,
    preprocess_image,
    resize_bilinear,
    resized_size,
    to_rgb,
)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# (height, width): down- and up-scaling, both orientations, square, extreme aspects, odd sizes
SIZES = [(480, 640), (640, 480), (333, 517), (517, 333), (100, 100), (37, 53), (53, 37), (1000, 97), (97, 1000),
         (256, 256), (255, 257), (129, 128), (12, 700), (701, 13), (240, 320)]


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth gradient plus noise, so both flat and busy regions are resampled."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), (xx + yy) % 256], axis=2)
    noise = rng.integers(-40, 41, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("canvas", [(128, 128), (96, 160)])
def test_resize_matches_torch_interpolate(canvas):
    rng = np.random.default_rng(0)
    for height, width in SIZES:
        x = rng.standard_normal((3, height, width)).astype(np.float32)
        scale = min(canvas[0] / height, canvas[1] / width)
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], scale_factor=scale, mode="bilinear",
                                              align_corners=False, recompute_scale_factor=True)[0].numpy()
        size = resized_size(height, width, canvas)
        assert size == ref.shape[1:], (height, width)
        ours = resize_bilinear(x, size)
        assert ours.dtype == np.float32
        assert np.abs(ours - ref).max() <= 1e-5, (height, width, np.abs(ours - ref).max())
        hwc = resize_bilinear(np.ascontiguousarray(x.transpose(1, 2, 0)), size, layout="HWC")
        np.testing.assert_array_equal(hwc.transpose(2, 0, 1), ours)


def test_resized_size_matches_torch_for_many_sizes():
    rng = np.random.default_rng(1)
    empty = torch.empty(0)
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(1, 3000, 2))
        canvas = (int(rng.integers(32, 1400)),) * 2
        scale = min(canvas[0] / height, canvas[1] / width)
        # torch's own output-size arithmetic, on a zero-batch tensor (no resampling work)
        ref = torch.nn.functional.interpolate(empty.new_zeros((0, 1, height, width)), scale_factor=scale,
                                              mode="bilinear", recompute_scale_factor=True).shape[2:]
        assert resized_size(height, width, canvas) == tuple(ref), (height, width, canvas)


@pytest.mark.parametrize("canvas_side", [128, 320])
def test_matches_generalized_rcnn_transform(canvas_side):
    rng = np.random.default_rng(canvas_side)
    transform = GeneralizedRCNNTransform(min_size=canvas_side, max_size=canvas_side, image_mean=list(MEAN),
                                         image_std=list(STD), size_divisible=canvas_side).eval()
    pre = Preprocessing((canvas_side, canvas_side), MEAN, STD)
    images = [random_image(rng, h, w) for h, w in SIZES]
    tensors = [torch.from_numpy(img).permute(2, 0, 1).float() / 255 for img in images]
    with torch.no_grad():
        ref, _ = transform(tensors)
    batch, image_sizes, sizes = preprocess_batch(images, pre)
    assert batch.shape == tuple(ref.tensors.shape) == (len(SIZES), 3, canvas_side, canvas_side)
    assert sizes == [tuple(s) for s in ref.image_sizes]
    np.testing.assert_array_equal(image_sizes, np.float32(ref.image_sizes))
    err = np.abs(batch - ref.tensors.numpy()).max(axis=(1, 2, 3))
    assert err.max() <= 1e-5, dict(zip(SIZES, err))
    for tensor, (h, w) in zip(batch, sizes):  # padding is exactly zero, after normalisation
        assert not tensor[:, h:, :].any() and not tensor[:, :, w:].any()


def test_non_square_canvas_fits_and_pads():
    pre = Preprocessing((96, 160), MEAN, STD, pad_value=0.0)
    img = random_image(np.random.default_rng(2), 300, 200)
    tensor, size = preprocess_image(img, pre)
    assert size == (96, 64)
    assert tensor.shape == (3, 96, 160) and not tensor[:, :, 64:].any()
    x = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(
        STD)[:, None, None]
    ref = torch.nn.functional.interpolate(x[None], scale_factor=min(96 / 300, 160 / 200), mode="bilinear",
                                          recompute_scale_factor=True)[0].numpy()
    assert np.abs(tensor[:, :, :64] - ref).max() <= 1e-5


def test_gray_and_rgba_are_converted():
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    assert to_rgb(gray).shape == (20, 30, 3)
    np.testing.assert_array_equal(to_rgb(gray)[:, :, 2], gray)
    np.testing.assert_array_equal(to_rgb(gray[:, :, None]), to_rgb(gray))
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb(rgba), rgba[:, :, :3])
    pre = Preprocessing((64, 64), MEAN, STD)
    np.testing.assert_array_equal(preprocess_image(rgba, pre)[0], preprocess_image(rgba[:, :, :3].copy(), pre)[0])


@pytest.mark.parametrize("bad,parts", [
    (np.zeros((10, 10, 3), np.float32), ["image", "uint8", "float32"]),
    (np.zeros((2, 10, 10, 3), np.uint8), ["image", "[H, W, 3]", "[2, 10, 10, 3]"]),
    (np.zeros((10, 10, 2), np.uint8), ["image", "[10, 10, 2]"]),
    (np.zeros((0, 10, 3), np.uint8), ["image", "non-empty"]),
    ([[1, 2], [3, 4]], ["image", "numpy uint8 array", "list"]),
])
def test_bad_images_are_refused(bad, parts):
    with pytest.raises(BadInput) as info:
        preprocess_image(bad, Preprocessing((64, 64), MEAN, STD))
    assert "\n" not in str(info.value)
    for part in parts:
        assert part in str(info.value)


def test_too_thin_image_is_refused():
    with pytest.raises(BadInput, match="image size: expected .* got 1x1000"):
        preprocess_image(np.zeros((1, 1000, 3), np.uint8), Preprocessing((64, 64), MEAN, STD))


def _section(**changes):
    section = {"input_size": [64, 64], "resize": "fit", "interpolation": "bilinear", "mean": list(MEAN),
               "std": list(STD), "pixel_scale": 1 / 255, "input_dtype": "float32", "layout": "NCHW",
               "color": "RGB", "pad_value": 0.0}
    section.update(changes)
    return section


def test_preprocessing_from_manifest():
    pre = Preprocessing.from_manifest(_section())
    assert pre == Preprocessing((64, 64), MEAN, STD, 1 / 255, 0.0)


@pytest.mark.parametrize("changes,field", [
    ({"resize": "stretch"}, "preprocessing.resize"),
    ({"interpolation": "bicubic"}, "preprocessing.interpolation"),
    ({"layout": "NHWC"}, "preprocessing.layout"),
    ({"color": "BGR"}, "preprocessing.color"),
    ({"input_dtype": "float16"}, "preprocessing.input_dtype"),
    ({"input_size": [64]}, "preprocessing.input_size"),
    ({"mean": [0.5, 0.5]}, "preprocessing.mean"),
    ({"std": [0.2, 0.0, 0.2]}, "preprocessing.std"),
    ({"pixel_scale": -1}, "preprocessing.pixel_scale"),
])
def test_preprocessing_fields_are_checked(changes, field):
    with pytest.raises(BadInput) as info:
        Preprocessing.from_manifest(_section(**changes))
    assert str(info.value).startswith(f"manifest {field}: expected"), str(info.value)
