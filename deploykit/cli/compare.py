"""``deploykit parity``, ``eval``, ``bench`` and ``report``: the artifact against its PyTorch reference."""

from __future__ import annotations

import sys

import click

from ..errors import BadInput, expected_got
from .common import command, finish_check, fmt


@command("parity")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--images", "images_dir", type=click.Path(), default=None,
              help="Detector: directory of images (default: 20 held-out synthetic images resized to photo "
                   "sizes, 200..2000 px, aspect ratios 1:3..3:1).")
@click.option("--label-maps", "label_maps_dir", type=click.Path(), default=None,
              help="Generator: directory of label map PNGs (default: 8 held-out demo label maps).")
@click.option("--instances", "instances_dir", type=click.Path(), default=None,
              help="Generator: directory of instance PNGs, matched to label maps by file stem.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the full report as JSON (atomically).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime / torch threads (default: all cores).")
@click.option("--bisect", is_flag=True,
              help="Instead of comparing with PyTorch: find the first intermediate tensor whose error against a "
                   "reference ONNX graph exceeds the tolerance and name the node producing it.")
@click.option("--against", type=click.Path(dir_okay=False), default=None,
              help="--bisect reference graph (same tensor names). Default: the FP32 source in the manifest "
                   "(precision.source.path), else ARTIFACT itself run with ONNX Runtime optimisations disabled.")
@click.option("--rtol", type=float, default=None,
              help="--bisect: a tensor fails when max|a-b| > atol + rtol*max|ref|. Default by the artifact's "
                   "precision: fp32 1e-4, fp16 1e-2, int8 5e-2.")
@click.option("--atol", type=float, default=None,
              help="--bisect: absolute floor of the tolerance. Default: fp32 1e-6, fp16 1e-4, int8 1e-3.")
@click.option("--samples", type=int, default=1, show_default=True,
              help="--bisect: inputs to run (the first of the parity inputs).")
@click.option("--window", type=int, default=128, show_default=True,
              help="--bisect: most intermediate tensors exposed as outputs per probe (memory bound).")
@click.option("--strict-order", is_flag=True,
              help="--bisect: count tensors holding the reference's values in another order (TopK/NMS near-ties) "
                   "as failing.")
def parity_cmd(artifact, images_dir, label_maps_dir, instances_dir, json_out, threads, bisect, against, rtol, atol,
               samples, window, strict_order):
    """Compare ARTIFACT (.onnx with its manifest) with the PyTorch reference rebuilt from the manifest.

    Prints per-output error statistics and the verdict (detectors: detections matched both
    ways; generators: max |Δ| and PSNR). Exits 1 when parity fails, 2 on bad input.

    \b
    With --bisect: ONNX against ONNX (see --against), binary search over the intermediate
    tensors for the first one over tolerance; prints the node (name, op, inputs) and its
    error, and the final-output verdict. Exits 1 when a tensor fails. See docs/parity.md.
    """
    from rich.console import Console
    from rich.table import Table

    from ..compare.parity import run_parity

    bisect_only = {"--against": against, "--rtol": rtol, "--atol": atol,
                   "--samples": samples if samples != 1 else None, "--window": window if window != 128 else None,
                   "--strict-order": strict_order or None}
    if bisect:
        _parity_bisect(artifact, images_dir, label_maps_dir, instances_dir, json_out, threads, against, rtol, atol,
                       samples, window, strict_order)
        return
    given = [k for k, v in bisect_only.items() if v is not None]
    if given:
        raise BadInput(expected_got(", ".join(given), "to come with --bisect", "no --bisect"))

    report = run_parity(artifact, images_dir=images_dir, label_maps_dir=label_maps_dir,
                        instances_dir=instances_dir, threads=threads)
    console = Console(width=max(Console().width, 100))
    console.print(f"reference: {report['reference']}", markup=False)
    table = Table(title=f"{report['model']} ({report['kind']}) vs PyTorch on {report['inputs']}")
    for col in ("output", "elements", "max abs", "mean abs", "p99 abs", "max rel"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for name, s in report["outputs"].items():
        if s is None:
            table.add_row(name, "0", "-", "-", "-", "-")
        else:
            table.add_row(name, str(s["elements"]), f"{s['max_abs']:.3g}", f"{s['mean_abs']:.3g}",
                          f"{s['p99_abs']:.3g}", f"{s['max_rel']:.3g}")
    console.print(table)
    v = report["verdict"]
    if report["kind"] == "detector":
        bad = sum(1 for p in report["per_image"] if not p["ok"])
        console.print(f"detections: {v['matched']} matched, {v['unmatched_reference']} reference and "
                      f"{v['unmatched_artifact']} artifact detections without a partner; {bad} of {v['images']} "
                      f"images fail; min IoU {v['min_iou']:.6f}, max |Δscore| {v['max_score_diff']:.2e}", markup=False)
        if "masks_compared" in v:
            probs = ("" if v["max_mask_prob_diff"] is None
                     else f", max |Δ mask probability| {v['max_mask_prob_diff']:.2e}")
            console.print(f"masks: {v['masks_compared']} matched pairs compared, min mask IoU {v['min_mask_iou']:.6f} "
                          f"(tolerance {v['tolerances']['mask_iou']}){probs}", markup=False)
    else:
        psnr = "inf (identical)" if v["min_psnr_db"] is None else f"{v['min_psnr_db']:.1f} dB"
        console.print(f"images: {v['images']}, max |Δ| {v['max_abs']:.2e} (tolerance {v['tolerance']:.0e}), "
                      f"min PSNR of uint8 images {psnr}; {len(v['images_failed'])} fail", markup=False)
    finish_check(console, "parity", report, json_out)

def _parity_bisect(artifact, images_dir, label_maps_dir, instances_dir, json_out, threads, against, rtol, atol,
                   samples, window, strict_order) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..compare.bisect import run_bisect

    err = Console(stderr=True)
    with err.status("bisect") as status:
        report = run_bisect(artifact, against, images_dir=images_dir, label_maps_dir=label_maps_dir,
                            instances_dir=instances_dir, samples=samples, rtol=rtol, atol=atol, window=window,
                            threads=threads, strict_order=strict_order,
                            progress=lambda m: status.update(f"bisect: {m}"))
    console = Console(width=max(Console().width, 110))
    tol = report["tolerance"]
    console.print(f"{report['artifact']} ({report['precision']}) against {report['reference']} on "
                  f"{report['inputs']}; tensor fails when max|a-b| > {tol['atol']:g} + {tol['rtol']:g}·max|ref| "
                  f"({report['tolerance_source']})", markup=False)
    table = Table(title="final outputs")
    for col in ("output", "shape", "max abs", "max |ref|", "max rel", "verdict"):
        table.add_column(col, justify="left" if col in ("output", "shape", "verdict") else "right")

    def verdict(s: dict) -> str:
        v = "FAIL" if s["fails"] else ("reordered" if s.get("reordered") else "ok")
        return f"{v} ({s['mismatch']})" if s.get("mismatch") and s["fails"] else v

    for name, s in report["final_outputs"].items():
        table.add_row(name, str(s["shape"]), fmt(s["max_abs"]), fmt(s["ref_max"]), fmt(s["max_rel"]), verdict(s))
    console.print(table)
    probes = Table(title=f"probes ({report['candidates']} candidate tensors, {report['compared']} compared, "
                         f"{report['ort_runs']} ONNX Runtime runs, {report['seconds']:.1f} s)")
    for col in ("#", "exposed", "tensors", "failing", "reordered", "s"):
        probes.add_column(col, justify="left" if col == "exposed" else "right")
    for p in report["probes"]:
        probes.add_row(str(p["probe"]), p["what"], str(p["tensors"]), str(p["failing"]), str(p["reordered"]),
                       f"{p['seconds']:.2f}")
    console.print(probes)
    first = report["first_failing"]
    if first is None:
        console.print(f"no compared tensor exceeds the tolerance ({len(report['reordered'])} reordered)", markup=False)
    else:
        node, s = first["node"], first["stats"]
        nodes = Table(title=f"first failing tensor: {first['tensor']!r} (candidate {first['index']})")
        for col in ("tensor", "role", "shape", "max abs", "max |ref|", "max rel", "verdict"):
            nodes.add_column(col, justify="left" if col in ("tensor", "role", "shape", "verdict") else "right")
        for name, st in first["inputs"].items():
            nodes.add_row(name, "input", str(st["shape"]), fmt(st["max_abs"]), fmt(st["ref_max"]),
                          fmt(st["max_rel"]), verdict(st))
        nodes.add_row(first["tensor"], "output", str(s["shape"]), fmt(s["max_abs"]), fmt(s["ref_max"]),
                      fmt(s["max_rel"]), verdict(s))
        console.print(nodes)
        console.print(f"node {node['name']!r} ({node['op_type']}), inputs {node['inputs']}"
                      + (f"; not compared: {first['inputs_not_compared']}" if first["inputs_not_compared"] else ""),
                      markup=False)
    finish_check(console, "bisect", report, json_out)

@command("eval")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--data", "data", type=click.Path(), default=None,
              help="Detector: COCO directory (annotations.json + images); default the held-out synthetic set. "
                   "Generator: directory of label-map PNGs; default held-out spade_demo scenes.")
@click.option("--samples", type=int, default=None,
              help="Images/label maps to use (default: 100 detector, 16 generator, all of a --data directory).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the report as JSON (atomically).")
@click.option("--threads", type=int, default=None, help="ONNX Runtime / torch threads (default: all cores).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(artifact, data, samples, json_out, threads, quiet):
    """Task accuracy of ARTIFACT (.onnx with its manifest) next to its FP32 PyTorch reference.

    \b
    Detector: COCO mAP@[.5:.95] and mAP@.5 of the artifact and of PyTorch on the same
    images, and the drop in points. Generator: PSNR (mean, min) and SSIM (mean) of the
    artifact's images against PyTorch's. Reports only: exits 0 whatever the numbers.
    See docs/eval.md.
    """
    from rich.console import Console
    from rich.table import Table

    from ..compare.evaluate import evaluate_artifact
    from ..fileio import write_json_atomic

    r = evaluate_artifact(artifact, data=data, samples=samples, threads=threads, progress=not quiet)
    out = sys.stdout
    console = Console(file=out, width=None if out.isatty() else 120)
    table = Table(min_width=72, title=f"{r['model']} ({r['kind']}, precision {r['precision']}) vs PyTorch",
                  caption=f"{r['images']} {'images' if r['kind'] == 'detector' else 'label maps'}: {r['data']}")
    if r["kind"] == "detector":
        for col in ("metric", "artifact", "PyTorch", "drop (points)"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for key, label in (("map", "mAP@[.5:.95]"), ("map50", "mAP@.5"), ("mask_map", "mask mAP@[.5:.95]"),
                           ("mask_map50", "mask mAP@.5")):
            if key not in r["artifact"]:
                continue
            table.add_row(label, f"{100 * r['artifact'][key]:.2f}", f"{100 * r['reference'][key]:.2f}",
                          f"{r['drop'][key]:+.2f}")
    else:
        a = r["artifact"]
        for col in ("vs FP32 PyTorch", "mean", "min"):
            table.add_column(col, justify="left" if col.startswith("vs") else "right")
        table.add_row("PSNR (dB, peak 1)", f"{a['psnr_mean']:.2f}", f"{a['psnr_min']:.2f}")
        table.add_row("SSIM", f"{a['ssim_mean']:.5f}", f"{a['ssim_min']:.5f}")
    console.print(table)
    if r.get("reference_model"):
        console.print(f"reference: {r['reference_model']}", markup=False)
    if json_out:
        write_json_atomic(json_out, r)
        click.echo(f"wrote {json_out}")

@command("bench")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--batch", "batch", default=None, metavar="1,2,4",
              help="Comma-separated batch sizes, within the artifact's batch range. Default: its smallest batch.")
@click.option("--warmup", default=1.0, show_default=True, type=float, help="Warm-up seconds per side and batch.")
@click.option("--duration", default=None, type=float,
              help="Timed seconds per side and batch (default 5; exclusive with --iterations).")
@click.option("--iterations", default=None, type=int, help="Timed runs per side and batch instead of --duration.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (and torch threads).")
@click.option("--torch", "torch_ref", is_flag=True,
              help="Also time the PyTorch reference rebuilt from the manifest, interleaved; adds a speedup column.")
@click.option("--end-to-end", is_flag=True, help="Also time the whole runtime pipeline (pre- and post-processing).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the results here (with every run's latency in samples_ms).")
@click.option("--report", "report_to", type=click.Path(), default=None, metavar="DIR_OR_HTML",
              help="Also write the HTML report (latency distribution per side and batch). PAGE.html: a page for "
                   "this bench alone. DIR: bench_<stem>.json goes there and DIR/report.html shows everything in DIR "
                   "(like `deploykit report DIR`).")
@click.option("--cuda-graph", is_flag=True,
              help="TensorRT engines: capture each context's inference into a CUDA graph on its first run per "
                   "input shape and replay it (less launch overhead); falls back to plain enqueue with a warning "
                   "when the engine cannot be captured.")
def bench_cmd(artifact, batch, warmup, duration, iterations, threads, torch_ref, end_to_end, json_out, report_to,
              cuda_graph):
    """Latency (min/mean/median/p90/p95/p99 ms) and throughput (images/s) of ARTIFACT per batch size.

    Model-only times Session.run on a preprocessed feed; --end-to-end adds the runtime's
    whole pipeline; --torch adds eager PyTorch on the same inputs. Ctrl-C prints what was
    measured so far (and still writes --json and --report) and exits 130. See docs/bench.md.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from ..compare.bench import TABLE_HEADER, parse_batches, report_target, run_bench, table_rows, write_bench_report
    from ..fileio import write_json_atomic

    if report_to is not None:
        report_target(report_to)  # a bad path fails before anything is timed
    result: dict = {}
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=err,
                  transient=True) as bar:
        tasks: dict = {}

        def progress(label: str, done: float, total: float) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        run_bench(artifact, batches=parse_batches(batch), warmup=warmup, duration=duration, iterations=iterations,
                  threads=threads, torch_ref=torch_ref, end_to_end=end_to_end, cuda_graph=cuda_graph,
                  progress=progress, result=result)
    table = Table(title=f"{result.get('artifact')} ({result.get('kind')}, {', '.join(result.get('providers', []))}"
                        f", threads {result.get('threads') or 'default'}"
                        f"{', CUDA graphs' if result.get('cuda_graph') else ''})")
    for i, name in enumerate(TABLE_HEADER):
        table.add_column(name, justify="left" if i < 2 else "right")
    for row in table_rows(result):
        table.add_row(*row)
    out = sys.stdout
    Console(file=out, width=None if out.isatty() else 150).print(table)
    if json_out:
        write_json_atomic(json_out, result)
        click.echo(f"wrote {json_out}")
    if report_to is not None and result.get("results"):
        click.echo(f"wrote {write_bench_report(result, report_to)}")
    if result.get("interrupted"):
        click.echo("interrupted: partial results above", err=True)
        sys.exit(130)

@command("report")
@click.argument("run_dir", type=click.Path())
@click.option("-o", "--output", "out_path", type=click.Path(dir_okay=False), default=None,
              help="HTML file to write (default: RUN_DIR/report.html).")
def report_cmd(run_dir, out_path):
    """One self-contained HTML page for RUN_DIR (e.g. runs/demo): summary table, latency
    distribution, error histograms and pictures, from summary.json, bench/parity JSON and PNGs.

    No scripts or external links; images are embedded. See docs/report.md.
    """
    from ..compare.report import write_report

    path = write_report(run_dir, out_path)
    click.echo(f"wrote {path}")
