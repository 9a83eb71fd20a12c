#!/usr/bin/env python
"""Benchmark: the demo detector on a real Triton server under concurrent load vs in-process Detector.

Serves the artifact through Triton's Python backend (the tritonserver bundled with nvidia-pytriton,
deploykit's runtime inside it, on this CPU), then alternates, round after round, an in-process pass
(``Detector.predict`` on each image, one after another) and a load pass (N concurrent clients, half
HTTP, half gRPC, each sending its share of the same images, one request at a time) so both see the
same machine load. Every server answer is checked against the in-process answer (exact). Reports
per-request latency percentiles, throughput per pass, their ratio (median over rounds), and
Triton's executed batch sizes.

    python scripts/bench_serving.py --clients 16 --requests 50 --json bench_serving.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from deploykit.data.splits import held_out_images
from deploykit.runtime import Detector
from deploykit.serving import Client, RepositoryOptions, TritonServer, write_repository
from deploykit.serving.server import free_port


def export_demo(out: Path) -> Path:
    from deploykit import models
    from deploykit.export.detector import export_detector, model_info

    ckpt = models.resolve_checkpoint("fasterrcnn_demo", None)
    kwargs = {"min_size": 320, "max_size": 320}
    path = out / "fasterrcnn_demo.onnx"
    export_detector(models.build("fasterrcnn_demo", ckpt, **kwargs), path, input_size=(320, 320),
                    model_info=model_info("fasterrcnn_demo", ckpt, kwargs))
    return path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def same(a, b) -> bool:
    return (np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
            and np.array_equal(a.labels, b.labels))


def load_pass(server: TritonServer, images: list, want: list, clients: int) -> tuple[float, list[float], int]:
    """``clients`` threads share ``images`` round-robin; returns (seconds, request latencies in ms, mismatches)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    bad = [0] * clients
    errors: list[BaseException] = []
    start_line = threading.Barrier(clients + 1)

    def worker(t: int) -> None:
        try:
            with Client(server.http_url if t % 2 else server.grpc_url, "det", timeout=300) as client:
                client.statistics()  # connected before the clock starts
                start_line.wait()
                for i in range(t, len(images), clients):
                    t0 = time.perf_counter()
                    got = client.predict(images[i])
                    latencies[t].append(1000 * (time.perf_counter() - t0))
                    bad[t] += not same(got, want[i])
        except BaseException as e:  # noqa: BLE001 (re-raised below)
            errors.append(e)
            start_line.abort()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return seconds, [x for row in latencies for x in row], sum(bad)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, default=None, help="detector .onnx (default: export fasterrcnn_demo)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--requests", type=int, default=50, help="requests per client in all (default 50)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved in-process / load rounds (default 5)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime threads, both sides")
    ap.add_argument("--instances", type=int, default=1, help="Triton model instances (default 1)")
    ap.add_argument("--max-batch-size", type=int, default=8, help="dynamic batcher's largest batch (default 8)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    artifact = args.artifact or export_demo(work)
    n = args.clients * args.requests
    print(f"{n} distinct held-out images ...", file=sys.stderr)
    images = held_out_images(n)
    with Detector(artifact, threads=args.threads) as det:
        want = [det.predict(image) for image in images[: 2 * args.clients]]  # warm-up; all answers below
        repo = work / "repository"
        write_repository([artifact], repo, names=["det"], options=RepositoryOptions(
            backend="python", threads=args.threads, instances=args.instances, max_batch_size=args.max_batch_size))
        server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        load_before = os.getloadavg()
        rounds = []
        server_ms: list[float] = []
        local_ms: list[float] = []
        mismatches = 0
        with server:
            chunks = np.array_split(np.arange(n), args.rounds)
            load_pass(server, images[: 2 * args.clients], want, args.clients)  # warm the server too
            want = [None] * n
            for r, chunk in enumerate(chunks):
                batch = [images[i] for i in chunk]
                t0 = time.perf_counter()
                for i in chunk:
                    t1 = time.perf_counter()
                    want[i] = det.predict(images[i])
                    local_ms.append(1000 * (time.perf_counter() - t1))
                local_s = time.perf_counter() - t0
                served_s, lat, bad = load_pass(server, batch, [want[i] for i in chunk], args.clients)
                server_ms += lat
                mismatches += bad
                rounds.append({"images": len(chunk), "in_process_per_s": len(chunk) / local_s,
                               "server_per_s": len(chunk) / served_s})
                print(f"round {r + 1}/{args.rounds}: in-process {rounds[-1]['in_process_per_s']:.1f}/s, "
                      f"Triton {rounds[-1]['server_per_s']:.1f}/s", file=sys.stderr)
            with Client(server.http_url, "det") as client:
                stats = client.statistics()
    load_after = os.getloadavg()

    def pct(xs, q):
        return float(np.percentile(xs, q))

    ratio = statistics.median(r["server_per_s"] / r["in_process_per_s"] for r in rounds)
    result = {
        "cpu": cpu_name(), "cores": os.cpu_count(),
        "load_average": {"before": load_before, "after": load_after},
        "config": {"clients": args.clients, "requests_per_client": args.requests, "rounds": args.rounds,
                   "threads": args.threads, "instances": args.instances, "max_batch_size": args.max_batch_size,
                   "server": server.kind, "artifact": str(artifact)},
        "requests": n, "mismatches": mismatches,
        "in_process": {"per_s_median": statistics.median(r["in_process_per_s"] for r in rounds),
                       "latency_ms": {"p50": pct(local_ms, 50), "p99": pct(local_ms, 99)}},
        "triton": {"per_s_median": statistics.median(r["server_per_s"] for r in rounds),
                   "latency_ms": {"p50": pct(server_ms, 50), "p90": pct(server_ms, 90), "p99": pct(server_ms, 99)},
                   "executed_batches": stats["batches"], "executions": stats["execution_count"],
                   "inferences": stats["inference_count"]},
        "throughput_ratio_median": ratio, "rounds": rounds,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
