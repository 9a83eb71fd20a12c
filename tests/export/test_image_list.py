"""Image-list graphs: B images of different sizes in one call, as torchvision's ``model([a, b, c])``.

* the front end equals torchvision's transform of the list (each image resized from its own size,
  normalised, all padded to the batch's size);
* fasterrcnn_demo as built, on 8 lists of 2..8 held-out photos (200..2000 px, aspect 1:3..3:1):
  every detection with score >= 0.3 of eager ``model(list)`` is matched both ways (label,
  IoU >= 0.99, |Δscore| <= 1e-3); maskrcnn_demo's masks too;
* the five other architectures, random BN-calibrated weights: the raw tensors of one graph call on
  a list of three aspect ratios within 1e-4 relative of torchvision's on the same network input;
* the runtime sends a list as one call per chunk; ``group="canvas"`` gives each image's own answer.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from test_detector_export import assert_proposals_agree, rel_err, spread_heads
from test_dynamic_detector import ARCHITECTURES

from deploykit import models
from deploykit.compare.reference import reference_box_head_on, reference_raw_on
from deploykit.data.splits import held_out_photos
from deploykit.errors import BadInput
from deploykit.export.detection.image_list import front_end_list
from deploykit.export.detector import export_detector
from deploykit.manifest import read_manifest
from deploykit.metrics import match_detections
from deploykit.runtime import Detector
from deploykit.runtime.preprocess import Preprocessing, image_list_batch


def lists(n_lists: int, seed: int = 0) -> list[list[np.ndarray]]:
    """``n_lists`` lists of 2..8 distinct held-out photos of mixed sizes and aspects."""
    photos = held_out_photos(24)
    rng = np.random.default_rng(seed)
    return [[photos[i] for i in rng.choice(24, size=int(rng.integers(2, 9)), replace=False)] for _ in range(n_lists)]


def as_tensors(images):
    return [torch.from_numpy(np.array(im, copy=True)).permute(2, 0, 1).float() / 255 for im in images]


def test_front_end_equals_torchvision_batching_of_a_list():
    model = models.build("fasterrcnn_resnet50_fpn")  # 800 / 1333: the sizes really differ
    t = model.transform
    front = front_end_list(mean=tuple(t.image_mean), std=tuple(t.image_std), min_size=800, max_size=1333)
    sess = ort.InferenceSession(front.SerializeToString(), providers=["CPUExecutionProvider"])
    pre = Preprocessing(input_size=None, mean=tuple(t.image_mean), std=tuple(t.image_std), mode="dynamic",
                        in_graph=True, min_size=800, max_size=1333, image_size_range=((1, 1), (4096, 4096)))
    for images in lists(3, seed=5):
        images_ref, _ = t(as_tensors(images))
        images_got, sizes, originals = sess.run(None, image_list_batch(images, pre))
        assert images_got.shape == tuple(images_ref.tensors.shape)
        assert [tuple(s) for s in sizes.astype(int)] == [tuple(s) for s in images_ref.image_sizes]
        assert np.array_equal(originals, np.array([im.shape[:2] for im in images], np.float32))
        # PyTorch interpolates along rows inside columns, this along columns inside rows: rounding only
        assert np.abs(images_got - images_ref.tensors.numpy()).max() <= 1e-4


@pytest.mark.slow
def test_demo_lists_equal_eager_model_of_the_same_list(demo_detector_list_onnx):
    model = models.build("fasterrcnn_demo")  # as built: its own min_size / max_size
    matched = 0
    with Detector(demo_detector_list_onnx, threads=2) as det:
        for k, images in enumerate(lists(8)):
            with torch.no_grad():
                ref = model(as_tensors(images))
            got = det.predict(images)  # one call: the list is at most the graph's batch (8)
            for i, (r, g) in enumerate(zip(ref, got)):
                m = match_detections((r["boxes"].numpy(), r["scores"].numpy(), r["labels"].numpy()),
                                     (g.boxes, g.scores, g.labels))
                assert m.ok, (k, i, images[i].shape, m)
                matched += m.matched
    assert matched >= 40


@pytest.mark.slow
def test_maskrcnn_lists_equal_eager_model_of_the_same_list(tmp_path):
    from deploykit.compare.parity import _mask_iou

    model = models.build("maskrcnn_demo")
    path = tmp_path / "mask_list.onnx"
    export_detector(model, path, input="image-list", dynamic_batch=4, image_size_range=((32, 32), (2048, 2048)))
    masks = 0
    with Detector(path, threads=2) as det:
        for images in lists(2, seed=3):
            images = images[:4]
            with torch.no_grad():
                ref = model(as_tensors(images))
            for r, g, image in zip(ref, det.predict(images), images):
                m = match_detections((r["boxes"].numpy(), r["scores"].numpy(), r["labels"].numpy()),
                                     (g.boxes, g.scores, g.labels))
                assert m.ok, m
                assert g.masks.shape == (len(g), *image.shape[:2])  # each image's own size, not the slot's
                for i in range(min(len(g), len(r["scores"]))):
                    if r["scores"][i] >= 0.3:
                        assert _mask_iou(r["masks"][i, 0].numpy() > 0.5, g.masks[i].astype(bool)) >= 0.99
                        masks += 1
    assert masks >= 4


ASPECTS = [(3, 4), (9, 16), (2, 1)]  # one list: 4:3, 16:9 and 1:2 (height:width)


@pytest.mark.slow
@pytest.mark.parametrize("name,min_size,max_size", ARCHITECTURES)
def test_architecture_list_raw_parity(name, min_size, max_size, tmp_path):
    """One call on a list of three aspect ratios: every raw tensor of every image against torchvision's on the
    graph's own network input (the front end is compared with torchvision's transform above)."""
    torch.manual_seed(0)
    model = spread_heads(models.build(name, min_size=min_size, max_size=max_size), size=min_size)
    path = tmp_path / f"{name}_list_raw.onnx"
    export_detector(model, path, input="image-list", raw=True, dynamic_batch=3, debug_outputs=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    images = []
    for k, (ah, aw) in enumerate(ASPECTS):
        h, w = (min_size * ah // min(ah, aw), min_size * aw // min(ah, aw))
        images.append((np.random.default_rng(k).random((h, w, 3)) * 255).astype(np.uint8))
    pre = Preprocessing.from_manifest(read_manifest(path)["preprocessing"])
    out = dict(zip(names, sess.run(None, image_list_batch(images, pre))))
    ref = reference_raw_on(model, out["images"], out["image_sizes"])
    counts = [int(v.sum()) for v in out["proposal_valid"]]
    heads = reference_box_head_on(model, out["images"], out["image_sizes"],
                                  [out["proposals"][i][:n] for i, n in enumerate(counts)])
    for i in range(len(images)):
        assert rel_err(ref["rpn_objectness"][i], out["rpn_objectness"][i]) <= 1e-4, (name, i)
        assert rel_err(ref["rpn_proposals"][i], out["rpn_proposals"][i]) <= 1e-4, (name, i)
        n = int(out["proposal_valid"][i].sum())
        assert_proposals_agree(out["proposals"][i][:n], ref["proposals"][i], context=(name, i))
        logits, regression = heads[i]
        assert rel_err(logits, out["class_logits"][i][:n]) <= 1e-4, (name, i)
        assert rel_err(regression, out["box_regression"][i][:n]) <= 1e-4, (name, i)


def test_a_list_is_one_call_per_chunk_and_grouping_gives_each_image_its_own_answer(demo_detector_list_onnx):
    images = lists(1, seed=1)[0] + lists(1, seed=2)[0]
    with Detector(demo_detector_list_onnx, threads=2) as det:
        calls = []
        run = det.session.run
        det.session.run = lambda feed: (calls.append(feed["image"].shape[0]), run(feed))[1]
        batched = det.predict(images)
        assert calls == [min(8, len(images))] + ([len(images) - 8] if len(images) > 8 else [])
        calls.clear()
        grouped = det.predict(images, group="canvas")
        assert sum(calls) == len(images) and len(calls) < len(images)  # images sharing a canvas shared a call
        for image, g, b in zip(images, grouped, batched):
            alone = det.predict(image)
            assert len(alone) == len(g) and np.abs(alone.scores - g.scores).max(initial=0) <= 1e-4
            assert len(b) > 0
        with pytest.raises(BadInput, match="group: expected None, or 'canvas'"):
            det.predict(images, group="aspect")


def test_image_list_bad_input(demo_detector_list_onnx, tmp_path):
    with pytest.raises(BadInput, match="--input image-list: expected the model's own resize"):
        export_detector(models.build("fasterrcnn_demo"), tmp_path / "x.onnx", input="image-list", input_size=(320, 320))
    with Detector(demo_detector_list_onnx) as det:
        with pytest.raises(BadInput, match=r"image 1 size: expected 32\.\.4096 x 32\.\.4096"):
            det.predict([np.zeros((64, 64, 3), np.uint8), np.zeros((10, 64, 3), np.uint8)])
        with pytest.raises(BadInput, match=r"input 'image_hw'"):
            det.session.run({"image": np.zeros((1, 64, 64, 3), np.uint8), "image_hw": np.zeros((1, 2), np.int64),
                             "canvas": np.zeros((64, 64), np.uint8)})
