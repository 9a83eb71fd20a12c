"""Issue 4's accuracy anchors on the demo models, against the unmodified PyTorch models.

FP16: mAP drop <= 0.2 points, SPADE PSNR >= 45 dB vs FP32 PyTorch.
INT8: mAP drop <= 1.0 point, SPADE PSNR >= 30 dB.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("modelopt.onnx.quantization")

from deploykit.calib.pipeline import quantize_artifact  # noqa: E402
from deploykit.evaluate import DetectorEval, GeneratorEval  # noqa: E402

CALIB_SAMPLES = 64  # the CLI default is 128; 64 keeps the test under a minute per graph


@pytest.mark.slow
def test_demo_detector_fp16_and_int8_within_budget(demo_detector_onnx, tmp_path):
    manifest = json.loads(demo_detector_onnx.with_suffix(".json").read_text())
    ev = DetectorEval(manifest, samples=100, threads=2, progress=False)
    ref = ev.reference_metrics()
    assert ref["map"] > 0.7, ref  # the bundled model is trained: the comparison means something
    fp32 = ev.artifact_metrics(demo_detector_onnx)
    assert abs(100 * (ref["map"] - fp32["map"])) < 0.05
    for precision, budget in (("fp16", 0.2), ("int8", 1.0)):
        out = tmp_path / f"det_{precision}.onnx"
        quantize_artifact(demo_detector_onnx, out, precision, samples=CALIB_SAMPLES, progress=False)
        got = ev.artifact_metrics(out)
        drop = 100 * (ref["map"] - got["map"])
        drop50 = 100 * (ref["map50"] - got["map50"])
        assert drop <= budget, (precision, drop, got, ref)
        assert drop50 <= budget, (precision, drop50)


@pytest.mark.slow
def test_demo_generator_fp16_and_int8_within_budget(demo_generator_onnx, tmp_path):
    manifest = json.loads(demo_generator_onnx.with_suffix(".json").read_text())
    ev = GeneratorEval(manifest, samples=16, threads=2, progress=False)
    for precision, floor in (("fp16", 45.0), ("int8", 30.0)):
        out = tmp_path / f"gen_{precision}.onnx"
        quantize_artifact(demo_generator_onnx, out, precision, samples=CALIB_SAMPLES, progress=False)
        r = ev.psnr_ssim(out)
        assert r["psnr_min"] >= floor, (precision, r["psnr_min"], r["psnr_mean"])
        assert r["ssim_mean"] > 0.95, (precision, r["ssim_mean"])
