"""deploykit bench: JSON structure, ordered statistics, batch range errors, --torch, --end-to-end, .plan."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from deploykit.cli import main

STATS = ("min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms", "throughput_ips")


@pytest.fixture(scope="module")
def detector(demo_detector_batch_onnx):
    return demo_detector_batch_onnx  # fasterrcnn_demo at 320x320, batch 1..4


@pytest.fixture()
def runner():
    return CliRunner()


def _check_stats(s: dict, runs: int) -> None:
    assert s["iterations"] == runs
    samples = s["samples_ms"]  # every timed run, in ms, in the order run
    assert len(samples) == runs and all(isinstance(x, float) and x > 0 for x in samples)
    assert min(samples) == pytest.approx(s["min_ms"], abs=1e-3)
    assert sum(samples) / runs == pytest.approx(s["mean_ms"], abs=1e-3)
    assert all(s[k] > 0 for k in STATS), s
    assert s["min_ms"] <= s["median_ms"] <= s["p90_ms"] <= s["p95_ms"] <= s["p99_ms"]
    assert s["min_ms"] <= s["mean_ms"]


def test_json_structure_and_ordered_numbers(runner, detector, tmp_path):
    out = tmp_path / "b.json"
    r = runner.invoke(main, ["bench", str(detector), "--batch", "1,2", "--iterations", "3", "--warmup", "0",
                             "--threads", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "median ms" in r.stdout
    data = json.loads(out.read_text())
    assert data["kind"] == "detector" and data["batch_range"] == [1, 4] and data["interrupted"] is False
    assert [row["batch"] for row in data["results"]] == [1, 2]
    for row in data["results"]:
        _check_stats(row["model"], 3)
        assert "end_to_end" not in row and "torch" not in row and "speedup" not in row
    assert data["backend"] == "onnxruntime"


def test_end_to_end(runner, detector, tmp_path):
    out = tmp_path / "b.json"
    r = runner.invoke(main, ["bench", str(detector), "--iterations", "2", "--warmup", "0", "--end-to-end",
                             "--json", str(out)])
    assert r.exit_code == 0, r.output
    row = json.loads(out.read_text())["results"][0]
    assert row["batch"] == 1
    _check_stats(row["model"], 2)
    _check_stats(row["end_to_end"], 2)


def test_torch_adds_speedup(runner, detector, tmp_path):
    out = tmp_path / "b.json"
    r = runner.invoke(main, ["bench", str(detector), "--iterations", "2", "--warmup", "0", "--threads", "2",
                             "--torch", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "speedup" in r.stdout
    row = json.loads(out.read_text())["results"][0]
    _check_stats(row["torch"], 2)
    assert row["speedup"] > 0 and row["speedup_vs"] == "model"
    assert row["speedup"] == pytest.approx(row["torch"]["median_ms"] / row["model"]["median_ms"])


def _one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    for w in words:
        assert w in lines[0], lines[0]


def test_batch_out_of_range(runner, detector, tmp_path):
    out = tmp_path / "b.json"
    r = runner.invoke(main, ["bench", str(detector), "--batch", "1,8", "--iterations", "1", "--json", str(out)])
    _one_line_error(r, "--batch", "1..4", "8")
    assert not out.exists()


def test_bad_options(runner, detector):
    _one_line_error(runner.invoke(main, ["bench", str(detector), "--batch", "x"]), "--batch")
    _one_line_error(runner.invoke(main, ["bench", str(detector), "--duration", "1", "--iterations", "1"]),
                    "--duration/--iterations")


def test_plan_gives_tensorrt_error(runner, tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    _one_line_error(runner.invoke(main, ["bench", str(plan)]), "TensorRT", "model.plan")


def test_partial_results_on_interrupt(detector, monkeypatch):
    import deploykit.compare.bench as bench

    calls = {"n": 0}
    real = bench._timed_block

    def interrupting(fn, **kw):
        calls["n"] += 1
        if calls["n"] > 2:  # warm-up and the first timed block of batch 1 ran
            raise KeyboardInterrupt
        return real(fn, **kw)

    monkeypatch.setattr(bench, "_timed_block", interrupting)
    result = bench.run_bench(detector, batches=[1, 2], iterations=2, warmup=0)
    assert result["interrupted"] is True
    assert [row["batch"] for row in result["results"]] == [1]
    assert result["results"][0]["model"]["iterations"] == 2


def test_bench_module_imports_without_torch():
    code = "import sys, deploykit.compare.bench, deploykit.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _self_contained(page: str) -> None:
    low = page.lower()
    assert "<script" not in low and "http://" not in low and "https://" not in low and "url(" not in low
    for attr in ("src=", "href="):
        for part in low.split(attr)[1:]:
            assert part[1:].startswith("data:"), part[:60]  # only embedded data URIs


def test_report_html_page(runner, detector, tmp_path):
    page = tmp_path / "bench.html"
    (tmp_path / "summary.json").write_text("{}")  # not read: a page for this bench alone
    r = runner.invoke(main, ["bench", str(detector), "--batch", "1,2", "--iterations", "4", "--warmup", "0",
                             "--threads", "1", "--end-to-end", "--report", str(page)])
    assert r.exit_code == 0, r.output
    assert f"wrote {page}" in r.stdout and sorted(p.name for p in tmp_path.iterdir()) == ["bench.html",
                                                                                          "summary.json"]
    html = page.read_text()
    _self_contained(html)
    assert html.count('aria-label="latency distribution"') == 1
    chart = html.split('aria-label="latency distribution"', 1)[1].split("</svg>", 1)[0]
    for label in ("onnxruntime model b1", "onnxruntime end-to-end b1", "onnxruntime model b2",
                  "onnxruntime end-to-end b2"):
        assert label in chart
    assert chart.count("<circle") == 4 * 4  # one dot per timed run: 4 runs x 2 sides x 2 batches
    assert chart.count("n=4") == 4  # the box plots, not the percentile bars
    assert "images/s" in html and str(detector) in html


def test_report_dir_keeps_bench_json(runner, detector, tmp_path):
    run_dir = tmp_path / "run"
    r = runner.invoke(main, ["bench", str(detector), "--iterations", "3", "--warmup", "0", "--report", str(run_dir)])
    assert r.exit_code == 0, r.output
    saved = json.loads((run_dir / f"bench_{detector.stem}.json").read_text())
    _check_stats(saved["results"][0]["model"], 3)
    html = (run_dir / "report.html").read_text()
    _self_contained(html)
    assert html.count("<circle") == 3
    # `deploykit report` on the directory draws the same chart from the saved JSON
    r = runner.invoke(main, ["report", str(run_dir), "-o", str(tmp_path / "again.html")])
    assert r.exit_code == 0, r.output
    again = (tmp_path / "again.html").read_text()
    assert again.split("<h2>Latency", 1)[1].split("<h2>", 1)[0] == html.split("<h2>Latency", 1)[1].split("<h2>", 1)[0]


@pytest.mark.parametrize("case", ["html-in-missing-dir", "dir-in-missing-dir", "existing-file", "dir-named-html"])
def test_bad_report_path_exits_2_before_timing(runner, detector, tmp_path, monkeypatch, case):
    import deploykit.compare.bench as bench

    target = {"html-in-missing-dir": tmp_path / "nope" / "r.html", "dir-in-missing-dir": tmp_path / "nope" / "run",
              "existing-file": tmp_path / "notes.txt", "dir-named-html": tmp_path / "x.html"}[case]
    if case == "existing-file":
        target.write_text("x")
    if case == "dir-named-html":
        target.mkdir()
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: pytest.fail("timed despite a bad --report"))
    _one_line_error(runner.invoke(main, ["bench", str(detector), "--iterations", "1", "--report", str(target)]),
                    "--report", str(target))
    assert not (tmp_path / "nope").exists()


def test_image_list_graph_is_timed_on_mixed_sizes(runner, demo_detector_list_onnx, tmp_path):
    from deploykit.compare.bench import _Workload

    work = _Workload(demo_detector_list_onnx, threads=1)
    try:
        images = work.inputs(3)
        feed = work.model_feed(images)
    finally:
        work.close()
    assert len({im.shape[:2] for im in images}) == 3  # one call, three sizes, none resized
    assert feed["image_hw"].tolist() == [list(im.shape[:2]) for im in images]
    out = tmp_path / "b.json"
    r = runner.invoke(main, ["bench", str(demo_detector_list_onnx), "--batch", "3", "--iterations", "1",
                             "--warmup", "0", "--end-to-end", "--threads", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    row = json.loads(out.read_text())["results"][0]
    assert row["batch"] == 3
    _check_stats(row["end_to_end"], 1)
