"""Accuracy budgets for reduced-precision graphs, and the sensitivity fallback.

``--accuracy-budget map-drop=0.5`` (detector: at most 0.5 mAP@[.5:.95] points
below the PyTorch reference; also ``map50-drop``) or ``psnr=35`` (generator:
mean PSNR of at least 35 dB against the FP32 PyTorch output; also ``ssim``).

When a quantized graph misses its budget, :func:`meet_budget`

1. checks the budget can be met at all: the FP32 graph must meet it, otherwise
   :class:`CheckFailed` (no search can help);
2. measures each quantized layer's sensitivity on calibration data: the
   relative error of the layer's output with its INT8 inputs and weights
   against the same layer computed in FP32 on the same (already quantized
   upstream) activations -- one ONNX Runtime run of an augmented graph gives
   every layer's local error;
3. moves the most sensitive layers back to FP32 (their Q/DQ bypassed, other
   scales untouched), searching for the fewest that meet the budget
   (doubling, then bisection, so about 2·log2(layers) evaluations);
4. times the result against the all-INT8 graph, so the report can say what
   the moved layers cost in speed.
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from ..errors import BadInput, CheckFailed, expected_got
from .convert import dequantize_nodes, module_of, quantized_nodes

__all__ = ["Budget", "parse_budget", "layer_sensitivity", "meet_budget", "BudgetResult"]

# metric -> (model kind, direction, description)
METRICS = {
    "map-drop": ("detector", "max", "mAP@[.5:.95] points below the PyTorch reference"),
    "map50-drop": ("detector", "max", "mAP@.5 points below the PyTorch reference"),
    "mask-map-drop": ("detector", "max", "mask mAP@[.5:.95] points below the PyTorch reference (Mask R-CNN)"),
    "psnr": ("generator", "min", "mean PSNR (dB) against the FP32 PyTorch output"),
    "ssim": ("generator", "min", "mean SSIM against the FP32 PyTorch output"),
}


@dataclass(frozen=True)
class Budget:
    metric: str
    limit: float

    @property
    def kind(self) -> str:
        return METRICS[self.metric][0]

    def met(self, value: float) -> bool:
        return value <= self.limit if METRICS[self.metric][1] == "max" else value >= self.limit

    def __str__(self) -> str:
        return f"{self.metric}={self.limit:g}"

    def describe(self) -> str:
        bound = "at most" if METRICS[self.metric][1] == "max" else "at least"
        return f"{bound} {self.limit:g} ({METRICS[self.metric][2]})"


def parse_budget(spec: str, kind: str | None = None) -> Budget:
    """``"map-drop=0.5"`` -> Budget. ``kind`` checks it fits the model ('detector'/'generator')."""
    expected = "METRIC=NUMBER with METRIC one of " + ", ".join(METRICS) + " (e.g. map-drop=0.5, psnr=35)"
    match = re.fullmatch(r"\s*([a-z0-9-]+)\s*=\s*([-+0-9.eE]+)\s*", spec or "")
    if not match or match.group(1) not in METRICS:
        raise BadInput(expected_got("--accuracy-budget", expected, repr(spec)))
    try:
        limit = float(match.group(2))
    except ValueError:
        raise BadInput(expected_got("--accuracy-budget", expected, repr(spec))) from None
    if not math.isfinite(limit):
        raise BadInput(expected_got("--accuracy-budget", "a finite number", repr(spec)))
    budget = Budget(match.group(1), limit)
    if kind is not None and budget.kind != kind:
        fitting = [m for m, (k, _, _) in METRICS.items() if k == kind]
        raise BadInput(expected_got(f"--accuracy-budget for a {kind}", " or ".join(fitting), repr(spec)))
    return budget


# -- sensitivity ------------------------------------------------------------

def _quantized_layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Every node reading an input through DequantizeLinear (Conv/Gemm, and the odd Mul ModelOpt adds)."""
    names = set(quantized_nodes(model))
    return [n for n in model.graph.node if n.name in names]


def layer_sensitivity(int8: onnx.ModelProto, fp32: onnx.ModelProto, feeds: dict[str, np.ndarray], *,
                      samples: int = 8, threads: int | None = None) -> list[dict[str, Any]]:
    """Local error of every quantized layer, most sensitive first.

    For each Conv/Gemm/MatMul reading INT8 inputs, a twin node reading the
    same activations in FP32 (and the FP32 weights) is added to the graph;
    both outputs are exposed and compared over ``samples`` calibration
    samples. Returns ``[{"node", "op", "module", "rel_error", "sqnr_db"}]``.
    """
    import onnxruntime as ort

    layers = _quantized_layers(int8)
    if not layers:
        return []
    twins = dequantize_nodes(int8, [n.name for n in layers], fp32)
    twin_by_name = {n.name: n for n in twins.graph.node}
    augmented = copy.deepcopy(int8)
    g = augmented.graph
    known_inits = {t.name for t in g.initializer}
    for t in twins.graph.initializer:
        if t.name not in known_inits:
            g.initializer.append(t)
            known_inits.add(t.name)
    pairs: list[tuple[onnx.NodeProto, str, str]] = []
    del g.output[:]
    for node in layers:
        twin = copy.deepcopy(twin_by_name[node.name])
        twin.name = node.name + "__fp32"
        ref_out = node.output[0] + "__fp32"
        del twin.output[:]
        twin.output.append(ref_out)
        g.node.append(twin)
        for name in (node.output[0], ref_out):
            g.output.append(onnx.helper.make_empty_tensor_value_info(name))
        pairs.append((node, node.output[0], ref_out))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    if isinstance(feeds, list):  # per-sample feeds (pixels-in / dynamic-size graphs)
        chunks = feeds[:samples]
    else:
        n = min(samples, len(next(iter(feeds.values()))))
        batch = _graph_batch(int8)
        chunks = [{k: v[start:start + batch] for k, v in feeds.items()} for start in range(0, n - batch + 1, batch)]
    num = np.zeros(len(pairs))
    den = np.zeros(len(pairs))
    for chunk in chunks:
        outs = session.run(None, chunk)
        for i in range(len(pairs)):
            a, b = outs[2 * i].astype(np.float64), outs[2 * i + 1].astype(np.float64)
            num[i] += float(np.sum((a - b) ** 2))
            den[i] += float(np.sum(b ** 2))
    modules = {n.name: module_of(n) or "" for n in fp32.graph.node}
    result = []
    for (node, _, _), e, d in zip(pairs, num, den):
        rel = float(e / d) if d > 0 else 0.0
        result.append({"node": node.name, "op": node.op_type, "module": modules.get(node.name, ""),
                       "rel_error": rel, "sqnr_db": (10 * math.log10(1 / rel)) if rel > 0 else float("inf")})
    result.sort(key=lambda r: -r["rel_error"])
    return result


def _graph_batch(model: onnx.ModelProto) -> int:
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 1


# -- the search -------------------------------------------------------------

@dataclass
class BudgetResult:
    budget: Budget
    met: bool
    value: float
    fp32_value: float
    moved: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    model: onnx.ModelProto | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"spec": str(self.budget), "meaning": self.budget.describe(), "met": self.met,
                "value": self.value, "fp32_value": self.fp32_value,
                "moved_to_fp32": self.moved, "evaluations": self.evaluations, "latency_ms": self.latency_ms}


def meet_budget(int8_path: str | Path, fp32_path: str | Path, budget: Budget,
                evaluate: Callable[[onnx.ModelProto | Path], float], feeds: dict[str, np.ndarray], *,
                fp32_value: float | None = None, log: Callable[[str], None] | None = None,
                threads: int | None = None, time_runs: int = 10) -> BudgetResult:
    """Move the fewest, most sensitive layers of the INT8 graph back to FP32 until ``budget`` holds.

    ``evaluate(model_or_path)`` returns the budget's metric for a candidate
    graph (e.g. mAP drop in points, or PSNR in dB). Raises
    :class:`CheckFailed` when the FP32 graph itself misses the budget.
    """
    say = log or (lambda _m: None)
    int8 = onnx.load(str(int8_path))
    fp32 = onnx.load(str(fp32_path))
    if fp32_value is None:
        fp32_value = float(evaluate(Path(fp32_path)))
    if not budget.met(fp32_value):
        raise CheckFailed(f"accuracy budget {budget} cannot be met even in FP32: the FP32 graph gives "
                          f"{budget.metric} {fp32_value:.4g}")
    value = float(evaluate(Path(int8_path)))
    evaluations = [{"moved": 0, "value": value}]
    say(f"all-INT8: {budget.metric} {value:.4g} (budget {budget}, FP32 {fp32_value:.4g})")
    result = BudgetResult(budget, budget.met(value), value, fp32_value, evaluations=evaluations, model=int8)
    if result.met:
        return result
    say("measuring per-layer sensitivity on calibration data")
    ranking = layer_sensitivity(int8, fp32, feeds, threads=threads)
    cache: dict[int, tuple[float, onnx.ModelProto]] = {}

    def trial(k: int) -> float:
        if k not in cache:
            candidate = dequantize_nodes(int8, [r["node"] for r in ranking[:k]], fp32)
            v = float(evaluate(candidate))
            cache[k] = (v, candidate)
            evaluations.append({"moved": k, "value": v})
            say(f"{k:3d} layer(s) in FP32: {budget.metric} {v:.4g}")
        return cache[k][0]

    total = len(ranking)
    low, high = 0, None  # low: known to fail; high: known to pass
    k = 1
    while k < total:
        if budget.met(trial(k)):
            high = k
            break
        low = k
        k *= 2
    if high is None:
        high = total
        if not budget.met(trial(total)):
            raise CheckFailed(f"accuracy budget {budget} not met with all {total} quantized layers in FP32 "
                              f"({budget.metric} {cache[total][0]:.4g}); the rest of the graph is FP32 already")
    while high - low > 1:
        mid = (low + high) // 2
        if budget.met(trial(mid)):
            high = mid
        else:
            low = mid
    result.value, result.model = cache[high]
    result.met = True
    result.moved = [dict(r, rel_error=float(r["rel_error"]), sqnr_db=float(r["sqnr_db"])) for r in ranking[:high]]
    result.latency_ms = _latency_cost(int8, result.model, feeds, threads=threads, runs=time_runs)
    return result


def _latency_cost(int8: onnx.ModelProto, final: onnx.ModelProto, feeds: dict[str, np.ndarray], *,
                  threads: int | None, runs: int) -> dict[str, float]:
    """Median model-only ONNX Runtime latency of both graphs, interleaved, same process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if isinstance(feeds, list):
        one = feeds[0]
    else:
        batch = _graph_batch(int8)
        one = {k: v[:batch] for k, v in feeds.items()}
    sessions = [ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for m in (int8, final)]
    for s in sessions:
        s.run(None, one)
    times: list[list[float]] = [[], []]
    for _ in range(max(1, runs)):
        for i, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, one)
            times[i].append((time.perf_counter() - t) * 1000)
    int8_ms, final_ms = (float(np.median(t)) for t in times)
    return {"all_int8": round(int8_ms, 3), "with_fp32_layers": round(final_ms, 3),
            "cost_percent": round(100 * (final_ms / int8_ms - 1), 1)}


def temp_artifact(model: onnx.ModelProto, manifest: dict[str, Any], directory: str | Path,
                  name: str = "candidate.onnx") -> Path:
    """Save ``model`` with a copy of ``manifest`` so the runtime can load it (for evaluators)."""
    from ..manifest import write_manifest

    path = Path(directory) / name
    onnx.save_model(model, str(path))
    write_manifest(path, copy.deepcopy(manifest))
    return path
