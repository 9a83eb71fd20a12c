"""Synthetic shapes dataset: determinism, annotation validity, COCO format."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from deploykit.data import shapes as ss


def test_class_names():
    assert ss.CLASS_NAMES[0] == "__background__"
    assert len(ss.CLASS_NAMES) - 1 >= 6
    assert len(set(ss.CLASS_NAMES)) == len(ss.CLASS_NAMES)


def test_deterministic_for_seed():
    a_img, a_ann = ss.make_sample(np.random.default_rng(123))
    b_img, b_ann = ss.make_sample(np.random.default_rng(123))
    assert a_img.dtype == np.uint8 and a_img.ndim == 3 and a_img.shape[2] == 3
    assert a_img.tobytes() == b_img.tobytes()
    assert a_ann == b_ann
    c_img, _ = ss.make_sample(np.random.default_rng(124))
    assert c_img.shape != a_img.shape or c_img.tobytes() != a_img.tobytes()
    # Indexed samples are independent of generation order.
    x = ss.sample_for_index(7, 3)
    [ss.sample_for_index(7, i) for i in range(3)]
    y = ss.sample_for_index(7, 3)
    assert x[0].tobytes() == y[0].tobytes() and x[1] == y[1]


def test_annotations_valid_and_varied():
    shapes, aspects, classes, sizes = set(), [], set(), []
    for i in range(40):
        img, anns = ss.sample_for_index(0, i)
        h, w = img.shape[:2]
        assert ss.MIN_SIDE <= h <= ss.MAX_SIDE and ss.MIN_SIDE <= w <= ss.MAX_SIDE
        assert ss.MIN_ASPECT <= w / h <= ss.MAX_ASPECT
        shapes.add((h, w))
        aspects.append(w / h)
        for a in anns:
            x, y, bw, bh = a["bbox"]
            assert x >= 0 and y >= 0 and bw > 0 and bh > 0
            assert x + bw <= w and y + bh <= h
            assert 1 <= a["category_id"] < len(ss.CLASS_NAMES)
            assert 0 < a["area"] <= bw * bh
            assert a["iscrowd"] == 0
            classes.add(a["category_id"])
            sizes.append(max(bw, bh))
    assert len(shapes) >= 30
    assert min(aspects) < 0.8 and max(aspects) > 1.25
    assert classes == set(range(1, len(ss.CLASS_NAMES)))
    assert min(sizes) < 24 and max(sizes) > 100


def test_write_and_load_coco(tmp_path):
    pytest.importorskip("pycocotools")
    from PIL import Image
    from pycocotools.coco import COCO

    path = ss.write_dataset(tmp_path / "ds", n_images=5, seed=3, split_name="val")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(path)
    assert len(coco.getImgIds()) == 5
    assert sorted(coco.getCatIds()) == list(range(1, len(ss.CLASS_NAMES)))
    data = json.loads(open(path).read())
    assert {"images", "annotations", "categories"} <= set(data)

    paths, anns = ss.load_coco_dataset(tmp_path / "ds")
    assert len(paths) == 5 and len(anns) == 5
    for i, (p, a) in enumerate(zip(paths, anns)):
        img, ref = ss.sample_for_index(3, i)
        with Image.open(p) as im:
            assert np.asarray(im).tobytes() == img.tobytes()
        assert [x["bbox"] for x in a] == [x["bbox"] for x in ref]
        assert [x["category_id"] for x in a] == [x["category_id"] for x in ref]
    # Written twice: byte-identical images.
    path2 = ss.write_dataset(tmp_path / "ds2", n_images=2, seed=3, split_name="val")
    assert (tmp_path / "ds" / "val_000001.png").read_bytes() == (tmp_path / "ds2" / "val_000001.png").read_bytes()
    assert json.loads(open(path2).read())["annotations"] == [a for a in data["annotations"] if a["image_id"] <= 2]
