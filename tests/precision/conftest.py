"""Small calibration feeds for the precision tests (the demo exports come from tests/conftest.py)."""

from __future__ import annotations

import json

import pytest

N_CALIB = 8


def _feeds(path):
    from deploykit.data.calibration import calibration_feeds

    manifest = json.loads(path.with_suffix(".json").read_text())
    return calibration_feeds(manifest, None, samples=N_CALIB, seed=0, progress=False)[0]


@pytest.fixture(scope="session")
def detector_feeds(demo_detector_onnx):
    return _feeds(demo_detector_onnx)


@pytest.fixture(scope="session")
def spade_feeds(demo_generator_onnx):
    return _feeds(demo_generator_onnx)
