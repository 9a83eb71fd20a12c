"""Where ONNX Runtime's time goes: per-node kernel times from its profiler (used by the benchmark scripts)."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class KernelTime:
    """One kernel execution: the node's name, its op type, microseconds, and its output types/shapes."""

    node: str
    op: str
    us: float
    output: Any = None


def kernel_times(path: str | Path, feed: Mapping[str, np.ndarray], threads: int, runs: int = 3) -> list[KernelTime]:
    """Kernel executions of ``runs`` timed runs of the graph at ``path`` on ``feed`` (CPU, all graph
    optimisations, ``threads`` intra-op threads, like deploykit's Session); one warm-up run first,
    not counted."""
    import onnxruntime as ort

    if runs < 1:
        raise ValueError(f"profile runs: expected >= 1, got {runs}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as d:
        opts.profile_file_prefix = str(Path(d) / "prof")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            sess.run(None, dict(feed))
        events = json.loads(Path(sess.end_profiling()).read_text())
    model_runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    first_timed = model_runs[1] if len(model_runs) > 1 else 0
    return [KernelTime(e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?"), float(e["dur"]),
                       e["args"].get("output_type_shape"))
            for e in events
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed]


def op_shares(times: list[KernelTime]) -> list[tuple[str, float]]:
    """(op type, % of all kernel time), largest first."""
    per_op: dict[str, float] = defaultdict(float)
    for t in times:
        per_op[t.op] += t.us
    total = sum(per_op.values()) or 1.0
    return sorted(((op, 100.0 * us / total) for op, us in per_op.items()), key=lambda x: -x[1])
