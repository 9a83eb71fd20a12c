#!/usr/bin/env python
"""Benchmark: batches of images of different sizes, in one graph call and on a real Triton.

Same process, same machine, 2 threads (the ``lscpu`` model printed with the results):

1. Local, for fasterrcnn_demo (bundled checkpoint) and fasterrcnn_resnet50_fpn (default-configured,
   random weights with calibrated BatchNorm statistics), both exported ``--input image-list``: lists
   of 8 held-out photos of mixed sizes (200..2000 px, aspect 1:3..3:1), interleaved per list:
   ``Detector.predict(list)`` (one call, torchvision's list semantics: all padded to the largest),
   ``predict(list, group="canvas")`` (one call per group of images sharing their own padded size) and
   one ``predict(image)`` per image. Throughput (images/s, median over lists) and ratios, and the
   share of the network's input that is padding (zeros beyond each resized image) for each.
2. Served (the demo): Triton's Python backend on the image-list graph, 16 concurrent clients (half
   HTTP, half gRPC) sending photos of mixed sizes, alternating passes on two model configurations
   of the same repository: ``batched`` (dynamic batcher up to 8, ragged image input: requests of
   different sizes join one execution) and ``single`` (max_batch_size 1: one request per execution,
   what a server without it does). Every answer is matched against the in-process answer (label,
   IoU >= 0.99, |Δscore| <= 1e-3). Throughput ratio (median over passes), p50/p99, executed batches.

    python scripts/bench_batches.py --json bench_batches.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from deploykit.compare.reference import calibrate_batchnorm
from deploykit.data.splits import held_out_photos
from deploykit.export.detector import export_detector
from deploykit.metrics import match_detections
from deploykit.models import build, resolve_checkpoint
from deploykit.runtime import Detector
from deploykit.runtime.preprocess import padded_batch_size

MODELS = ["fasterrcnn_demo", "fasterrcnn_resnet50_fpn"]


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")


def lists_of(n_lists: int, size: int = 8) -> list[list[np.ndarray]]:
    photos = held_out_photos(24)
    rng = np.random.default_rng(0)
    return [[photos[i] for i in rng.choice(24, size=size, replace=False)] for _ in range(n_lists)]


def padding_share(det: Detector, images: list[np.ndarray], mode: str) -> float:
    """Padded / total pixels of the network input over the list for a calling mode."""
    pre = det.preprocessing
    resized = [pre.resized_size(*im.shape[:2]) for im in images]
    if mode == "list":
        h, w = padded_batch_size(pre, resized)
        total = h * w * len(images)
    else:  # each image padded only to its own multiple of 32 (alone, or grouped with its equals)
        total = sum(np.prod(padded_batch_size(pre, [r])) for r in resized)
    return 1.0 - sum(rh * rw for rh, rw in resized) / total


def local(name: str, scratch: Path, threads: int, n_lists: int) -> dict:
    ckpt = resolve_checkpoint(name, None)
    model = build(name, ckpt)
    if ckpt is None:
        calibrate_batchnorm(model, 512, torch.Generator().manual_seed(0))
    path = scratch / f"{name}_list.onnx"
    export_detector(model, path, input="image-list", dynamic_batch=8)
    rows = []
    with Detector(path, threads=threads) as det:
        sides = {"list": lambda xs: det.predict(xs), "grouped": lambda xs: det.predict(xs, group="canvas"),
                 "one_by_one": lambda xs: [det.predict(x) for x in xs]}
        for k, images in enumerate(lists_of(n_lists)):
            times = {}
            for side, fn in sides.items():
                if k == 0:
                    fn(images)  # warm-up
                t = time.perf_counter()
                fn(images)
                times[side] = time.perf_counter() - t
                time.sleep(0.2)
            groups = len({padded_batch_size(det.preprocessing, [det.preprocessing.resized_size(*im.shape[:2])])
                          for im in images})
            rows.append({"per_s": {s: len(images) / t for s, t in times.items()}, "canvas_groups": groups,
                         "padding": {m: padding_share(det, images, m) for m in ("list", "own")}})
            print(f"{name} list {k}: " + ", ".join(f"{s} {r:.2f}/s" for s, r in rows[-1]["per_s"].items())
                  + f"; padding list {100 * rows[-1]['padding']['list']:.0f}% vs own "
                  f"{100 * rows[-1]['padding']['own']:.0f}%, {groups} canvas groups", flush=True)
    med = {s: statistics.median(r["per_s"][s] for r in rows) for s in sides}
    return {"model": name, "lists": n_lists, "images_per_list": 8, "per_s_median": med,
            "ratio_list_vs_one_by_one": med["list"] / med["one_by_one"],
            "ratio_grouped_vs_one_by_one": med["grouped"] / med["one_by_one"],
            "padding_share_mean": {m: float(np.mean([r["padding"][m] for r in rows])) for m in ("list", "own")},
            "canvas_groups_mean": float(np.mean([r["canvas_groups"] for r in rows])), "per_list": rows}


def served(scratch: Path, threads: int, clients: int, requests: int, passes: int) -> dict:
    from deploykit.serving import Client, RepositoryOptions, TritonServer, write_repository
    from deploykit.serving.server import free_port

    path = scratch / "fasterrcnn_demo_list.onnx"
    repo = scratch / "repository"
    write_repository([path], repo, names=["batched"], options=RepositoryOptions(backend="python", threads=threads,
                                                                              max_batch_size=8))
    write_repository([path], repo, names=["single"], options=RepositoryOptions(backend="python", threads=threads,
                                                                             max_batch_size=1))
    photos = held_out_photos(24)
    images = [photos[i % 24] for i in range(clients * requests)]
    with Detector(path, threads=threads) as det:
        want = [det.predict(im) for im in photos]
    results: dict[str, list] = {"batched": [], "single": []}
    latencies: dict[str, list[float]] = {"batched": [], "single": []}
    bad = 0
    server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with server:
        for p in range(passes + 1):  # pass 0 warms both up
            for model in ("batched", "single"):
                lat: list[float] = []
                got: dict[int, object] = {}

                def worker(t: int) -> None:
                    url = server.http_url if t % 2 else server.grpc_url
                    with Client(url, model, timeout=300) as client:
                        for i in range(t, len(images), clients):
                            t1 = time.perf_counter()
                            got[i] = client.predict(images[i])
                            lat.append(1000 * (time.perf_counter() - t1))

                threads_ = [threading.Thread(target=worker, args=(t,)) for t in range(clients)]
                t0 = time.perf_counter()
                for th in threads_:
                    th.start()
                for th in threads_:
                    th.join()
                elapsed = time.perf_counter() - t0
                for i, g in got.items():
                    w = want[i % 24]
                    bad += not match_detections((w.boxes, w.scores, w.labels), (g.boxes, g.scores, g.labels)).ok
                if p:
                    results[model].append(len(images) / elapsed)
                    latencies[model] += lat
                print(f"pass {p} {model}: {len(images) / elapsed:.2f}/s", flush=True)
        stats = {}
        for model in ("batched", "single"):
            with Client(server.http_url, model) as client:
                stats[model] = client.statistics()
    ratio = statistics.median(b / s for b, s in zip(results["batched"], results["single"]))
    return {"clients": clients, "requests": len(images), "passes": passes, "mismatches": bad,
            "per_s_median": {m: statistics.median(v) for m, v in results.items()},
            "throughput_ratio_batched_vs_single": ratio,
            "latency_ms": {m: {"p50": float(np.percentile(v, 50)), "p99": float(np.percentile(v, 99))}
                           for m, v in latencies.items()},
            "executed_batches": {m: s["batches"] for m, s in stats.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lists", type=int, default=4, help="lists of 8 photos per model (local part)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=6, help="requests per client per pass (served part)")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--no-serve", action="store_true", help="skip the Triton part")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"cpu": cpu_model(), "threads": args.threads, "local": []}
    with tempfile.TemporaryDirectory() as d:
        scratch = Path(d)
        for name in args.models.split(","):
            result["local"].append(local(name, scratch, args.threads, args.lists))
        if not args.no_serve:
            if "fasterrcnn_demo" not in args.models.split(","):
                local("fasterrcnn_demo", scratch, args.threads, 1)
            result["served"] = served(scratch, args.threads, args.clients, args.requests, args.passes)
    print(json.dumps({k: v for k, v in result.items() if k != "local"} | {
        "local": [{k: v for k, v in r.items() if k != "per_list"} for r in result["local"]]}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
