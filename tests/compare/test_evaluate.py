"""``deploykit eval``: mAP of a detector artifact next to PyTorch, PSNR/SSIM of a generator; the metrics themselves."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image

from deploykit.cli import main
from deploykit.compare.evaluate import DetectorEval, GeneratorEval, evaluate_artifact
from deploykit.errors import BadInput
from deploykit.metrics import psnr, ssim

# -- metrics ------------------------------------------------------------------

def _ssim_naive(a: np.ndarray, b: np.ndarray, L: float = 1.0) -> float:
    """Straight from the definition: every 11x11 window, Gaussian weights, one channel."""
    x = np.arange(11) - 5.0
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_identity_noise_and_reference_implementation():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (3, 24, 30))
    x = (x + np.roll(x, 1, axis=2)) / 2  # some local structure
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    scores = [ssim(x, np.clip(x + rng.normal(0, s, x.shape), 0, 1)) for s in (0.01, 0.05, 0.2)]
    assert 1.0 > scores[0] > scores[1] > scores[2] > 0.0
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    want = np.mean([_ssim_naive(x[c], y[c]) for c in range(3)])
    assert ssim(x, y) == pytest.approx(want, rel=1e-9)
    assert ssim(x[0], y[0]) == pytest.approx(_ssim_naive(x[0], y[0]), rel=1e-9)  # 2-D input
    assert ssim(x, 1 - x) < 0.0  # anti-correlated


def test_psnr_values():
    a = np.zeros((3, 8, 8))
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a + 0.01) == pytest.approx(40.0)
    assert psnr(a, a) == 100.0  # capped: identical


def test_ssim_refuses_mismatched_or_tiny_images():
    with pytest.raises(BadInput, match="equal shapes"):
        ssim(np.zeros((3, 20, 20)), np.zeros((3, 20, 21)))
    with pytest.raises(BadInput, match=">= 11 pixels"):
        ssim(np.zeros((3, 8, 8)), np.zeros((3, 8, 8)))


# -- detector -----------------------------------------------------------------

@pytest.fixture(scope="module")
def det_manifest(demo_detector_onnx):
    return json.loads(demo_detector_onnx.with_suffix(".json").read_text())


def test_detector_fp32_artifact_matches_reference(demo_detector_onnx):
    r = evaluate_artifact(demo_detector_onnx, samples=8, threads=1, progress=False)
    assert r["kind"] == "detector" and r["images"] == 8 and r["precision"] == "fp32"
    assert r["model"] == "fasterrcnn_demo"
    assert r["reference"]["map"] > 0.6 and r["reference"]["map50"] > 0.9  # the demo model detects shapes
    assert abs(r["drop"]["map"]) < 0.5 and abs(r["drop"]["map50"]) < 0.5  # FP32: same detections
    assert r["drop"]["map"] == pytest.approx(100 * (r["reference"]["map"] - r["artifact"]["map"]))


def test_detector_eval_caches_the_reference_and_takes_candidates_without_manifest(
        demo_detector_onnx, det_manifest, tmp_path, monkeypatch):
    import deploykit.compare.reference as pd

    calls = []
    real = pd.reference_prediction
    monkeypatch.setattr(pd, "reference_prediction", lambda m, im: (calls.append(1), real(m, im))[1])
    ev = DetectorEval(det_manifest, samples=3, artifact=demo_detector_onnx, threads=1, progress=False)
    candidate = tmp_path / "candidate.onnx"  # no manifest beside it: borrows the reference's
    shutil.copy(demo_detector_onnx, candidate)
    a = ev.artifact_metrics(candidate)
    b = ev.artifact_metrics(demo_detector_onnx)
    ref1, ref2 = ev.reference_metrics(), ev.reference_metrics()
    assert len(calls) == 3  # PyTorch ran once over the 3 images
    assert a == b and ref1 == ref2
    assert ev.compare(candidate)["precision"] == "fp32"


def test_detector_on_a_coco_directory_equals_in_memory_held_out(demo_detector_onnx, det_manifest, tmp_path):
    from deploykit.data.shapes import write_dataset

    write_dataset(tmp_path, 3, seed=1000)
    on_disk = DetectorEval(det_manifest, tmp_path, threads=1, progress=False)
    in_memory = DetectorEval(det_manifest, samples=3, threads=1, progress=False)
    assert len(on_disk.images) == 3
    assert on_disk.artifact_metrics(demo_detector_onnx) == in_memory.artifact_metrics(demo_detector_onnx)


def _one_line_error(result, *words):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "Traceback" not in result.output


@pytest.mark.parametrize("make, words", [
    (lambda d: d / "nope", ["nope", "no such directory"]),
    (lambda d: d, ["no annotations.json"]),
    (lambda d: ((d / "annotations.json").write_text("{not json"), d)[1], ["annotations.json", "parse error"]),
    (lambda d: ((d / "annotations.json").write_text('{"images": []}'), d)[1], ["missing ['annotations', "]),
    (lambda d: ((d / "annotations.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "gone.png"}], "annotations": [], "categories": []})), d)[1],
     ["gone.png", "no such file"]),
])
def test_detector_data_errors(demo_detector_onnx, tmp_path, make, words):
    data = make(tmp_path)
    r = CliRunner().invoke(main, ["eval", str(demo_detector_onnx), "--data", str(data), "-q"])
    _one_line_error(r, *words)


def test_artifact_errors(demo_detector_onnx, tmp_path):
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "missing.onnx")])
    _one_line_error(r, "missing.onnx", "no such file")
    bad = tmp_path / "det.onnx"
    bad.write_bytes(demo_detector_onnx.read_bytes()[:1000])  # truncated: manifest sha256 no longer matches
    shutil.copy(demo_detector_onnx.with_suffix(".json"), bad.with_suffix(".json"))
    r = CliRunner().invoke(main, ["eval", str(bad)])
    _one_line_error(r, "sha256")
    r = CliRunner().invoke(main, ["eval", str(demo_detector_onnx), "--samples", "0"])
    _one_line_error(r, "--samples")


def test_cli_detector_table_and_json(demo_detector_onnx, tmp_path):
    out = tmp_path / "r" / "eval.json"
    r = CliRunner().invoke(main, ["eval", str(demo_detector_onnx), "--samples", "2", "--threads", "1",
                                  "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "mAP@[.5:.95]" in r.stdout and "drop (points)" in r.stdout
    assert r.stderr == ""  # -q: no progress bar
    report = json.loads(out.read_text())
    assert report["images"] == 2 and set(report["drop"]) == {"map", "map50"}


# -- generator ----------------------------------------------------------------

def _scaled_output_copy(src, dst, factor: float):
    """The same generator with its output multiplied by ``factor`` (a worse candidate), no manifest."""
    m = onnx.load(src)
    out = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [f"{o}_raw" if o == out else o for o in node.output]
    m.graph.initializer.append(helper.make_tensor("k", TensorProto.FLOAT, [], [factor]))
    m.graph.node.append(helper.make_node("Mul", [f"{out}_raw", "k"], [out]))
    onnx.save(m, dst)


def test_generator_fp32_artifact_and_a_degraded_candidate(demo_generator_onnx, tmp_path):
    manifest = json.loads(demo_generator_onnx.with_suffix(".json").read_text())
    ev = GeneratorEval(manifest, samples=3, artifact=demo_generator_onnx, threads=1, progress=False)
    same = ev.psnr_ssim(demo_generator_onnx)
    assert same["psnr_min"] > 60 and same["ssim_mean"] > 0.9999
    worse = tmp_path / "worse.onnx"
    _scaled_output_copy(demo_generator_onnx, worse, 0.9)
    w = ev.psnr_ssim(worse)
    assert 15 < w["psnr_mean"] < 45 and w["ssim_mean"] < same["ssim_mean"]
    # the PSNR follows from the reference: output scaled by 0.9 → error 0.05·|y| on the [0, 1] scale
    ref = ev.reference_outputs()
    want = [10 * np.log10(1 / np.mean((0.05 * r.astype(np.float64)) ** 2)) for r in ref]
    assert w["psnr_mean"] == pytest.approx(np.mean(want), abs=0.05)


def test_cli_generator_on_a_label_map_folder(demo_generator_onnx, tmp_path):
    from deploykit.data.spade_scenes import make_sample

    d = tmp_path / "maps"
    d.mkdir()
    for i in range(2):
        s = make_sample(i, size=128, split="heldout")
        Image.fromarray(s.label).save(d / f"{i}.png")
    out = tmp_path / "g.json"
    r = CliRunner().invoke(main, ["eval", str(demo_generator_onnx), "--data", str(d), "--json", str(out),
                                  "--threads", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert "PSNR" in r.stdout and "SSIM" in r.stdout
    rep = json.loads(out.read_text())
    assert rep["kind"] == "generator" and rep["images"] == 2 and rep["data"] == str(d)
    assert rep["artifact"]["ssim_mean"] > 0.9999


def test_cli_generator_rejects_photos(demo_generator_onnx, tmp_path):
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "photo.png")
    r = CliRunner().invoke(main, ["eval", str(demo_generator_onnx), "--data", str(tmp_path), "-q"])
    _one_line_error(r, "photo.png", "single-channel")


def test_eval_help_lists_options():
    r = CliRunner().invoke(main, ["eval", "--help"])
    assert r.exit_code == 0
    for opt in ("--data", "--samples", "--json", "--threads", "--quiet"):
        assert opt in r.output
