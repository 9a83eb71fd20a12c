#!/usr/bin/env python
"""Benchmark: FP32 vs ModelOpt INT8 vs ModelOpt INT8 + exact ORT lowering on ONNX Runtime CPU.

For each model: export FP32 (or take ``--fp32 NAME=PATH``), quantize with NVIDIA ModelOpt ONNX
PTQ (int8, entropy calibration, Q/DQ on Conv/Gemm inputs, ``bbox_pred`` kept FP32), then
apply :func:`deploykit.precision.ort_lowering.lower_for_ort` (Q/DQ after Conv/Gemm whose output
reaches a same-scale quantizer only through Relu / 0-1 mask Mul / MaxPool / nearest Resize)
for both CPU targets: ``int8_lowered`` (``x86-vnni``: int8 weights, ORT's U8S8 kernels, exact
only on VNNI/AMX CPUs) and ``int8_lowered_u8u8`` (``x86``: uint8 weights, U8U8 kernels, exact on
every x86 CPU). Say which CPU the numbers come from: ``lscpu``, ``uptime``.

All three variants run in ONE process, in interleaved blocks (A B C A B C ...), on
``--threads`` intra-op threads; the table gives medians and FP32/variant ratios. Also:

* which fused int8 kernels ONNX Runtime made (QLinearConv / QGemm in the optimized graph);
* exactness of the lowering: ModelOpt INT8 vs +lowering with graph optimizations off
  (reference kernels: must be bit-identical) and with them on (ORT's integer kernels round
  the requantization differently from float Conv + QuantizeLinear: max abs difference);
* ``--profile``: share of kernel time per op type for every variant;
* ``--map N``: demo detector mAP on N held-out synthetic-shapes images for each variant.

    python scripts/bench_int8.py                      # demo, resnet50_fpn 800, spade_coco 256
    python scripts/bench_int8.py --models demo --profile --map 100

NOTE: ``modelopt.onnx.quantization.quantize`` rewrites its input file in place; this script
always hands it a temporary copy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploykit.precision.ort_lowering import lower_for_ort  # noqa: E402
from deploykit.runtime.cpu import cpu_class  # noqa: E402
from deploykit.runtime.profile import kernel_times, op_shares  # noqa: E402

MODELS = {
    # key: (deploykit model name, canvas, default calibration samples)
    "demo": ("fasterrcnn_demo", 320, 32),
    "resnet50": ("fasterrcnn_resnet50_fpn", 800, 4),
    "spade": ("spade_coco", 256, 4),
}


# ----------------------------------------------------------------------------- export


def export_fp32(key: str, out: Path) -> Path:
    name, size, _ = MODELS[key]
    if key == "spade":
        from deploykit.export.spade import export_spade

        export_spade(name, out)
        return out
    import torch

    from deploykit.compare.reference import calibrate_batchnorm
    from deploykit.export.detector import detector_class_names, export_detector, model_info
    from deploykit.models import build, resolve_checkpoint

    ckpt = resolve_checkpoint(name, None)
    kwargs = {"min_size": size, "max_size": size}
    net = build(name, ckpt, **kwargs)
    if ckpt is None:  # random weights: realistic activation statistics for calibration
        calibrate_batchnorm(net, size, torch.Generator().manual_seed(0))
    export_detector(net, out, input_size=(size, size), model_info=model_info(name, ckpt, kwargs),
                    class_names=detector_class_names(name, net))
    return out


def manifest_of(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


# ----------------------------------------------------------------------------- data


def detector_feed(manifest: dict, image: np.ndarray) -> dict[str, np.ndarray]:
    from deploykit.runtime.preprocess import Preprocessing, preprocess_batch

    images, sizes, _ = preprocess_batch([image], Preprocessing.from_manifest(manifest["preprocessing"]))
    return {"images": images, "image_sizes": sizes}


def feeds(key: str, manifest: dict, n: int, split: str) -> list[dict[str, np.ndarray]]:
    """``n`` input feeds: calibration (``split="calib"``) or held-out (``"heldout"``) data."""
    if key == "spade":
        from deploykit.data.spade_scenes import make_sample

        size = manifest["preprocessing"]["input_size"][0]
        out = []
        for i in range(n):
            s = make_sample(i, size=size, split="train" if split == "calib" else "heldout")
            out.append({"label_map": s.label[None], "instance_map": s.instance[None]})
        return out
    from deploykit.data.shapes import sample_for_index

    seed = 2000 if split == "calib" else 1000
    return [detector_feed(manifest, sample_for_index(seed, i)[0]) for i in range(n)]


# ----------------------------------------------------------------------------- quantize


def quantize_modelopt(fp32: Path, out: Path, calib: list[dict[str, np.ndarray]],
                      op_types: tuple[str, ...] = ("Conv", "Gemm")) -> Path:
    from modelopt.onnx.quantization import quantize

    model = onnx.load(str(fp32), load_external_data=False)
    exclude = [n.name for n in model.graph.node
               if n.op_type in ("Conv", "Gemm") and any("bbox_pred" in i for i in n.input)]
    if "Add" in op_types:  # only residual Adds: ModelOpt would also quantize box decoding arithmetic
        residual = set(residual_adds(model))
        exclude += [n.name for n in model.graph.node if n.op_type == "Add" and n.name not in residual]
    data = {k: np.concatenate([f[k] for f in calib]) for k in calib[0]}
    large = fp32.stat().st_size > 1.8e9
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / fp32.name  # quantize() modifies its input file in place
        shutil.copy(fp32, copy)
        tmp_out = Path(d) / out.name  # and writes intermediate files beside its output
        quantize(str(copy), quantize_mode="int8", calibration_data=data, calibration_method="entropy",
                 calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=str(tmp_out),
                 op_types_to_quantize=list(op_types), nodes_to_exclude=exclude, log_level="WARNING",
                 use_external_data_format=large)
        shutil.move(tmp_out, out)
    return out


def residual_adds(model: onnx.ModelProto) -> list[str]:
    """Add nodes of residual blocks: one input straight from a Conv, every consumer a Relu."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    return [n.name for n in model.graph.node
            if n.op_type == "Add" and any(producer.get(i) is not None and producer[i].op_type == "Conv" for i in n.input)
            and consumers[n.output[0]] and all(c.op_type == "Relu" for c in consumers[n.output[0]])]


def lower(int8: Path, out: Path, target: str = "x86-vnni") -> int:
    model, record = lower_for_ort(onnx.load(str(int8)), target)
    count = record["output_qdq_pairs"]
    onnx.save(model, str(out))
    return count


def write_manifest(fp32: Path, onnx_path: Path, mode: str) -> None:
    """Manifest beside ``onnx_path`` (copy of the FP32 one, artifact and precision updated)."""
    from deploykit.fileio import sha256_file

    m = manifest_of(fp32)
    m["artifact"] = {**m["artifact"], "file": onnx_path.name, "sha256": sha256_file(onnx_path)}
    m["precision"] = {"mode": mode}
    onnx_path.with_suffix(".json").write_text(json.dumps(m, indent=2))


# ----------------------------------------------------------------------------- ORT


def session(path: Path, threads: int, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            optimized: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = level
    so.log_severity_level = 3
    if optimized:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def optimized_ops(path: Path, threads: int) -> Counter:
    with tempfile.TemporaryDirectory() as d:
        opt = Path(d) / "opt.onnx"
        session(path, threads, optimized=opt)
        return Counter(n.op_type for n in onnx.load(str(opt), load_external_data=False).graph.node)


def profile_ops(path: Path, feed: dict, threads: int, runs: int) -> tuple[float, list[tuple[str, float]]]:
    """(kernel ms per run, [(op type, % of kernel time)] descending)."""
    times = kernel_times(path, feed, threads, runs)
    return sum(t.us for t in times) / runs / 1e3, op_shares(times)


def max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0
               for x, y in zip(a, b))


def exactness(int8: Path, lowered: Path, inputs: list[dict], threads: int) -> dict:
    out = {}
    for label, level in (("reference_kernels", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                         ("optimized", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
        a, b = session(int8, threads, level), session(lowered, threads, level)
        identical, diff = 0, 0.0
        for f in inputs:
            x, y = a.run(None, f), b.run(None, f)
            identical += all(np.array_equal(u, v) for u, v in zip(x, y))
            diff = max(diff, max_abs_diff(x, y))
        out[label] = {"identical": identical, "n": len(inputs), "max_abs_diff": diff}
    return out


def bench(paths: dict[str, Path], feed: dict, threads: int, blocks: int, per_block: int) -> dict[str, float]:
    sessions = {k: session(p, threads) for k, p in paths.items()}
    for s in sessions.values():
        s.run(None, feed)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(blocks):
        for k, s in sessions.items():
            for _ in range(per_block):
                t0 = time.perf_counter()
                s.run(None, feed)
                times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def demo_map(paths: dict[str, Path], n: int, threads: int) -> dict[str, float]:
    from deploykit.data.shapes import coco_dict, sample_for_index
    from deploykit.metrics import coco_metrics
    from deploykit.runtime import Detector

    samples = [sample_for_index(1000, i) for i in range(n)]
    gt = coco_dict(samples)
    out = {}
    for k, p in paths.items():
        dets = []
        with Detector(p, threads=threads) as det:
            for i, (img, _) in enumerate(samples):
                d = det.predict(img)
                for b, s, lb in zip(d.boxes.astype(np.float64), d.scores.tolist(), d.labels.tolist()):
                    dets.append({"image_id": i + 1, "category_id": int(lb),
                                 "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                                 "score": float(s)})
        out[k] = coco_metrics(gt, dets)["map"]
    return out


# ----------------------------------------------------------------------------- main


def run_model(key: str, args, workdir: Path) -> dict:
    t0 = time.perf_counter()
    given = dict(x.split("=", 1) for x in args.fp32)
    fp32 = Path(given[key]) if key in given else export_fp32(key, workdir / f"{key}_fp32.onnx")
    manifest = manifest_of(fp32)
    n_calib = args.calib or MODELS[key][2]
    calib = feeds(key, manifest, n_calib, "calib")
    int8 = quantize_modelopt(fp32, workdir / f"{key}_int8.onnx", calib)
    lowered = workdir / f"{key}_int8_lowered.onnx"
    pairs = lower(int8, lowered)
    lowered_u8 = workdir / f"{key}_int8_lowered_u8u8.onnx"
    lower(int8, lowered_u8, "x86")
    paths = {"fp32": fp32, "int8": int8}
    if pairs:  # else the lowered graph is the ModelOpt one: nothing to compare
        paths.update({"int8_lowered": lowered, "int8_lowered_u8u8": lowered_u8})
    if args.residual_add and residual_adds(onnx.load(str(fp32), load_external_data=False)):
        # ModelOpt's own Q/DQ on residual Add inputs (calibrated scales), then the same exact lowering:
        # conv3 -> Q (fused QLinearConv) and DQ,DQ -> Add -> Q (QLinearAdd). Not exact vs "int8".
        int8r = quantize_modelopt(fp32, workdir / f"{key}_int8res.onnx", calib, op_types=("Conv", "Gemm", "Add"))
        lowered_r = workdir / f"{key}_int8res_lowered.onnx"
        pairs_r = lower(int8r, lowered_r)
        paths.update({"int8res": int8r, "int8res_lowered": lowered_r})
    if key != "spade":
        for k, p in paths.items():
            if k != "fp32":
                write_manifest(fp32, p, "int8")
    prep_s = time.perf_counter() - t0
    res: dict = {"model": MODELS[key][0], "canvas": MODELS[key][1], "inserted_qdq_pairs": pairs,
                 "prepare_s": round(prep_s, 1)}
    res["kernels"] = {}
    for k, p in paths.items():
        ops = optimized_ops(p, args.threads)
        res["kernels"][k] = {op: ops[op] for op in ("Conv", "FusedConv", "QLinearConv", "Gemm", "FusedGemm", "QGemm",
                                                     "QuantizeLinear", "DequantizeLinear") if ops[op]}
    heldout = feeds(key, manifest, args.exact_n, "heldout")
    res["exactness"] = exactness(int8, lowered, heldout, args.threads) if pairs else {}
    res["exactness_u8u8"] = exactness(int8, lowered_u8, heldout, args.threads) if pairs else {}
    if "int8res" in paths:
        res["inserted_qdq_pairs_res"] = pairs_r
        res["exactness_res"] = exactness(paths["int8res"], paths["int8res_lowered"], heldout, args.threads)
        ref = session(int8, args.threads).run(None, heldout[0])
        res["diff_vs_int8"] = {k: max_abs_diff(ref, session(paths[k], args.threads).run(None, heldout[0]))
                               for k in ("int8res", "int8res_lowered")}
    feed = heldout[0]
    blocks = args.blocks if args.blocks else (4 if key == "resnet50" else 8)
    per_block = args.per_block if args.per_block else (2 if key == "resnet50" else 5)
    med = bench(paths, feed, args.threads, blocks, per_block)
    res["median_ms"] = med
    res["speedup_vs_fp32"] = {k: med["fp32"] / v for k, v in med.items()}
    if args.profile:
        res["profile"] = {}
        for k, p in paths.items():
            ms, shares = profile_ops(p, feed, args.threads, runs=2 if key == "resnet50" else 5)
            res["profile"][k] = {"kernel_ms": ms, "shares": shares[:12]}
    if key == "demo" and args.map:
        res["map"] = demo_map(paths, args.map, args.threads)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    return res


def print_result(r: dict) -> None:
    print(f"\n== {r['model']} {r['canvas']}x{r['canvas']}: {r['inserted_qdq_pairs']} Q/DQ pairs inserted "
          f"(prepare {r['prepare_s']} s, total {r['total_s']} s)")
    print(f"  {'variant':<14}{'median ms':>10}{'FP32/x':>8}   ORT kernels")
    for k in r["median_ms"]:
        kern = ", ".join(f"{op} {n}" for op, n in r["kernels"][k].items())
        print(f"  {k:<14}{r['median_ms'][k]:>10.1f}{r['speedup_vs_fp32'][k]:>8.2f}   {kern}")
    for name, ex in (("int8 vs int8_lowered", r["exactness"]), ("int8 vs int8_lowered_u8u8", r.get("exactness_u8u8")),
                     ("int8res vs int8res_lowered", r.get("exactness_res"))):
        for label, e in (ex or {}).items():
            print(f"  {name} ({label}): {e['identical']}/{e['n']} inputs bit-identical, "
                  f"max abs diff {e['max_abs_diff']:.4g}")
    if "inserted_qdq_pairs_res" in r:
        print(f"  int8res: ModelOpt with residual Adds quantized; lowering inserted {r['inserted_qdq_pairs_res']} pairs; "
              "max abs output diff vs int8: " + ", ".join(f"{k} {v:.4g}" for k, v in r["diff_vs_int8"].items()))
    if "profile" in r:
        for k in r["profile"]:
            p = r["profile"][k]
            top = ", ".join(f"{op} {s:.1f}%" for op, s in p["shares"][:8])
            print(f"  profile {k:<13} {p['kernel_ms']:.1f} ms/run: {top}")
    if "map" in r:
        print("  mAP@[.5:.95]: " + ", ".join(f"{k} {v:.4f}" for k, v in r["map"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,resnet50,spade", help="comma list of: " + ", ".join(MODELS))
    ap.add_argument("--fp32", action="append", default=[], metavar="NAME=PATH",
                    help="use this exported FP32 ONNX (manifest beside it) instead of exporting")
    ap.add_argument("--workdir", default=None, help="keep the ONNX files here (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib", type=int, default=None, help="calibration samples (default per model)")
    ap.add_argument("--blocks", type=int, default=None, help="interleaved blocks (default 8; 4 resnet50)")
    ap.add_argument("--per-block", type=int, default=None, help="runs per block (default 5; 2 resnet50)")
    ap.add_argument("--exact-n", type=int, default=2, help="held-out inputs for the exactness check")
    ap.add_argument("--profile", action="store_true", help="per-op-type kernel time shares")
    ap.add_argument("--map", type=int, default=0, help="demo detector mAP on this many held-out images")
    ap.add_argument("--residual-add", action=argparse.BooleanOptionalAction, default=True,
                    help="also ModelOpt with residual Adds quantized (+ lowering) where the model has them")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    for k in keys:
        if k not in MODELS:
            ap.error(f"--models: unknown {k!r} (choose from {', '.join(MODELS)})")
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op threads, CPU class {cpu_class()}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for k in keys:
            r = run_model(k, args, workdir)
            print_result(r)
            results.append(r)
            sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
