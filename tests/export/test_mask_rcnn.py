"""Mask R-CNN: masks in the original image's pixels from one graph, proven against torchvision.

* maskrcnn_demo (trained here) as built, pixels in, any size: on 24 held-out photos of 200..2000 px
  and aspect 1:3..3:1, and a batch of equal frames, every reference detection with score >= 0.3 is
  matched (label, IoU >= 0.99, |Δscore| <= 1e-3) and so is its mask (IoU >= 0.99 of the
  0.5-thresholded masks); the pasted probabilities' max |Δ| is reported;
* the graph's pasted masks equal the compact masks pasted by the runtime's shared rule;
* maskrcnn_resnet50_fpn(_v2), random BN-calibrated weights: the mask logits within 1e-4 relative of
  torchvision's mask branch on the same network input and boxes, at three aspect ratios;
* the graph: no Loop/If, TensorRT-ready, masks' spatial dims the image's own, one mask per detection
  (a declared data-dependent dimension) or all K rows (``mask_rows="all"``, the same masks);
  bad options refused.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from test_detector_export import rel_err, spread_heads

from deploykit import models
from deploykit.compare.parity import compare_detections
from deploykit.compare.reference import reference_mask_head
from deploykit.data.splits import held_out_images, held_out_photos
from deploykit.errors import BadInput
from deploykit.export.detector import export_detector
from deploykit.export.trt_support import check_readiness
from deploykit.manifest import read_manifest
from deploykit.runtime import Detector
from deploykit.runtime.masks import paste_masks


@pytest.fixture(scope="module")
def demo_model():
    assert models.resolve_checkpoint("maskrcnn_demo", None) is not None, "the bundled checkpoint is missing"
    return models.build("maskrcnn_demo")


@pytest.mark.slow
def test_demo_parity_on_held_out_photos_and_a_batch(demo_model, demo_maskrcnn_probs_onnx):
    photos = held_out_photos(24)
    aspects = [img.shape[1] / img.shape[0] for img in photos]
    assert min(aspects) <= 1 / 2.9 and max(aspects) >= 2.9 and max(max(i.shape[:2]) for i in photos) >= 2000
    with Detector(demo_maskrcnn_probs_onnx, threads=2) as det:
        report = compare_detections(det, demo_model, [(f"photo {i}", im) for i, im in enumerate(photos)])
        v = report["verdict"]
        print(f"\nmaskrcnn_demo, 24 photos: {v['matched']} detections matched, {v['masks_compared']} masks, "
              f"min mask IoU {v['min_mask_iou']:.5f}, max |Δ pasted probability| {v['max_mask_prob_diff']:.2e}, "
              f"min box IoU {v['min_iou']:.6f}, max |Δscore| {v['max_score_diff']:.1e}")
        assert report["ok"], report["verdict"]
        assert v["masks_compared"] >= 24 and v["min_mask_iou"] >= 0.99
        assert v["max_mask_prob_diff"] < 0.05  # reported; the gate is the mask IoU above

        frames = [np.asarray(Image.fromarray(img).resize((640, 360))) for img in held_out_images(3)]
        batched = det.predict(frames)  # one run of batch 3
        for frame, got in zip(frames, batched):
            single = det.predict(frame)
            assert len(single) == len(got) and np.array_equal(single.masks, got.masks)
        batch_report = compare_detections(det, demo_model, [(f"frame {i}", f) for i, f in enumerate(frames)])
        assert batch_report["ok"], batch_report["verdict"]


def test_graph_paste_equals_the_runtime_paste_of_the_compact_masks(demo_maskrcnn_probs_onnx):
    sess = ort.InferenceSession(str(demo_maskrcnn_probs_onnx), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    for image in held_out_photos(3):
        out = dict(zip(names, sess.run(None, {"image": image[None]})))
        n = int(out["num_detections"][0])
        assert n > 0 and out["masks"].shape == (1, n, *image.shape[:2])  # one mask per detection, no padding rows
        runtime = paste_masks(out["mask_probs"][0, :n], out["mask_boxes"][0, :n], image.shape[:2])
        assert np.abs(runtime - out["masks"][0]).max() <= 1e-5
        assert not out["mask_boxes"][0, n:].any()  # the compact form keeps K rows: padding rows are empty


def test_default_export_gives_binary_masks_in_the_image_pixels(demo_maskrcnn_onnx, demo_maskrcnn_probs_onnx):
    model = onnx.load(str(demo_maskrcnn_onnx), load_external_data=False)
    assert not any(n.op_type in ("Loop", "If", "Scan") for n in model.graph.node)
    manifest = read_manifest(demo_maskrcnn_onnx)
    readiness = check_readiness(model, manifest)
    assert readiness.ok and readiness.data_dependent == ["masks[1]"]
    undeclared = check_readiness(model).violations  # without the manifest's declaration, the rule still holds
    assert [v.what for v in undeclared] == ["output 'masks' dimension 1"] and "NonZero" in undeclared[0].got
    masks = {o["name"]: o for o in manifest["outputs"]}["masks"]
    assert masks["dtype"] == "uint8" and masks["shape"] == ["batch", "num_masks", "height", "width"]
    section = manifest["postprocessing"]["masks"]
    assert section["form"] == "pasted" and section["threshold"] == 0.5 and section["rows"] == "detections"
    assert section["bytes_per_image_pixel"] == 100  # the bound: K rows
    image = held_out_photos(5)[4]
    with Detector(demo_maskrcnn_onnx) as binary, Detector(demo_maskrcnn_probs_onnx) as probs:
        a, b = binary.predict(image), probs.predict(image)
    assert a.masks.dtype == np.uint8 and a.masks.shape == (len(a), *image.shape[:2]) and a.mask_probs is None
    differ = a.masks != (b.mask_probs > 0.5)
    assert np.abs(b.mask_probs[differ] - 0.5).max(initial=0) < 1e-6  # only within a float rounding of 0.5
    assert differ.mean() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_architecture_mask_logits(name, tmp_path):
    """Raw mask logits on the graph's own network input and boxes, three aspect ratios, 1e-4 relative."""
    torch.manual_seed(0)
    model = spread_heads(models.build(name, min_size=320, max_size=560), size=320)
    path = tmp_path / f"{name}.onnx"
    export_detector(model, path, input="image", masks="compact", debug_outputs=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    for k, (ah, aw) in enumerate([(3, 4), (9, 16), (2, 1)]):
        h, w = (320 * ah // min(ah, aw), 320 * aw // min(ah, aw))
        image = (np.random.default_rng(k).random((h, w, 3)) * 255).astype(np.uint8)
        out = dict(zip(names, sess.run(None, {"image": image[None]})))
        n = int(out["num_detections"][0])
        assert n >= 10, (name, h, w, n)
        ref = reference_mask_head(model, out["images"], out["image_sizes"][0], out["boxes_network"][0, :n],
                                  out["labels"][0, :n])
        assert rel_err(ref, out["mask_logits"][0, :n]) <= 1e-4, (name, h, w)


def test_all_rows_form_has_a_static_shape_and_the_same_masks(demo_model, demo_maskrcnn_onnx, tmp_path):
    """``mask_rows="all"``: [B, K, h, w], TensorRT-ready without a declaration; the detections' rows equal the
    default form's masks, the rest are empty."""
    path = tmp_path / "all.onnx"
    export_detector(demo_model, path, input="image", mask_rows="all")
    manifest = read_manifest(path)
    assert {o["name"]: o for o in manifest["outputs"]}["masks"]["shape"] == [1, 100, "height", "width"]
    assert check_readiness(onnx.load(str(path), load_external_data=False)).ok
    image = held_out_photos(2)[1][None]
    fixed, rows = (dict(zip([o.name for o in s.get_outputs()], s.run(None, {"image": image})))
                   for s in (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                             for p in (path, demo_maskrcnn_onnx)))
    n = int(fixed["num_detections"][0])
    assert fixed["masks"].shape[1] == 100 and rows["masks"].shape[1] == n > 0
    assert np.array_equal(fixed["masks"][:, :n], rows["masks"]) and not fixed["masks"][:, n:].any()


def test_mask_rcnn_export_refuses_what_it_cannot_do(tmp_path):
    net = models.build("maskrcnn_demo")
    cases = [({"input": "tensor"}, "--input for a Mask R-CNN: expected 'image' or 'image-list'"),
             ({"input": "image", "raw": True}, "--raw: expected a Faster R-CNN"),
             ({"input": "image", "masks": "sparse"}, "--masks: expected 'pasted' or 'compact' or 'both'"),
             ({"input": "image", "mask_threshold": 1.5}, "--mask-threshold: expected a value in [0, 1)"),
             ({"input": "image", "mask_rows": "some"}, "--mask-rows: expected 'detections' or 'all', got 'some'"),
             ({"input": "image", "dynamic_batch": 2}, "pasted masks: expected at most 2147483647 elements")]
    for kwargs, message in cases:
        with pytest.raises(BadInput, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            export_detector(net, tmp_path / "m.onnx", **kwargs)
    assert not (tmp_path / "m.onnx").exists()


def test_cli_infer_parity_and_eval_carry_the_masks(demo_maskrcnn_onnx, tmp_path):
    """The CLI on a Mask R-CNN artifact: infer writes each mask as RLE (decoding to the Detector's masks) and
    draws it; parity and eval report the masks beside the boxes."""
    import json

    from click.testing import CliRunner

    from deploykit.cli import main
    from deploykit.runtime.masks import rle_decode

    image = held_out_images(2)[1]
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(image).save(photos / "p.png")
    runner = CliRunner()
    r = runner.invoke(main, ["infer", str(demo_maskrcnn_onnx), str(photos / "p.png"), "-o", str(tmp_path / "out"),
                             "--threads", "1"])
    assert r.exit_code == 0, r.output
    written = json.loads((tmp_path / "out" / "p.json").read_text())
    entries = written["detections"] if isinstance(written, dict) else written
    with Detector(demo_maskrcnn_onnx, threads=1) as det:
        d = det.predict(image)
    kept = [i for i in range(len(d)) if d.scores[i] >= 0.3]
    assert len(entries) == len(kept) > 0
    for entry, i in zip(entries, kept):
        assert np.array_equal(rle_decode(entry["segmentation"]), d.masks[i])
    drawn = np.asarray(Image.open(tmp_path / "out" / "p.png"))
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)

    r = runner.invoke(main, ["parity", str(demo_maskrcnn_onnx), "--images", str(photos), "--threads", "1"])
    assert r.exit_code == 0, r.output
    assert "masks: " in r.output and "min mask IoU" in r.output
    r = runner.invoke(main, ["eval", str(demo_maskrcnn_onnx), "--samples", "8", "--threads", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert "mask mAP@[.5:.95]" in r.output and "mask mAP@.5" in r.output
