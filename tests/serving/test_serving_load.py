"""Triton under load and faults, bounded in count and time, on loopback: 16 concurrent clients with distinct
images of mixed sizes get the single-process answers and Triton batches requests of different sizes into
one graph call (an image-list graph); SIGTERM lets requests in flight finish; SIGKILL during load gives
every client a clear error within its timeout, and a restarted server serves again; `deploykit serve`
stops cleanly on SIGINT. Speed is measured by scripts/bench_serving.py."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deploykit.data.splits import held_out_images
from deploykit.runtime import Detector
from deploykit.serving import Client, ServerError
from deploykit.serving.repository import RepositoryOptions, write_repository
from deploykit.serving.server import free_port, group_members

CLIENTS, REQUESTS = 16, 12  # scripts/bench_serving.py runs 16 x 50 and measures


def variant(image: np.ndarray, k: int) -> np.ndarray:
    """Distinct valid images from one: the 8 rotations/reflections, each also with a 3-pixel border cut."""
    out = np.rot90(image, k % 4)
    out = out[:, ::-1] if (k // 4) % 2 else out
    if (k // 8) % 2:
        out = out[3:-3, 3:-3]
    return np.ascontiguousarray(out)


@pytest.fixture(scope="module")
def repo(demo_detector_onnx, demo_detector_list_onnx, tmp_path_factory):
    """det: a fixed-canvas graph; list: an image-list graph, whose one call takes images of different sizes."""
    path = tmp_path_factory.mktemp("repository")
    write_repository([demo_detector_onnx, demo_detector_list_onnx], path, names=["det", "list"],
                     options=RepositoryOptions(backend="python", threads=1))
    return path


@pytest.fixture(scope="module")
def inputs():
    """CLIENTS x REQUESTS distinct images (held-out images x 16 variants)."""
    base = held_out_images(CLIENTS * REQUESTS // 16)
    n = len(base)
    return [[variant(base[(t * REQUESTS + i) % n], (t * REQUESTS + i) // n) for i in range(REQUESTS)]
            for t in range(CLIENTS)]


@pytest.fixture(scope="module")
def want(demo_detector_onnx, inputs):
    with Detector(demo_detector_onnx, threads=1) as det:
        return [[det.predict(x) for x in row] for row in inputs]


def urls(server, t):
    return server.http_url if t % 2 else server.grpc_url


@pytest.fixture(scope="module")
def want_list(demo_detector_list_onnx, inputs):
    with Detector(demo_detector_list_onnx, threads=1) as det:
        return [[det.predict(x) for x in row] for row in inputs]


@pytest.mark.slow
def test_concurrent_clients_with_mixed_sizes_are_batched_into_one_call(triton, repo, inputs, want_list,
                                                                       run_in_threads):
    """Requests of different image sizes join one execution (the image input allows ragged batches) and the
    image-list graph runs those that share their own padded size as one call, so every answer is the image's
    alone, whoever else was in the batch: matched both ways (label, IoU >= 0.99, |Δscore| <= 1e-3; a batched
    convolution may round differently) against the in-process answer."""
    from deploykit.metrics import match_detections

    server = triton(repo)
    got = [[None] * REQUESTS for _ in range(CLIENTS)]
    sizes = {x.shape[:2] for row in inputs for x in row}
    assert len(sizes) >= 4, sizes  # mixed sizes on the wire

    def worker(t: int) -> None:
        with Client(urls(server, t), "list", timeout=120) as client:
            for i, image in enumerate(inputs[t]):
                got[t][i] = client.predict(image)

    start = time.monotonic()
    run_in_threads(worker, CLIENTS)  # re-raises any client's error: zero errors allowed
    assert time.monotonic() - start < 600
    matched = 0
    for t in range(CLIENTS):
        for i in range(REQUESTS):
            w, g = want_list[t][i], got[t][i]
            m = match_detections((w.boxes, w.scores, w.labels), (g.boxes, g.scores, g.labels))
            assert m.ok, (t, i, m)
            matched += m.matched
    assert matched >= CLIENTS * REQUESTS
    with Client(server.http_url, "list") as client:
        stats = client.statistics()
    assert stats["inference_count"] >= CLIENTS * REQUESTS
    batched = {size: n for size, n in stats["batches"].items() if n and size > 1}
    assert batched, f"Triton never executed a batch larger than 1: {stats}"
    assert stats["execution_count"] < stats["inference_count"]


def test_sigterm_lets_requests_in_flight_finish(triton, repo, inputs, want, same_detections):
    server = triton(repo)
    results: dict[int, object] = {}
    go = threading.Barrier(9)

    def worker(t: int) -> None:
        with Client(urls(server, t), "det", timeout=60) as client:
            client.statistics()  # connected before the barrier
            go.wait()
            try:
                results[t] = client.predict(inputs[t][0])
            except Exception as e:  # noqa: BLE001 (checked below)
                results[t] = e
        # leaving the with-block closes the connection, as a finished client does

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    go.wait()
    time.sleep(0.3)  # 8 requests sent; one instance runs them one after another (~0.1 s each)
    server.terminate()  # SIGTERM while they are in flight
    for thread in threads:
        thread.join(timeout=60)
    assert server.stop(timeout=60) == 0  # Triton finished what it had accepted, then exited cleanly
    for t in range(8):
        assert not isinstance(results[t], Exception), results[t]
        same_detections(results[t], want[t][0], f"request {t}")
    for t in (0, 1):
        with pytest.raises(ServerError, match="Triton server"):
            Client(urls(server, t), "det", timeout=10)


def _python_envs() -> set[Path]:
    """The folders Triton's Python backend makes at start (hard-coded /tmp/python_env_XXXXXX, removed at a
    clean exit; a killed server leaves its own, empty)."""
    return set(Path("/tmp").glob("python_env_*"))


def test_sigkill_during_load_fails_clients_fast_and_a_restart_serves(triton, repo, inputs, want, same_detections):
    envs_before = _python_envs()
    server = triton(repo)
    ports = {"http_port": server.http_port, "grpc_port": server.grpc_port, "metrics_port": server.metrics_port}
    outcome: dict[int, tuple] = {}
    killed_at = []

    def worker(t: int) -> None:
        done = 0
        try:
            with Client(urls(server, t), "det", timeout=10) as client:
                for i in range(REQUESTS * 4):  # bounded: the kill comes long before
                    client.predict(inputs[t][i % REQUESTS])
                    done += 1
            outcome[t] = ("finished", done, None)
        except ServerError as e:
            outcome[t] = ("error", done, (time.monotonic(), str(e)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    pgid, prefix = server.process.pid, server._shm_prefix
    server.kill()
    killed_at.append(time.monotonic())
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a client hung after the server was killed"
    for t, (how, done, error) in outcome.items():
        assert how == "error", (t, how, done)
        when, message = error
        assert when - killed_at[0] < 10 + 2, (t, when - killed_at[0])  # within the client's timeout
        assert "Triton server" in message and "\n" not in message, message
    assert sum(done for _, done, _ in outcome.values()) > 0  # the kill came during load
    server.stop()  # removes what the crash left: the Python stubs (its process group) and shared memory
    assert not group_members(pgid) and not list(Path("/dev/shm").glob(f"{prefix}*"))
    for folder in _python_envs() - envs_before:  # Triton's own leftover of the kill (not deploykit's to remove:
        if not any(folder.iterdir()):            # another server's may be in use); the test's kill, its cleanup
            folder.rmdir()

    restarted = triton(repo, ports=ports)
    for t in range(2):
        with Client(urls(restarted, t), "det", timeout=30) as client:
            same_detections(client.predict(inputs[t][0]), want[t][0], "after the restart")


def test_cli_serve_artifact_stops_cleanly_on_sigint(demo_detector_onnx, triton, inputs, want, same_detections):
    """`deploykit serve det.onnx` as a user runs it: ready line and endpoints, answers, Ctrl-C, exit 0."""
    ports = [free_port() for _ in range(3)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "deploykit.cli", "serve", str(demo_detector_onnx), "--threads", "1",
                             "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
                             "--metrics-port", str(ports[2])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    seen = []
    try:
        deadline = time.monotonic() + 180
        while not any("Ctrl-C" in ln for ln in seen):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        text = "".join(seen)
        assert f"HTTP     http://127.0.0.1:{ports[0]}" in text and f"gRPC     grpc://127.0.0.1:{ports[1]}" in text
        with Client(f"http://127.0.0.1:{ports[0]}", "det") as client:
            same_detections(client.predict(inputs[0][0]), want[0][0], "deploykit serve")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.2)
    text = "".join(seen) + "".join(iter(lambda: lines.get_nowait() if not lines.empty() else "", ""))
    assert "stopping (SIGINT)" in text and "stopped (tritonserver exit code 0)" in text, text
