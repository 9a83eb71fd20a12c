"""``deploykit bench``: latency and throughput of an exported artifact, optionally against PyTorch.

Per batch size: model-only timing (``Session.run`` on an already preprocessed
feed) and, with ``end_to_end``, the whole runtime pipeline
(``Detector.predict`` on images, or the generator's feed + run + uint8 output on
label maps). With ``torch_ref`` the PyTorch reference is rebuilt from the
manifest and timed on the same inputs in the same process, in blocks
interleaved with the runtime's, so both sides see the same machine load.

Importing this module imports neither torch nor onnxruntime; torch is imported
only when ``torch_ref`` is set. See docs/bench.md.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import BadInput, expected_got

#: ``progress(label, done, total)``: ``done``/``total`` in iterations or seconds.
Progress = Callable[[str, float, float], None]

STAT_KEYS = ("min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms")


def parse_batches(text: str | None) -> list[int] | None:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (sorted, unique); None -> None (the artifact's smallest batch)."""
    if text is None:
        return None
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        values = []
    if not values or values[0] < 1:
        raise BadInput(expected_got("--batch", "comma-separated positive ints (e.g. 1,2,4)", repr(text)))
    return values


def summarize(seconds: Sequence[float], batch: int) -> dict[str, float]:
    """Latency statistics in ms and throughput in images/s for per-run times in seconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    mean = float(ms.mean())
    return {
        "iterations": int(ms.size),
        "min_ms": float(ms.min()),
        "mean_ms": mean,
        "median_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput_ips": batch * 1e3 / mean if mean > 0 else float("inf"),
    }


def batch_range(session: Any) -> tuple[int, int]:
    """Batch sizes one run of the session accepts: a static batch N gives (N, N), else the manifest range."""
    shapes = [spec.shape for spec in session.inputs if spec.shape]
    static = {s[0] for s in shapes if isinstance(s[0], int)}
    if static:
        n = min(static)
        return n, n
    section = (session.manifest or {}).get("batch") or {}
    low, high = section.get("min", 1), section.get("max")
    if not isinstance(low, int) or not isinstance(high, int) or not 1 <= low <= high:
        raise BadInput(expected_got(f"model {session.path} manifest batch", "{min, max} ints with 1 <= min <= max",
                                    repr(section)))
    return low, high


# ---------------------------------------------------------------------------
# Workloads: a callable per side and batch, all on the same inputs


class _Workload:
    """The runtime object plus input builders for one artifact kind."""

    def __init__(self, artifact: Path, threads: int | None, cuda_graph: bool = False):
        from ..runtime import Detector, Generator, load

        if cuda_graph and artifact.suffix.lower() not in (".plan", ".engine"):
            raise BadInput(expected_got("--cuda-graph", "a TensorRT engine (.plan or .engine)",
                                        f"{artifact.name}, run by ONNX Runtime"))
        session = load(artifact, threads=threads)  # .plan: the runtime's one-line TensorRT error
        manifest = session.manifest
        session.close()
        if not manifest:
            raise BadInput(expected_got(f"model {artifact}", "a deploykit manifest beside it (from deploykit export)",
                                        "no manifest"))
        self.manifest = manifest
        self.kind = manifest.get("kind")
        if self.kind == "detector":
            self.runner = Detector(artifact, threads=threads, cuda_graph=cuda_graph)
        elif self.kind == "generator":
            self.runner = Generator(artifact, threads=threads, cuda_graph=cuda_graph)
        else:
            raise BadInput(expected_got(f"model {artifact} manifest kind", "'detector' or 'generator'",
                                        repr(self.kind)))
        self.session = self.runner.session
        self.range = batch_range(self.session)
        self._torch_model = None

    def close(self) -> None:
        self.session.close()

    # -- inputs ----------------------------------------------------------
    def inputs(self, n: int) -> list[Any]:
        """``n`` deterministic inputs: held-out synthetic images, or label (+ instance) maps."""
        if self.kind == "detector":
            from ..data.splits import held_out_images

            images = held_out_images(n)  # mixed sizes: an image-list graph takes them as they are, in one call
            if self.runner.pixels_in and not self.runner.image_list:  # frames of one stream: one size per batch
                from PIL import Image

                h, w = images[0].shape[:2]
                images = [im if im.shape[:2] == (h, w) else np.asarray(Image.fromarray(im).resize((w, h)))
                          for im in images]
            return images
        from ..data.spade_scenes import make_sample

        h, w = self.runner.size
        samples = [make_sample(i, size=w, split="heldout") for i in range(n)]
        lo, hi = self.runner.label_range
        out = []
        for s in samples:
            label = s.label if s.label.shape == (h, w) else np.zeros((h, w), np.uint8)
            label = np.clip(label.astype(np.int64), lo, hi)  # valid for any label range
            inst = s.instance if s.instance.shape == (h, w) else np.zeros((h, w), np.int32)
            out.append((label, inst))
        return out

    def model_feed(self, items: list[Any]) -> dict[str, np.ndarray]:
        if self.kind == "detector":
            return self.runner.feed(items)[0]  # pixels for a pixels-in graph, tensors otherwise
        return self._generator_feed(items)

    def _generator_feed(self, items: list[Any]) -> dict[str, np.ndarray]:
        gen = self.runner
        feeds = [gen.feed(label, inst if gen.use_instance else None, seed=i) for i, (label, inst) in enumerate(items)]
        return {k: np.concatenate([f[k][:1] for f in feeds]) for k in feeds[0]}

    # -- timed calls -----------------------------------------------------
    def model_call(self, items: list[Any]) -> Callable[[], Any]:
        feed = self.model_feed(items)
        return lambda: self.session.run(feed)

    def end_to_end_call(self, items: list[Any]) -> Callable[[], Any]:
        if self.kind == "detector":
            det = self.runner
            return lambda: det.predict(list(items))

        from ..runtime.generator import to_uint8_image

        def run() -> list[np.ndarray]:
            out = self.session.run(self._generator_feed(items))["image"]
            if out.dtype == np.uint8:
                return [np.ascontiguousarray(x) for x in out]
            return [to_uint8_image(x) for x in out]

        return run

    def torch_call(self, items: list[Any], threads: int | None) -> Callable[[], Any]:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        if self._torch_model is None:
            from .. import models

            info = self.manifest.get("model") or {}
            if not info.get("name"):
                raise BadInput(expected_got("--torch", "a manifest with a model section (name, checkpoint, overrides)",
                                            repr(info)))
            self._torch_model = models.build(info["name"], info.get("checkpoint"), **(info.get("overrides") or {}))
            self._torch_model.eval()
        model = self._torch_model
        if self.kind == "detector":
            tensors = [torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0
                       for img in items]

            def run() -> Any:
                with torch.no_grad():
                    return model(tensors)

            return run
        from ..models.spade import preprocess_upstream

        use_instance = self.runner.use_instance
        x = torch.cat([preprocess_upstream(label, inst if use_instance else None, model.cfg) for label, inst in items])

        def run_g() -> Any:
            with torch.no_grad():
                return model(x)

        return run_g


# ---------------------------------------------------------------------------
# Timing


def _timed_block(fn: Callable[[], Any], *, iterations: int | None, seconds: float | None,
                 times: list[float], tick: Callable[[float], None] | None = None) -> None:
    """Run ``fn`` ``iterations`` times, or for ``seconds`` (at least once), appending per-run seconds."""
    start = time.perf_counter()
    n = 0
    while True:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        n += 1
        if tick:
            tick(1.0 if iterations is not None else times[-1])
        if iterations is not None:
            if n >= iterations:
                return
        elif time.perf_counter() - start >= (seconds or 0.0):
            return


def _warmup(fn: Callable[[], Any], seconds: float) -> None:
    _timed_block(fn, iterations=None if seconds > 0 else 1, seconds=seconds, times=[])


def run_bench(artifact: str | os.PathLike, *, batches: Sequence[int] | None = None, warmup: float = 1.0,
              duration: float | None = None, iterations: int | None = None, threads: int | None = None,
              torch_ref: bool = False, end_to_end: bool = False, cuda_graph: bool = False, blocks: int = 2,
              progress: Progress | None = None, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """Benchmark ``artifact``; returns (and fills ``result`` in place, so a Ctrl-C leaves the partial numbers).

    ``duration`` (seconds per side and batch) or ``iterations`` (runs per side and batch); default 5 s.
    With ``torch_ref`` each side's budget is split into ``blocks`` interleaved blocks. ``cuda_graph``
    (TensorRT engines only) replays the engine as a captured CUDA graph.
    Raises BadInput for a batch outside the artifact's batch range.
    """
    if duration is not None and iterations is not None:
        raise BadInput(expected_got("--duration/--iterations", "at most one of them", "both"))
    if iterations is not None and iterations < 1:
        raise BadInput(expected_got("--iterations", "a positive int", iterations))
    if duration is not None and duration <= 0:
        raise BadInput(expected_got("--duration", "a positive number of seconds", duration))
    if warmup < 0:
        raise BadInput(expected_got("--warmup", "seconds >= 0", warmup))
    if threads is not None and threads < 1:
        raise BadInput(expected_got("--threads", "a positive int", threads))
    if iterations is None and duration is None:
        duration = 5.0
    artifact = Path(artifact)
    result = {} if result is None else result
    work = _Workload(artifact, threads, cuda_graph)
    try:
        low, high = work.range
        batches = list(batches) if batches else [low]
        bad = [b for b in batches if not low <= b <= high]
        if bad:
            raise BadInput(expected_got("--batch",
                                        f"batch sizes in {low}..{high} (the artifact's batch range)",
                                        ",".join(map(str, bad))))
        providers = getattr(work.session, "providers", [])
        result.update({
            "artifact": str(artifact), "kind": work.kind, "model": (work.manifest.get("model") or {}).get("name"),
            "backend": "tensorrt" if artifact.suffix.lower() in (".plan", ".engine") else "onnxruntime",
            "providers": list(providers), "threads": threads, "warmup_s": warmup,
            "duration_s": duration, "iterations": iterations, "batch_range": [low, high],
            "end_to_end": end_to_end, "torch": torch_ref, "cuda_graph": cuda_graph, "interrupted": False,
            "results": [],
        })
        n_blocks = max(1, blocks if torch_ref else 1)
        inputs = work.inputs(max(batches))
        for b in batches:
            items = inputs[:b]
            sides: list[tuple[str, Callable[[], Any]]] = [("model", work.model_call(items))]
            if end_to_end:
                sides.append(("end_to_end", work.end_to_end_call(items)))
            if torch_ref:
                sides.append(("torch", work.torch_call(items, threads)))
            row: dict[str, Any] = {"batch": b}
            result["results"].append(row)
            times: dict[str, list[float]] = {name: [] for name, _ in sides}
            try:
                for name, fn in sides:
                    if progress:
                        progress(f"batch {b} {name} warm-up", 0, 1)
                    _warmup(fn, warmup)
                for k in range(n_blocks):
                    for name, fn in sides:
                        if iterations is not None:
                            per = math.ceil(iterations / n_blocks) if k < n_blocks - 1 else \
                                iterations - math.ceil(iterations / n_blocks) * (n_blocks - 1)
                            if per <= 0:
                                continue
                            budget, total = dict(iterations=per, seconds=None), float(iterations)
                        else:
                            budget, total = dict(iterations=None, seconds=duration / n_blocks), float(duration)
                        label = f"batch {b} {name}"

                        def tick(step: float, label: str = label, name: str = name, total: float = total) -> None:
                            if progress:
                                done = len(times[name]) if iterations is not None else sum(times[name])
                                progress(label, min(done, total), total)

                        if torch_ref:  # let ONNX Runtime's spinning worker threads settle between sides
                            time.sleep(0.1)
                        _timed_block(fn, times=times[name], tick=tick, **budget)
            finally:  # also on Ctrl-C: keep whatever was measured
                for name in times:
                    if times[name]:
                        row[name] = {**summarize(times[name], b),
                                     "samples_ms": [round(t * 1e3, 4) for t in times[name]]}
                if len(row) == 1:  # nothing measured for this batch (interrupted in its warm-up)
                    result["results"].remove(row)
                _speedup(row)
    except KeyboardInterrupt:
        result["interrupted"] = True
    finally:
        work.close()
    return result


def _speedup(row: dict[str, Any]) -> None:
    if "torch" not in row:
        return
    vs = "end_to_end" if "end_to_end" in row else "model"
    if vs in row:
        row["speedup"] = row["torch"]["median_ms"] / row[vs]["median_ms"]
        row["speedup_vs"] = vs


# ---------------------------------------------------------------------------
# Presentation


def report_target(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """``--report PATH`` -> (HTML file, directory to also hold the bench JSON, or None).

    ``*.html``/``*.htm``: that file (its directory must exist), a page for this bench alone.
    Anything else is a run directory (created if its parent exists): the bench JSON is written
    there as ``bench_<artifact stem>.json`` and ``report.html`` renders everything the directory
    holds (``deploykit report`` inputs). Checked before anything is timed; BadInput otherwise.
    """
    p = Path(path)
    if p.suffix.lower() in (".html", ".htm"):
        if p.is_dir():
            raise BadInput(expected_got(f"--report {p}", "an .html file or a directory", "a directory named .html"))
        if not p.parent.is_dir():
            raise BadInput(expected_got(f"--report {p}", "an .html file in an existing directory",
                                        f"no directory {p.parent}"))
        return p, None
    if p.exists() and not p.is_dir():
        raise BadInput(expected_got(f"--report {p}", "a directory or an .html file", "an existing file"))
    if not p.exists() and not p.parent.is_dir():
        raise BadInput(expected_got(f"--report {p}", "a directory whose parent exists, or an .html file",
                                    f"no directory {p.parent}"))
    return p / "report.html", p


def write_bench_report(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the HTML report (``deploykit.compare.report``) for a bench ``result`` to ``--report PATH``."""
    from ..fileio import write_json_atomic
    from .report import write_report

    html, run_dir = report_target(path)
    if run_dir is None:
        return write_report(html.parent, html, bench=result, discover=False)
    run_dir.mkdir(exist_ok=True)
    write_json_atomic(run_dir / f"bench_{Path(result.get('artifact', 'model')).stem}.json", result)
    return write_report(run_dir, html)


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """Rows for the terminal table: batch, side, the latency stats, throughput, speedup."""
    rows = []
    for row in result.get("results", []):
        for side in ("model", "end_to_end", "torch"):
            s = row.get(side)
            if not s:
                continue
            speed = f"{row['speedup']:.2f}x" if side == "torch" and "speedup" in row else ""
            rows.append([str(row["batch"]), side.replace("_", "-"), str(s["iterations"]),
                         *(f"{s[k]:.2f}" for k in STAT_KEYS), f"{s['throughput_ips']:.1f}", speed])
    return rows


TABLE_HEADER = ["batch", "side", "runs", "min ms", "mean ms", "median ms", "p90 ms", "p95 ms", "p99 ms",
                "images/s", "speedup"]
