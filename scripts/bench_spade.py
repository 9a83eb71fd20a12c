"""Benchmark: exported SPADE on ONNX Runtime vs the PyTorch generator in eager mode, same process.

    python scripts/bench_spade.py [--config coco] [--threads 2] [--repeats 5] [--json out.json]

Both sides use the same number of threads, the same (seeded, random, batch-norm
calibrated) weights and the same scene; runs alternate (eager, ORT, eager, ...)
so that load from other processes hits both alike, and the ratio of medians is
the result (these machines are shared: absolute times are noisy, the ratio much
less). PyTorch gets the upstream input (a float one-hot + edge map, built before
timing starts); ONNX Runtime gets the integer maps and builds everything inside
the graph. The report also gives the bytes a caller sends per image and an ONNX
Runtime profile: time by operator type and the slowest nodes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def scene(cfg, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A blocky layout with instance boundaries and a dontcare patch."""
    rng = np.random.default_rng(seed)
    h, w = cfg.image_size
    lo, hi = cfg.label_range
    lab = np.full((1, h, w), lo, np.int64)
    inst = np.zeros((1, h, w), np.int32)
    for k in range(20):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        dy, dx = rng.integers(8, h // 2), rng.integers(8, w // 2)
        c = int(rng.integers(lo, hi + 1))
        lab[0, y:y + dy, x:x + dx] = c
        inst[0, y:y + dy, x:x + dx] = 1000 * c + k
    if cfg.contain_dontcare_label:
        lab[0, :12, :20] = 255
    return lab, inst


def conv_macs(onnx_path: Path) -> float:
    """Multiply-accumulates of all Conv/Gemm nodes (GMAC), from the graph's inferred shapes."""
    import onnx
    from onnx import shape_inference

    m = shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(m.graph.value_info) + list(m.graph.output)}
    inits = {t.name: list(t.dims) for t in m.graph.initializer}
    total = 0
    for n in m.graph.node:
        if n.op_type == "Conv":
            w = inits.get(n.input[1])
            out = shapes.get(n.output[0])
            if w and out:
                total += int(np.prod(out)) * int(np.prod(w[1:]))
    return total / 1e9


def upstream_macs(g, seg) -> float:
    """MACs of the upstream generator's convolutions on ``seg`` (GMAC), counted with hooks."""
    import torch

    total = [0]

    def hook(mod, inp, out):
        w = mod.weight if hasattr(mod, "weight") and not hasattr(mod, "weight_orig") else mod.weight_orig
        total[0] += out.numel() * (w.numel() // w.shape[0])

    hs = [m.register_forward_hook(hook) for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        g(seg)
    for h in hs:
        h.remove()
    return total[0] / 1e9


def profile_ort(path: Path, feed: dict, threads: int, runs: int = 2, top: int = 12) -> dict:
    """Run ONNX Runtime with profiling (same options as deploykit's Session) and summarise."""
    from deploykit.runtime.profile import kernel_times

    by_op: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    nodes: collections.Counter = collections.Counter()
    shapes = {}
    for t in kernel_times(path, feed, threads, runs):
        by_op[t.op] += t.us
        count[t.op] += 1
        nodes[(t.node, t.op)] += t.us
        shapes[t.node] = t.output
    total = sum(by_op.values())
    return {
        "runs": runs,
        "kernel_ms_per_run": round(total / 1000 / runs, 1),
        "by_op": [{"op": op, "ms": round(t / 1000 / runs, 1), "share": round(t / total, 3), "nodes": count[op] // runs}
                  for op, t in by_op.most_common()],
        "slowest_nodes": [{"node": n, "op": op, "ms": round(t / 1000 / runs, 1), "output": shapes.get(n)}
                          for (n, op), t in nodes.most_common(top)],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="coco", help="coco, ade20k, cityscapes or demo (default coco)")
    p.add_argument("--threads", type=int, default=2, help="threads for both sides (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per side (default 5)")
    p.add_argument("--onnx", type=Path, help="reuse this export (made by this script with --keep)")
    p.add_argument("--keep", type=Path, help="keep the export at this path")
    p.add_argument("--no-profile", action="store_true", help="skip the ONNX Runtime profile")
    p.add_argument("--json", type=Path, help="also write the report here")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from deploykit.export.spade import export_spade
    from deploykit.models.spade import build_spade, calibrate_random_weights, preprocess_upstream
    from deploykit.runtime.backends import load

    torch.manual_seed(0)
    g = build_spade(a.config)
    cfg = g.cfg
    lab, inst = scene(cfg)
    seg = preprocess_upstream(lab, inst if cfg.use_instance else None, cfg)
    calibrate_random_weights(g, seg)

    tmp = tempfile.TemporaryDirectory()
    path = a.onnx or a.keep or Path(tmp.name) / f"spade_{a.config}.onnx"
    export_s = None
    if a.onnx is None:
        t = time.perf_counter()
        export_spade(f"spade_{a.config}", path, module=g)
        export_s = time.perf_counter() - t
    sess = load(path, threads=a.threads)
    dtypes = {s.name: s.dtype for s in sess.inputs}
    feed = {"label_map": lab.astype(dtypes["label_map"])}
    if cfg.use_instance:
        feed["instance_map"] = inst
    # one untimed run each (allocations, oneDNN primitive creation), and a parity check
    with torch.no_grad():
        ref = g(seg).numpy()
    got = sess.run(feed)["image"]
    err = float(np.abs(got - ref).max())

    t_eager, t_ort = [], []
    for _ in range(a.repeats):
        t = time.perf_counter()
        with torch.no_grad():
            g(seg)
        t_eager.append(time.perf_counter() - t)
        t = time.perf_counter()
        sess.run(feed)
        t_ort.append(time.perf_counter() - t)
    me, mo = statistics.median(t_eager), statistics.median(t_ort)
    h, w = cfg.image_size
    label_bytes = sum(v.nbytes for v in feed.values())
    onehot_bytes = seg.numel() * 4
    report = {
        "config": f"spade_{a.config}",
        "size_hw": [h, w],
        "threads": a.threads,
        "repeats": a.repeats,
        "torch": torch.__version__,
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        "export_seconds": None if export_s is None else round(export_s, 1),
        "max_abs_diff_vs_eager": err,
        "eager_s": {"median": round(me, 3), "min": round(min(t_eager), 3), "all": [round(x, 3) for x in t_eager]},
        "onnxruntime_s": {"median": round(mo, 3), "min": round(min(t_ort), 3), "all": [round(x, 3) for x in t_ort]},
        "speedup_median": round(me / mo, 2),
        "speedup_min": round(min(t_eager) / min(t_ort), 2),
        "bytes_per_image": {
            "label_and_instance_maps": label_bytes,
            "upstream_one_hot_float32": onehot_bytes,
            "ratio": round(onehot_bytes / label_bytes, 1),
            "inputs": {k: f"{v.dtype} {list(v.shape)}" for k, v in feed.items()},
        },
        "gmac": {"upstream_convs": round(upstream_macs(g, seg), 1), "exported_convs": round(conv_macs(path), 1)},
    }
    if not a.no_profile:
        report["onnxruntime_profile"] = profile_ort(path, feed, a.threads)
    text = json.dumps(report, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
