"""deploykit report: one self-contained HTML page from a run directory."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deploykit.cli import main
from deploykit.compare.report import write_report

CHROMIUM = Path("/usr/bin/chromium")


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.imgs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _png_bytes(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), color, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture()
def run_dir(tmp_path, precision_summary):
    d = tmp_path / "run"
    d.mkdir()
    summary = {
        "detector": {"model": "fasterrcnn_demo", "parity": {"images": 2, "matched": 7, "ok": True,
                                                            "unmatched_reference": 0, "unmatched_artifact": 0,
                                                            "min_iou": 0.9999876, "max_score_diff": 3.5e-6},
                     "per_image": [{"index": 0, "size": [20, 30], "matched": 3, "ok": True, "min_iou": 0.9999876,
                                    "max_score_diff": 3.5e-6},
                                   {"index": 1, "size": [20, 30], "matched": 4, "ok": True, "min_iou": 1.0,
                                    "max_score_diff": 0.0}],
                     "latency_ms": {"torch_eager": 43.25, "onnxruntime": 28.5},
                     "latency_samples_ms": {"torch_eager": [43.25, 44.0, 45.1], "onnxruntime": [28.5, 29.0, 30.2]},
                     "speedup": 1.517},
        "generator": {"model": "spade_demo", "max_abs_diff": 5.66e-7, "min_psnr_db": 95.0, "ok": True, "images": 4},
        "precision": precision_summary,
    }
    (d / "summary.json").write_text(json.dumps(summary))
    stats = {"iterations": 3, "min_ms": 11.0, "mean_ms": 12.0, "median_ms": 12.0, "p90_ms": 12.8,
             "p95_ms": 12.9, "p99_ms": 13.0, "throughput_ips": 83.3}
    bench = {"artifact": "m.onnx", "kind": "detector", "model": "fasterrcnn_demo", "backend": "onnxruntime",
             "providers": ["CPUExecutionProvider"], "batch_range": [1, 4], "results": [
                 {"batch": 1, "model": {**stats, "samples_ms": [11.0, 12.0, 13.0]},
                  "torch": {**stats, "median_ms": 24.0}, "speedup": 2.345, "speedup_vs": "model"},
                 {"batch": 2, "model": stats}]}
    (d / "bench.json").write_text(json.dumps(bench))
    (d / "manifest_like.json").write_text(json.dumps({"model": {"name": "x"}}))  # ignored
    (d / "detections_0.png").write_bytes(_png_bytes())
    (d / "detections_0_torch.png").write_bytes(_png_bytes((30, 30, 200)))
    (d / "detections_0_fp16.png").write_bytes(_png_bytes((30, 200, 30)))
    (d / "detections_0_int8.png").write_bytes(_png_bytes((200, 200, 30)))
    (d / "spade_demo_precision_panels.png").write_bytes(_png_bytes((90, 90, 90)))
    return d


def _parse(path: Path) -> tuple[str, _Collect]:
    text = path.read_text(encoding="utf-8")
    p = _Collect()
    p.feed(text)
    p.close()
    return text, p


def test_report_is_self_contained(run_dir, tmp_path):
    out = write_report(run_dir, tmp_path / "r.html")
    assert out == tmp_path / "r.html"
    text, p = _parse(out)
    assert "svg" in p.tags and "table" in p.tags
    assert "http://" not in text and "https://" not in text and "<script" not in text.lower()
    assert p.imgs and all(src.startswith("data:image/png;base64,") for src in p.imgs)
    # the PNGs are embedded byte for byte, each once: per image PyTorch | fp32 | fp16 | int8, then the SPADE panel
    got = [base64.b64decode(src.split(",", 1)[1]) for src in p.imgs]
    assert got == [(run_dir / n).read_bytes() for n in ("detections_0_torch.png", "detections_0.png",
                                                        "detections_0_fp16.png", "detections_0_int8.png",
                                                        "spade_demo_precision_panels.png")]
    assert "PyTorch reference detections, image 0" in text and "ONNX Runtime detections, image 0" in text
    assert "ONNX Runtime int8 detections, image 0" in text and "All pictures are shown above" in text
    body = "".join(p.text)
    for value in ("fasterrcnn_demo", "spade_demo", "PASS", "1.52x", "2.35x", "0.999988", "3.50e-06",
                  "43.2 ms", "batch 2", "n=3"):
        assert value in body, value
    assert not list(tmp_path.glob(".r.html.*"))  # no temporary file left behind


def _section(text: str, title: str) -> str:
    start = text.index(f"<h2>{title}</h2>")
    end = text.find("<h2>", start + 1)
    return text[start:end if end >= 0 else None]


def _rows(section: str) -> list[list[str]]:
    """Every table row of ``section`` as the text of its cells (tags stripped)."""
    import re

    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", section)]


def test_precision_section_numbers_match_summary(run_dir, tmp_path):
    out = write_report(run_dir, tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    prec = json.loads((run_dir / "summary.json").read_text())["precision"]
    sec = _section(text, "Accuracy per precision")
    assert text.index("<h2>Accuracy per precision</h2>") < text.index("<h2>Latency distribution")
    rows = {r[0]: r for r in _rows(sec)}
    det, gen = prec["detector"], prec["generator"]
    ref = det["reference"]
    assert rows["PyTorch (reference)"][1:4] == [f"{100 * ref['map']:.2f}", f"{100 * ref['map50']:.2f}", "–"]
    for p, r in det["rows"].items():
        row = [x for x in _rows(sec) if x[0] == p][0]  # first table: the detector's
        assert row[1:7] == [f"{100 * r['map']:.2f}", f"{100 * r['map50']:.2f}", f"{r['drop']['map']:.2f}",
                            f"{r['drop']['map50']:.2f}", f"{r['latency_ms']:.1f}", f"{r['speedup']:.2f}x"], p
    assert [x for x in _rows(sec) if x[0] == "fp32"][0][7] == "parity PASS"
    assert [x for x in _rows(sec) if x[0] == "int8"][0][7] == "≤ 1: FAIL"  # the made-up missed budget
    for p, r in gen["rows"].items():
        row = [x for x in _rows(sec) if x[0] == p][1]  # second table: SPADE
        assert row[1:6] == [f"{r['psnr_mean']:.2f}", f"{r['psnr_min']:.2f}", f"{r['ssim_mean']:.5f}",
                            f"{r['latency_ms']:.1f}", f"{r['speedup']:.2f}x"], p
    assert rows["PyTorch FP32 (reference)"][4] == f"{gen['reference']['latency_ms']:.1f}"
    checks = [r for r in _rows(sec) if len(r) == 6 and r[2] in ("mAP@[.5:.95] drop (points)",
                                                                  "PSNR mean vs FP32 PyTorch (dB)")]
    assert [(r[0], r[1], r[3], r[5]) for r in checks] == [
        (c["precision"], c["model"], f"{c['value']:.2f}", "PASS" if c["ok"] else "FAIL") for c in prec["checks"]]
    assert "64 samples (fewer than the default 128, for time)" in sec
    assert "TensorRT engines: skipped (no `tensorrt` Python package)" in html.unescape(sec)
    assert sec.count("<img") == 5  # PyTorch | fp32 | fp16 | int8 of image 0, and the SPADE panel


def test_no_precision_section_without_precision_results(run_dir, tmp_path):
    summary = json.loads((run_dir / "summary.json").read_text())
    del summary["precision"]
    text = write_report(run_dir, tmp_path / "r.html", summary=summary).read_text(encoding="utf-8")
    assert "Accuracy per precision" not in text and "PyTorch reference detections, image 0" in text


def test_percentile_bars_without_samples_and_explicit_inputs(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    stats = {"iterations": 5, "min_ms": 1.0, "mean_ms": 2.0, "median_ms": 2.0, "p90_ms": 3.0, "p95_ms": 3.5,
             "p99_ms": 4.0, "throughput_ips": 500.0}
    bench = {"model": "spade_demo", "backend": "onnxruntime", "batch_range": [1, 1],
             "results": [{"batch": 1, "model": stats}]}
    parity = {"kind": "generator", "model": "spade_demo", "inputs": "8 label maps", "ok": False,
              "outputs": {"image": {"elements": 10, "max_abs": 0.5, "mean_abs": 0.1, "p99_abs": 0.4, "max_rel": 2.0}},
              "verdict": {"images": 2, "max_abs": 0.5, "min_psnr_db": 30.0},
              "per_image": [{"image": "a", "max_abs": 0.5}, {"image": "b", "max_abs": 1e-5}]}
    out = write_report(d, None, bench=bench, parity=parity)
    assert out == d / "report.html"
    text, p = _parse(out)
    assert "bars show percentiles" in text and "p99 4.00" in text
    assert "FAIL" in text and "8 label maps" in text and "No pictures found" in text


def test_cli_report_writes_file(run_dir, tmp_path):
    res = CliRunner().invoke(main, ["report", str(run_dir), "-o", str(tmp_path / "x.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.html").is_file() and "x.html" in res.output


def test_cli_report_missing_run_dir_is_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0], res.stderr
    assert "Traceback" not in res.output
    assert not (tmp_path / "nope").exists()


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (headless render check)")
def test_renders_in_headless_chromium(run_dir, tmp_path):
    out = write_report(run_dir, tmp_path / "r.html")
    shot = tmp_path / "shot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'ud'}",
           f"--screenshot={shot}", "--window-size=1200,2000", out.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=25, env={**os.environ, "HOME": str(tmp_path)})
    assert shot.is_file() and shot.stat().st_size > 0
    px = np.asarray(Image.open(shot).convert("L"))
    assert px.shape[1] == 1200
    assert px.std() > 5 and (px < 128).mean() > 0.001  # something dark (text, charts) on the page


def test_budget_section_lists_moved_layers_and_cost(tmp_path):
    from deploykit.compare.report import write_report
    from deploykit.manifest import write_manifest

    art = tmp_path / "g_int8.onnx"
    art.write_bytes(b"graph bytes")
    budget = {"spec": "psnr=40", "meaning": "at least 40 (mean PSNR (dB) against the FP32 PyTorch output)",
              "met": True, "value": 41.5, "fp32_value": 100.0,
              "evaluations": [{"moved": 0, "value": 35.0}, {"moved": 1, "value": 38.0}, {"moved": 2, "value": 41.5}],
              "moved_to_fp32": [{"node": "node_conv_7", "op": "Conv", "module": "head_0.conv_0",
                                 "rel_error": 0.02, "sqnr_db": 17.0},
                                {"node": "node_conv_9", "op": "Conv", "module": "up_1.norm_0.gamma",
                                 "rel_error": 0.01, "sqnr_db": 20.0}],
              "latency_ms": {"all_int8": 60.0, "with_fp32_layers": 66.0, "cost_percent": 10.0}}
    write_manifest(art, {"kind": "generator", "model": {"name": "spade_demo"}, "inputs": [], "outputs": [],
                         "batch": {"dynamic": False, "min": 1, "opt": 1, "max": 1},
                         "precision": {"mode": "int8", "budget": budget}})
    page = write_report(tmp_path).read_text()
    assert "Accuracy budgets (deploykit quantize)" in page
    assert "head_0.conv_0" in page and "up_1.norm_0.gamma" in page and "(10.0%)" in page
    assert page.index("head_0.conv_0") < page.index("up_1.norm_0.gamma")  # most sensitive first
    budget["moved_to_fp32"] = []
    write_manifest(art, {"kind": "generator", "model": {"name": "spade_demo"}, "inputs": [], "outputs": [],
                         "batch": {"dynamic": False, "min": 1, "opt": 1, "max": 1},
                         "precision": {"mode": "int8", "budget": budget}})
    assert "Met with every eligible layer" in write_report(tmp_path).read_text()
