"""End-to-end parity of the trained demo detector: Detector.predict on the exported ONNX vs the
unmodified torchvision model called as model([image_tensor]), on held-out images of many sizes."""

from __future__ import annotations

import pytest

from deploykit import models
from deploykit.compare.parity import detector_parity
from deploykit.data.splits import held_out_images


@pytest.fixture(scope="module")
def demo():
    ckpt = models.resolve_checkpoint("fasterrcnn_demo", None)
    assert ckpt is not None, "the bundled demo checkpoint is missing"
    return models.build("fasterrcnn_demo", min_size=320, max_size=320)  # as tests/conftest.py exports it


def test_demo_parity_on_held_out_images(demo, demo_detector_onnx):
    model, path = demo, demo_detector_onnx
    images = held_out_images(24)
    shapes = {img.shape[:2] for img in images}
    aspects = {round(w / h, 1) for h, w in shapes}
    assert len(shapes) >= 20 and min(aspects) < 0.8 and max(aspects) > 1.25  # sizes and aspects vary
    report = detector_parity(path, model, images, min_score=0.3, iou=0.99, score_tol=1e-3, threads=2)
    s = report.summary()
    assert s["matched"] >= 24, s  # the model does detect things
    assert report.ok, s


def test_demo_parity_batched_dynamic(demo, demo_detector_batch_onnx):
    """A dynamic-batch export predicting a list gives the same detections as single images."""
    model, path = demo, demo_detector_batch_onnx
    report = detector_parity(path, model, held_out_images(6), threads=2)
    assert report.ok, report.summary()
    from deploykit.runtime import Detector

    images = held_out_images(6)
    with Detector(path) as det:
        batched = det.predict(images)
        for img, b in zip(images, batched):
            single = det.predict(img)
            assert len(single) == len(b)
            assert abs(single.scores - b.scores).max(initial=0) < 1e-4
