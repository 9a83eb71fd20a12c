"""deploykit demo: the pipeline FP32 -> FP16/INT8 on the demo models, its budgets, summary and exit code."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from rich.console import Console

from deploykit.cli import main
from deploykit.demo.precision import BUDGETS, PRECISIONS, budget_checks, check_line, interleaved_ms, summary_table


def _render(table) -> str:
    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(table)
    return console.export_text()


# -- fast: budgets, timing order, table, CLI wiring ----------------------------------


def _rows(map_drop: dict, psnr: dict) -> tuple[dict, dict]:
    det = {"model": "fasterrcnn_demo", "rows": {p: {"drop": {"map": map_drop[p]}} for p in PRECISIONS}}
    gen = {"model": "spade_demo", "rows": {p: {"psnr_mean": psnr[p]} for p in PRECISIONS}}
    return det, gen


def test_budget_checks_hold_at_the_limits_and_fail_past_them():
    det, gen = _rows({"fp32": 0.0, "fp16": 0.2, "int8": 1.0}, {"fp32": 100.0, "fp16": 45.0, "int8": 30.0})
    checks = budget_checks(det, gen)
    assert [(c["precision"], c["model"], c["ok"]) for c in checks] == [
        ("fp16", "fasterrcnn_demo", True), ("fp16", "spade_demo", True),
        ("int8", "fasterrcnn_demo", True), ("int8", "spade_demo", True)]
    assert [c["limit"] for c in checks] == [0.2, 45.0, 1.0, 30.0]
    det, gen = _rows({"fp32": 0.0, "fp16": 0.21, "int8": -0.5}, {"fp32": 100.0, "fp16": 60.0, "int8": 29.9})
    checks = budget_checks(det, gen)
    assert [c["ok"] for c in checks] == [False, True, True, False]
    assert check_line(checks[0]) == "fp16  fasterrcnn_demo: mAP@[.5:.95] drop (points) 0.21 ≤ 0.2 -> FAIL"
    assert check_line(checks[3]) == "int8  spade_demo: PSNR mean vs FP32 PyTorch (dB) 29.90 ≥ 30 -> FAIL"
    assert BUDGETS == {"fp16": {"map_drop": 0.2, "psnr_db": 45.0, "mask_map_drop": 0.2},
                       "int8": {"map_drop": 1.0, "psnr_db": 30.0, "mask_map_drop": 1.0}}


def test_mask_detector_budgets_check_its_box_and_its_mask_map():
    det, gen = _rows({"fp32": 0.0, "fp16": 0.1, "int8": 0.5}, {"fp32": 100.0, "fp16": 60.0, "int8": 40.0})
    masked = {"model": "maskrcnn_demo", "rows": {p: {"drop": {"map": 0.0, "mask_map": d}} for p, d in
                                                 (("fp32", 0.0), ("fp16", 0.25), ("int8", 0.9))}}
    checks = [c for c in budget_checks(det, gen, masked) if c["model"] == "maskrcnn_demo"]
    assert [(c["precision"], c["metric"], c["ok"]) for c in checks] == [
        ("fp16", "mAP@[.5:.95] drop (points)", True), ("fp16", "mask mAP@[.5:.95] drop (points)", False),
        ("int8", "mAP@[.5:.95] drop (points)", True), ("int8", "mask mAP@[.5:.95] drop (points)", True)]
    assert check_line(checks[1]) == "fp16  maskrcnn_demo: mask mAP@[.5:.95] drop (points) 0.25 ≤ 0.2 -> FAIL"


def test_interleaved_timing_runs_every_side_once_per_round_on_that_rounds_input():
    calls = []
    sides = {k: (lambda r, k=k: calls.append((k, r))) for k in ("torch", "fp32", "int8")}
    ms = interleaved_ms(sides, rounds=3, pause=0.0)
    assert calls == [("torch", 0), ("fp32", 0), ("int8", 0)] + [(k, r) for r in range(3) for k in sides]
    assert {k: len(v) for k, v in ms.items()} == {"torch": 3, "fp32": 3, "int8": 3}
    assert all(x >= 0 for v in ms.values() for x in v)


def test_summary_table_shows_every_precision_with_its_numbers(precision_summary):
    summary = {"detector": {"parity": {"ok": True}}, "generator": {"ok": True}, "precision": precision_summary}
    text = _render(summary_table(summary))
    for line_start, numbers in [("fasterrcnn_demo", ["PyTorch", "mAP 85.06 / @.5 97.81", "1002.8 ms", "1.00x"]),
                                ("", ["fp16", "mAP 85.01 / @.5 97.80", "-0.05 / +0.00 pts", "131.6 ms", "7.62x",
                                      "≤0.2 PASS"]),
                                ("", ["int8", "mAP 83.83", "-1.23 / +0.02 pts", "6.29x", "≤1 FAIL"]),
                                ("", ["fp32", "parity PASS", "9.37x"]),
                                ("", ["int8", "PSNR 51.9 dB, SSIM 0.9987", "min PSNR 43.4 dB", "≥30 PASS"])]:
        assert any(line.strip().startswith(("│ " + line_start).strip()) and all(n in line for n in numbers)
                   for line in text.splitlines()), (numbers, text)
    caption = " ".join(text.split())
    assert "64 synthetic samples (default 128; fewer here for time)" in caption
    assert "on 100 held-out images" in caption and "median of 3 interleaved" in caption


@pytest.mark.parametrize("ok, code", [(True, 0), (False, 1)])
def test_cli_prints_table_and_report_and_exits_by_the_verdict(monkeypatch, tmp_path, precision_summary, ok, code):
    import deploykit.demo.run as demo

    seen = {}

    def fake_run_demo(output_dir, **kwargs):
        seen.update(kwargs, output_dir=output_dir)
        return {"detector": {"parity": {"ok": True}}, "generator": {"ok": True}, "precision": precision_summary,
                "ok": ok, "report": str(tmp_path / "report.html")}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    r = CliRunner().invoke(main, ["demo", "-o", str(tmp_path), "--calib-samples", "16", "--eval-images", "10"])
    assert r.exit_code == code, r.output
    assert seen["calib_samples"] == 16 and seen["eval_images"] == 10 and seen["rounds"] == 7
    lines = r.output.strip().splitlines()
    assert lines[-2] == f"report: {tmp_path / 'report.html'}" and lines[-1] == f"demo: {'PASS' if ok else 'FAIL'}"
    assert "accuracy and speed per precision" in r.output and "int8" in r.output


def test_cli_bad_counts_are_one_line_errors_before_any_work(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "-o", str(out), "--calib-samples", "0"])
    assert r.exit_code == 2, r.output
    err = [ln for ln in r.stderr.strip().splitlines()]
    assert len(err) == 1 and err[0].startswith("error: demo calibration samples: expected an integer >= 1, got 0")
    assert not out.exists()


# -- slow: the real demo, reduced (fewer pictures, calibration samples and timing rounds) ------------
# It is also the test of issue 4's accuracy budgets on the graphs the demo ships (the dynamic-size
# pixels-in detector, the SPADE generator), against the unmodified PyTorch models: mAP on 100 held-out
# images, PSNR/SSIM on 16 held-out label maps, FP16 and INT8 calibrated on 32 samples (the CLI
# default is 128: fewer samples only make the budgets harder to meet).

REDUCED = ["--images", "2", "--eval-images", "100", "--eval-label-maps", "16", "--calib-samples", "32",
           "--rounds", "2", "--threads", "2"]


@pytest.fixture(scope="module")
def reduced_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    r = CliRunner().invoke(main, ["demo", "-o", str(out), *REDUCED])
    return out, r


@pytest.mark.slow
def test_reduced_demo_writes_every_precision_and_exits_by_parity_and_budgets(reduced_demo):
    out, r = reduced_demo
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    summary = json.loads((out / "summary.json").read_text())
    prec = summary["precision"]
    # the exit code is the verdict: parity and every budget, recomputed here from the measured rows
    checks = budget_checks(prec["detector"], prec["generator"], prec["mask_detector"])
    assert checks == prec["checks"]
    ok = (summary["detector"]["parity"]["ok"] and summary["generator"]["ok"] and summary["mask_detector"]["parity"]["ok"]
          and all(c["ok"] for c in checks))
    assert summary["ok"] == ok and r.exit_code == (0 if ok else 1), r.output
    assert ok, r.output  # the demo models meet issue 4's budgets
    for c in checks:
        assert f"  {check_line(c)}" in r.output
    # FP16/INT8 graphs with manifests saying how they were made
    for model in ("fasterrcnn_demo", "maskrcnn_demo", "spade_demo"):
        for p in ("fp16", "int8"):
            m = json.loads((out / f"{model}_{p}.json").read_text())
            assert m["precision"]["mode"] == p and m["precision"]["low_precision_nodes"] > 0
        assert json.loads((out / f"{model}_int8.json").read_text())["precision"]["calibration"]["samples"] == 32
    assert prec["calibration"]["samples"] == 32 and "32 synthetic samples (fewer than" in r.output
    det, gen = prec["detector"], prec["generator"]
    assert det["images"] == 100 and gen["images"] == 16
    # the bundled model is trained (the comparison means something); FP32 computes what PyTorch
    # computes: no mAP drop, PSNR at the cap
    assert det["reference"]["map"] > 0.7 and abs(det["rows"]["fp32"]["drop"]["map"]) < 0.01
    assert gen["rows"]["fp32"]["psnr_mean"] > 90
    # Mask R-CNN (issue 16): parity with masks; box and mask mAP; FP16/INT8 within the mask budgets
    masked, mp = prec["mask_detector"], summary["mask_detector"]["parity"]
    assert mp["ok"] and mp["masks_compared"] > 0 and mp["min_mask_iou"] >= 0.99, mp
    assert masked["reference"]["mask_map"] > 0.7 and abs(masked["rows"]["fp32"]["drop"]["mask_map"]) < 0.01
    for p in ("fp16", "int8"):
        assert masked["rows"][p]["drop"]["mask_map"] <= BUDGETS[p]["mask_map_drop"], (p, masked["rows"][p])
    # beyond the verdict's mean-based checks: mAP@.5 within the same budget, every label map's PSNR
    # above the floor, structure kept
    for p, budget in (("fp16", BUDGETS["fp16"]), ("int8", BUDGETS["int8"])):
        assert det["rows"][p]["drop"]["map50"] <= budget["map_drop"], (p, det["rows"][p])
        assert gen["rows"][p]["psnr_min"] >= budget["psnr_db"], (p, gen["rows"][p])
        assert gen["rows"][p]["ssim_mean"] > 0.95, (p, gen["rows"][p])
    for p in PRECISIONS:
        d = det["rows"][p]
        assert d["drop"]["map"] == pytest.approx(100 * (det["reference"]["map"] - d["map"]))
        for side in (d, gen["rows"][p]):
            assert len(side["samples_ms"]) == 2 and side["speedup"] > 0
            assert side["speedup"] == pytest.approx(prec_ref_ms(prec, side) / side["latency_ms"])
    assert prec["tensorrt"].get("skipped") or prec["tensorrt"].get("engines")
    # pictures per precision, and the printed table ends the run with the report path
    for p in ("_torch", "", "_fp16", "_int8"):
        assert (out / f"detections_0{p}.png").is_file() and (out / f"masks_0{p}.png").is_file()
    assert (out / "spade_demo_precision_panels.png").is_file()
    tail = r.output.strip().splitlines()
    assert tail[-2] == f"report: {out / 'report.html'}"
    assert re.search(r"│\s+int8\s+│\s+mAP [\d.]+ / @\.5 [\d.]+", r.output), r.output
    for step in range(1, 11):
        assert f"[{step}/10]" in r.output


def prec_ref_ms(prec: dict, side: dict) -> float:
    model = "detector" if "map" in side else "generator"
    return prec[model]["reference"]["latency_ms"]


@pytest.mark.slow
def test_reduced_demo_report_has_the_precision_section_with_summary_numbers(reduced_demo):
    out, _ = reduced_demo
    text = (out / "report.html").read_text(encoding="utf-8")
    prec = json.loads((out / "summary.json").read_text())["precision"]
    sec = text[text.index("<h2>Accuracy per precision</h2>"):text.index("<h2>Latency distribution")]
    for p, r in prec["detector"]["rows"].items():
        assert re.search(rf"<td class=\"l\">{p}</td><td[^>]*>{100 * r['map']:.2f}</td><td[^>]*>{100 * r['map50']:.2f}"
                         rf"</td><td[^>]*>{r['drop']['map']:.2f}</td>", sec), p
    for p, r in prec["generator"]["rows"].items():
        assert re.search(rf"<td class=\"l\">{p}</td><td[^>]*>{r['psnr_mean']:.2f}</td><td[^>]*>{r['psnr_min']:.2f}"
                         rf"</td><td[^>]*>{r['ssim_mean']:.5f}</td>", sec), p
    for p, r in prec["mask_detector"]["rows"].items():
        assert re.search(rf"<td class=\"l\">{p}</td><td[^>]*>{100 * r['map']:.2f}</td>.*?<td[^>]*>"
                         rf"{100 * r['mask_map']:.2f}</td><td[^>]*>{r['drop']['mask_map']:.2f}</td>", sec), p
    # 2 images x 4 sides, boxes and masks, and the SPADE panel
    assert sec.count('src="data:image/png;base64,') == 2 * 4 * 2 + 1
    assert "http://" not in text and "https://" not in text


def test_tensorrt_step_says_why_it_is_skipped(monkeypatch, tmp_path):
    import deploykit.runtime.tensorrt as trt
    from deploykit.demo.precision import tensorrt_engines

    monkeypatch.setattr(trt, "missing_requirement", lambda: "no NVIDIA GPU (CUDA reports no device)")
    lines = []
    got = tensorrt_engines({"m": {"fp32": tmp_path / "m.onnx"}}, rounds=1, threads=1, out=tmp_path, echo=lines.append)
    assert got == {"skipped": "no NVIDIA GPU (CUDA reports no device)"}
    assert len(lines) == 1 and lines[0].strip().startswith("skipped: no NVIDIA GPU") and "deploykit[tensorrt]" in lines[0]
    assert list(tmp_path.iterdir()) == []
