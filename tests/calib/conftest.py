"""Demo models exported once for the precision tests, and small calibration feeds."""

from __future__ import annotations

import json

import numpy as np
import pytest

N_CALIB = 8


@pytest.fixture(scope="session")
def demo_detector_onnx(tmp_path_factory):
    pytest.importorskip("torch")
    from deploykit import models
    from deploykit.export.detector import export_detector

    model = models.build("fasterrcnn_demo", min_size=320, max_size=320)
    path = tmp_path_factory.mktemp("calib_det") / "demo.onnx"
    export_detector(model, path, input_size=(320, 320))
    return path


@pytest.fixture(scope="session")
def demo_spade_onnx(tmp_path_factory):
    pytest.importorskip("torch")
    from deploykit.export.spade import export_spade

    path = tmp_path_factory.mktemp("calib_spade") / "spade_demo.onnx"
    export_spade("spade_demo", path)
    return path


@pytest.fixture(scope="session")
def detector_feeds(demo_detector_onnx):
    from deploykit.models.synthetic_shapes import sample_for_index
    from deploykit.runtime.preprocess import Preprocessing, preprocess_batch

    manifest = json.loads(demo_detector_onnx.with_suffix(".json").read_text())
    pre = Preprocessing.from_manifest(manifest["preprocessing"])
    images, sizes, _ = preprocess_batch([sample_for_index(2000, i)[0] for i in range(N_CALIB)], pre)
    return {"images": images, "image_sizes": sizes}


@pytest.fixture(scope="session")
def spade_feeds(demo_spade_onnx):
    from deploykit.models.spade_demo_data import make_sample

    labels = np.stack([np.asarray(make_sample(i, seed=2000).label, dtype=np.uint8) for i in range(N_CALIB)])
    return {"label_map": labels, "instance_map": labels.astype(np.int32)}
