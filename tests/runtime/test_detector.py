"""Detector pipeline, drawing, image loading and infer, on a fake detector graph built here.

The fake graph has the exported detector's I/O contract. Per image, from
``image_sizes`` (h, w) and the mean m of ``images``, it returns 2 detections
then one padding row:

    box 0 = [0, 0, w, h]              score 0.6 + 0.3 * sigmoid(m)  label 1
    box 1 = [w/4, h/4, w/2, 3h/4]     score 0.5                      label 2
    box 2 = [0, 0, 0, 0]              score 0                        label -1
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torchvision.models.detection.transform import resize_boxes

from deploykit.errors import BadInput
from deploykit.manifest import write_manifest
from deploykit.runtime import Detections, Detector, load_image
from deploykit.runtime.draw import PALETTE, draw_detections
from deploykit.runtime.infer import infer_detector
from deploykit.runtime.preprocess import Preprocessing, preprocess_image

CANVAS = 64
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLASSES = ["__background__", "circle", "square"]
K = 3


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def make_fake_detector(path: Path, batch: int | str = "batch", *, batch_max: int = 4, kind: str = "detector",
                       input_size=(CANVAS, CANVAS), manifest: bool = True) -> Path:
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32
    n = helper.make_node
    unsq = lambda x, out: n("Unsqueeze", [x, "ax1"], [out])  # noqa: E731
    nodes = [
        n("Gather", ["image_sizes", "i0"], ["h"], axis=1), n("Gather", ["image_sizes", "i1"], ["w"], axis=1),
        n("Mul", ["h", "f0"], ["zero"]),
        n("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=0),
        n("Sigmoid", ["m"], ["sig"]), n("Mul", ["sig", "f03"], ["sig3"]), n("Add", ["sig3", "f06"], ["s0"]),
        n("Add", ["zero", "f05"], ["s1"]),
        n("Mul", ["w", "f025"], ["w4"]), n("Mul", ["h", "f025"], ["h4"]),
        n("Mul", ["w", "f05"], ["w2"]), n("Mul", ["h", "f075"], ["h34"]),
    ]
    for name in ["zero", "w", "h", "w4", "h4", "w2", "h34", "s0", "s1"]:
        nodes.append(unsq(name, f"{name}_u"))
    nodes += [
        n("Concat", ["zero_u", "zero_u", "w_u", "h_u"], ["box0"], axis=1),
        n("Concat", ["w4_u", "h4_u", "w2_u", "h34_u"], ["box1"], axis=1),
        n("Concat", ["zero_u", "zero_u", "zero_u", "zero_u"], ["box2"], axis=1),
        unsq("box0", "box0_u"), unsq("box1", "box1_u"), unsq("box2", "box2_u"),
        n("Concat", ["box0_u", "box1_u", "box2_u"], ["boxes"], axis=1),
        n("Concat", ["s0_u", "s1_u", "zero_u"], ["scores"], axis=1),
        n("Add", ["zero_u", "label_values"], ["labels_f"]), n("Cast", ["labels_f"], ["labels"], to=i32),
        n("Add", ["zero", "f2"], ["num_f"]), n("Cast", ["num_f"], ["num_detections"], to=i32),
    ]
    inits = [_const("i0", np.int64(0)), _const("i1", np.int64(1)), _const("ax1", np.array([1], np.int64))]
    inits += [_const(name, np.float32(v)) for name, v in
              [("f0", 0), ("f025", 0.25), ("f03", 0.3), ("f05", 0.5), ("f06", 0.6), ("f075", 0.75), ("f2", 2)]]
    inits.append(_const("label_values", np.array([1, 2, -1], np.float32)))
    height, width = input_size
    graph = helper.make_graph(
        nodes, "fake_detector",
        [helper.make_tensor_value_info("images", f32, [batch, 3, height, width]),
         helper.make_tensor_value_info("image_sizes", f32, [batch, 2])],
        [helper.make_tensor_value_info("num_detections", i32, [batch]),
         helper.make_tensor_value_info("boxes", f32, [batch, K, 4]),
         helper.make_tensor_value_info("scores", f32, [batch, K]),
         helper.make_tensor_value_info("labels", i32, [batch, K])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    if manifest:
        dynamic = isinstance(batch, str)
        low, high = (1, batch_max) if dynamic else (batch, batch)
        write_manifest(path, {
            "kind": kind, "model": {"name": "fake"},
            "inputs": [{"name": "images", "dtype": "float32", "shape": [batch, 3, height, width]},
                       {"name": "image_sizes", "dtype": "float32", "shape": [batch, 2]}],
            "outputs": [{"name": "num_detections", "dtype": "int32", "shape": [batch]},
                        {"name": "boxes", "dtype": "float32", "shape": [batch, K, 4]},
                        {"name": "scores", "dtype": "float32", "shape": [batch, K]},
                        {"name": "labels", "dtype": "int32", "shape": [batch, K]}],
            "batch": {"dynamic": dynamic, "min": low, "opt": low, "max": high},
            "class_names": CLASSES,
            "preprocessing": {"input_size": [CANVAS, CANVAS], "resize": "fit", "interpolation": "bilinear",
                              "mean": MEAN, "std": STD, "pixel_scale": 1 / 255, "input_dtype": "float32",
                              "layout": "NCHW", "color": "RGB", "pad_value": 0.0},
        })
    return path


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def expected(img: np.ndarray) -> Detections:
    """What the fake detector + torchvision's postprocess give for ``img``."""
    pre = Preprocessing((CANVAS, CANVAS), tuple(MEAN), tuple(STD))
    tensor, (h, w) = preprocess_image(img, pre)
    net_boxes = torch.tensor([[0, 0, w, h], [w / 4, h / 4, w / 2, 3 * h / 4]], dtype=torch.float32)
    boxes = resize_boxes(net_boxes, [h, w], list(img.shape[:2])).numpy()
    s0 = 0.6 + 0.3 / (1 + np.exp(-tensor.astype(np.float64).mean()))
    return Detections(boxes, np.float32([s0, 0.5]), np.int64([1, 2]), CLASSES)


def assert_same(got: Detections, want: Detections) -> None:
    assert got.boxes.dtype == np.float32 and got.scores.dtype == np.float32 and got.labels.dtype == np.int64
    assert got.boxes.shape == (len(want), 4)
    np.testing.assert_array_equal(got.boxes, want.boxes)  # same float32 arithmetic as torchvision
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert got.class_names == CLASSES


class CountingRun:
    """Wraps Session.run to record the batches the detector sends."""

    def __init__(self, session):
        self.session, self.feeds, self._run = session, [], session.run
        session.run = self

    def __call__(self, feed):
        self.feeds.append({k: v.copy() for k, v in feed.items()})
        return self._run(feed)


# -- predict -----------------------------------------------------------------

@pytest.mark.parametrize("shape", [(100, 50), (50, 100), (64, 64), (30, 45), (480, 640)])
def test_single_image_boxes_in_original_pixels(tmp_path: Path, shape):
    detector = Detector(make_fake_detector(tmp_path / "det.onnx"), threads=1)
    img = image(*shape)
    dets = detector.predict(img)
    assert isinstance(dets, Detections) and len(dets) == 2
    assert_same(dets, expected(img))
    h, w = shape  # box 0 is the whole resized image: back in original pixels it is the whole image
    np.testing.assert_allclose(dets.boxes[0], [0, 0, w, h], rtol=1e-6)


def test_fixed_batch_2_with_3_images(tmp_path: Path):
    detector = Detector(make_fake_detector(tmp_path / "det.onnx", batch=2))
    assert detector.batch_range == (2, 2)
    calls = CountingRun(detector.session)
    images = [image(100, 50, 1), image(40, 90, 2), image(70, 70, 3)]
    results = detector.predict(images)
    assert len(results) == 3
    for dets, img in zip(results, images):
        assert_same(dets, expected(img))
    assert [f["images"].shape[0] for f in calls.feeds] == [2, 2]
    last = calls.feeds[1]
    assert not last["images"][1].any()  # the filler is a blank canvas ...
    np.testing.assert_array_equal(last["image_sizes"][1], [CANVAS, CANVAS])  # ... of the full canvas size
    np.testing.assert_array_equal(last["image_sizes"][0], [64, 64])
    # a single image through a fixed batch of 2 is filled the same way
    assert_same(detector.predict(images[2]), results[2])


def test_dynamic_batch_chunks_at_manifest_max(tmp_path: Path):
    detector = Detector(make_fake_detector(tmp_path / "det.onnx", batch_max=2))
    assert detector.batch_range == (1, 2) and detector.batch_size == 2
    calls = CountingRun(detector.session)
    images = [image(30 + 10 * i, 80 - 10 * i, i) for i in range(5)]
    results = detector.predict(images)
    assert [f["images"].shape[0] for f in calls.feeds] == [2, 2, 1]
    for dets, img in zip(results, images):
        assert_same(dets, expected(img))
    assert detector.predict([]) == []


def test_gray_and_rgba_images(tmp_path: Path):
    detector = Detector(make_fake_detector(tmp_path / "det.onnx"))
    gray = image(50, 60)[:, :, 0]
    assert_same(detector.predict(gray), expected(np.repeat(gray[:, :, None], 3, axis=2)))
    rgba = image(50, 60, 4)[:, :, [0, 1, 2, 0]]
    assert_same(detector.predict(rgba), expected(rgba[:, :, :3].copy()))


def test_to_json_and_filters():
    dets = Detections(np.float32([[1, 2, 3, 4], [5, 6, 7, 8]]), np.float32([0.9, 0.2]), np.int64([1, 7]), CLASSES)
    assert dets.to_json() == [
        {"box": [1.0, 2.0, 3.0, 4.0], "score": pytest.approx(0.9), "label": 1, "label_name": "circle"},
        {"box": [5.0, 6.0, 7.0, 8.0], "score": pytest.approx(0.2), "label": 7, "label_name": "class_7"},
    ]
    json.dumps(dets.to_json())
    assert len(dets.above(0.5)) == 1 and dets.above(0.5).label_names == ["circle"]


@pytest.mark.parametrize("bad,parts", [
    (np.zeros((10, 10, 3), np.float32), ["image", "uint8", "float32"]),
    (np.zeros((2, 10, 10, 3), np.uint8), ["image", "[2, 10, 10, 3]"]),
    ("picture.png", ["images", "str"]),
])
def test_predict_bad_input(tmp_path: Path, bad, parts):
    detector = Detector(make_fake_detector(tmp_path / "det.onnx"))
    with pytest.raises(BadInput) as info:
        detector.predict(bad)
    assert "\n" not in str(info.value) and all(p in str(info.value) for p in parts), str(info.value)


def test_predict_bad_image_in_list_is_named(tmp_path: Path):
    detector = Detector(make_fake_detector(tmp_path / "det.onnx", batch_max=2))
    with pytest.raises(BadInput, match=r"^image 2: expected dtype uint8"):
        detector.predict([image(20, 20), image(20, 20), image(20, 20).astype(np.int16)])


@pytest.mark.parametrize("setup,parts", [
    (dict(manifest=False), ["det.json", "no manifest"]),
    (dict(kind="generator"), ["manifest kind", "'detector'", "'generator'"]),
    (dict(input_size=(32, 32)), ["input 'images'", "[batch, 3, 64, 64]", "[batch, 3, 32, 32]"]),
])
def test_detector_refuses_mismatched_artifacts(tmp_path: Path, setup, parts):
    path = make_fake_detector(tmp_path / "det.onnx", **setup)
    with pytest.raises(BadInput) as info:
        Detector(path)
    assert "\n" not in str(info.value) and all(p in str(info.value) for p in parts), str(info.value)


def test_detector_shared_by_8_threads(tmp_path: Path, run_in_threads):
    detector = Detector(make_fake_detector(tmp_path / "det.onnx", batch_max=2), threads=1)
    images = [[image(20 + (7 * t + i) % 50, 30 + (3 * t + 5 * i) % 60, seed=100 * t + i) for i in range(25)]
              for t in range(8)]
    want = [[detector.predict(img) for img in row] for row in images]
    got: list = [None] * 8

    def worker(t: int) -> None:
        got[t] = [detector.predict(img) for img in images[t][:20]] + detector.predict(images[t][20:])

    run_in_threads(worker, 8)
    for t in range(8):
        for g, w in zip(got[t], want[t], strict=True):
            np.testing.assert_array_equal(g.boxes, w.boxes)
            np.testing.assert_array_equal(g.scores, w.scores)


# -- drawing and images ------------------------------------------------------

def test_draw_detections():
    img = np.full((80, 120, 3), 128, np.uint8)
    dets = Detections(np.float32([[10, 30, 60, 70], [70, 5, 110, 40]]), np.float32([0.93, 0.4]),
                      np.int64([1, 2]), CLASSES)
    drawn = np.asarray(draw_detections(img, dets))
    assert drawn.shape == img.shape and drawn.dtype == np.uint8
    assert tuple(drawn[50, 10]) == PALETTE[1] and tuple(drawn[20, 110]) == PALETTE[2]  # box edges
    assert (drawn[22:30, 10:40] != 128).any()  # caption above box 0
    only_first = np.asarray(draw_detections(img, dets, min_score=0.5))
    assert tuple(only_first[20, 110]) == (128, 128, 128)
    np.testing.assert_array_equal(np.asarray(draw_detections(img, dets, min_score=1.0)), img)
    np.testing.assert_array_equal(img, 128)  # input untouched


def test_load_image(tmp_path: Path):
    rgb = image(30, 40)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.png"), rgb)
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(load_image(tmp_path / "gray.png"), np.repeat(rgb[:, :, :1], 3, axis=2))
    rgba = np.concatenate([rgb, np.full((30, 40, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png"), rgb)
    loaded = load_image(str(tmp_path / "rgb.png"))
    assert loaded.dtype == np.uint8 and loaded.shape == (30, 40, 3)


def test_load_image_errors(tmp_path: Path):
    Image.fromarray(image(64, 64)).save(tmp_path / "full.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "full.png").read_bytes()[:300])
    Image.fromarray(image(64, 64)).save(tmp_path / "full.jpg", quality=90)
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:400])
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    cases = {"missing.png": "no such file", "truncated.png": "readable", "truncated.jpg": "readable",
             "notes.png": "unrecognised", "empty.jpg": "unrecognised", ".": "a directory"}
    for name, part in cases.items():
        path = tmp_path / name
        with pytest.raises(BadInput) as info:
            load_image(path)
        message = str(info.value)
        assert message.startswith(f"image {path}: expected") and part in message and "\n" not in message, message
        assert info.value.__context__ is None or info.value.__suppress_context__


# -- infer -------------------------------------------------------------------

def test_infer_writes_json_and_png(tmp_path: Path):
    model = make_fake_detector(tmp_path / "det.onnx", batch=2)
    paths = []
    for i, shape in enumerate([(100, 50), (40, 90), (70, 70)]):
        Image.fromarray(image(*shape, seed=i)).save(tmp_path / f"img{i}.png")
        paths.append(tmp_path / f"img{i}.png")
    out = tmp_path / "out"
    written = infer_detector(model, paths, out, min_score=0.55, progress=False)
    assert written == [out / f"img{i}{s}" for i in range(3) for s in (".json", ".png")]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no temp files left
    for i, path in enumerate(paths):
        record = json.loads((out / f"img{i}.json").read_text())
        want = expected(load_image(path)).above(0.55)
        assert record["image"] == str(path) and (record["height"], record["width"]) == load_image(path).shape[:2]
        assert [d["label_name"] for d in record["detections"]] == ["circle"]  # box 1 (score 0.5) filtered out
        np.testing.assert_allclose(record["detections"][0]["box"], want.boxes[0], rtol=1e-6)
        assert load_image(out / f"img{i}.png").shape == load_image(path).shape


def test_infer_stops_at_bad_image_before_writing_it(tmp_path: Path):
    model = make_fake_detector(tmp_path / "det.onnx", batch_max=1)
    Image.fromarray(image(30, 30)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(image(30, 30)).save(tmp_path / "c.png")
    out = tmp_path / "out"
    with pytest.raises(BadInput, match=r"^image .*b\.png: expected"):
        infer_detector(model, [tmp_path / n for n in ("a.png", "b.png", "c.png")], out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png"]


def test_infer_refuses_clashing_outputs(tmp_path: Path):
    model = make_fake_detector(tmp_path / "det.onnx")
    (tmp_path / "x").mkdir()
    Image.fromarray(image(30, 30)).save(tmp_path / "a.png")
    Image.fromarray(image(30, 30)).save(tmp_path / "x" / "a.jpg")
    with pytest.raises(BadInput, match="same stem"):
        infer_detector(model, [tmp_path / "a.png", tmp_path / "x" / "a.jpg"], tmp_path / "out", progress=False)
    with pytest.raises(BadInput, match="not one of the input images"):
        infer_detector(model, [tmp_path / "a.png"], tmp_path, progress=False)
    with pytest.raises(BadInput, match="at least one image"):
        infer_detector(model, [], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
