"""``deploykit parity ARTIFACT --bisect``: find the first intermediate tensor that goes wrong.

Both sides are ONNX graphs run by ONNX Runtime on the CPU:

* the **artifact** runs as deployed (``ORT_ENABLE_ALL``);
* the **reference** is ``--against REF.onnx``; by default the FP32 source recorded in the
  artifact's manifest (``precision.source.file``, written by ``deploykit quantize``), and
  for an FP32 artifact without a source the artifact itself with ONNX Runtime's graph
  optimisations disabled (``ORT_DISABLE_ALL``: catches optimizer and fusion bugs).
  The reference always runs with optimisations disabled.

Compared tensors ("candidates") are the float node outputs (float32/float16/double) present
by name in both graphs, in the artifact's topological order; tensors only one side has
(QuantizeLinear/DequantizeLinear and Cast outputs inserted by a conversion) are skipped, and
float16 values are compared as float32. A tensor **fails** when

    max|a - b| > atol + rtol * max|b|        (a: artifact, b: reference)

i.e. its relative error ``max|a-b| / max|b|`` exceeds ``rtol`` (``atol`` is a floor for
near-zero tensors); a NaN/inf on one side only or a shape mismatch also fails.

Search: a *probe* re-runs both graphs with a window of candidates exposed as extra graph
outputs (typed from ONNX shape inference) and returns the first failing tensor of the window.
Binary search over the topologically ordered list: a window ending at the midpoint that fails
moves the upper bound below the window (keeping its first failure as the answer so far), one
that passes moves the lower bound past the midpoint (this assumes errors propagate downstream:
a failure before the window would show in it). When the remaining range fits in one window it
is probed whole. Finally the producing node's compared inputs are probed with its output: if
one of them fails too, the search continues below it, so the named node's inputs are within
tolerance and its output is not. Probe 0 runs the unmodified graphs for the final-output verdict.

numpy, onnx and onnxruntime only; no torch. See docs/parity.md.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import BadInput, expected_got

#: Default tolerances per precision of the artifact: (rtol, atol).
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-6),
    "fp16": (1e-2, 1e-4),
    "int8": (5e-2, 1e-3),
}
DEFAULT_WINDOW = 128
FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx TensorProto FLOAT, FLOAT16, DOUBLE
EPS = 1e-12
#: Ops whose outputs' order depends on the data (near-ties may come out in another order).
ORDERING_OPS = frozenset({"TopK", "NonMaxSuppression", "ArgMax", "ArgMin", "NonZero", "Unique"})


# -- tolerance and statistics -------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float

    def fails(self, stats: Mapping[str, Any]) -> bool:
        if stats.get("mismatch"):
            return True
        return stats["max_abs"] > self.atol + self.rtol * stats["ref_max"]


def tensor_error(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Error statistics of ``got`` (artifact) against ``ref`` (reference), both cast to float64.

    ``max_rel`` is ``max|got-ref| / (max|ref| + 1e-12)``. ``mismatch`` names a shape
    mismatch or a non-finite value on one side only (both fail regardless of tolerance).
    """
    a = np.asarray(got).astype(np.float64)
    b = np.asarray(ref).astype(np.float64)
    out: dict[str, Any] = {"shape": list(b.shape), "elements": int(b.size)}
    if a.shape != b.shape:
        return {**out, "mismatch": f"shape {list(a.shape)} vs reference {list(b.shape)}", "max_abs": float("inf"),
                "mean_abs": float("inf"), "ref_max": 0.0, "max_rel": float("inf")}
    fa, fb = np.isfinite(a), np.isfinite(b)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = ~fa & ~fb & ~both_nan & (a == b)
    odd = (fa != fb) | (~fa & ~fb & ~both_nan & ~same_inf)
    finite = fa & fb
    diff = np.abs(a[finite] - b[finite])
    ref_max = float(np.abs(b[finite]).max()) if diff.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    out.update(max_abs=max_abs, mean_abs=float(diff.mean()) if diff.size else 0.0, ref_max=ref_max,
               max_rel=max_abs / (ref_max + EPS))
    if odd.any():
        out["mismatch"] = f"{int(odd.sum())} non-finite values on one side only"
        out["max_rel"] = float("inf")
    return out


def merge_errors(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Combine per-sample statistics of one tensor (max of maxima, mean of means weighted by size)."""
    if len(parts) == 1:
        return parts[0]
    n = sum(p["elements"] for p in parts) or 1
    out = {"shape": parts[0]["shape"], "elements": sum(p["elements"] for p in parts),
           "max_abs": max(p["max_abs"] for p in parts),
           "mean_abs": sum(p["mean_abs"] * p["elements"] for p in parts) / n,
           "ref_max": max(p["ref_max"] for p in parts)}
    out["max_rel"] = out["max_abs"] / (out["ref_max"] + EPS)
    bad = [p["mismatch"] for p in parts if p.get("mismatch")]
    if bad:
        out["mismatch"] = bad[0]
        out["max_rel"] = float("inf")
    return out


# -- graphs ---------------------------------------------------------------------------------


@dataclass
class Graph:
    """An ONNX model with shape inference done, and what bisect needs from it."""

    path: Path
    model: Any  # onnx.ModelProto (shape-inferred)
    float_types: dict[str, int]  # node-output name -> onnx elem type (float types only)
    producers: dict[str, Any] = field(default_factory=dict)  # output name -> NodeProto
    order: list[str] = field(default_factory=list)  # node outputs in topological (node) order
    order_dependent: set[str] = field(default_factory=set)  # downstream of a data-dependent ordering op

    @classmethod
    def load(cls, path: Path, what: str) -> "Graph":
        import onnx

        try:
            model = onnx.load(str(path))
        except Exception as e:  # noqa: BLE001 - protobuf/IO errors become one line
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise BadInput(expected_got(f"{what} {path}", "a readable ONNX model",
                                        f"{type(e).__name__}: {text}")) from None
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - partial types are fine; untyped tensors are skipped
            pass
        types = {}
        for vi in list(model.graph.value_info) + list(model.graph.output):
            t = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and t.elem_type in FLOAT_TYPES:
                types[vi.name] = t.elem_type
        g = cls(Path(path), model, {})
        for node in model.graph.node:
            for name in node.output:
                if not name:
                    continue
                g.producers[name] = node
                g.order.append(name)
                if name in types and node.op_type != "Constant":
                    g.float_types[name] = types[name]
        for node in model.graph.node:  # nodes are in topological order: one forward pass
            if node.op_type in ORDERING_OPS or any(x in g.order_dependent for x in node.input):
                g.order_dependent.update(x for x in node.output if x)
        return g

    def with_outputs(self, names: Sequence[str]) -> bytes:
        """The model serialized with ``names`` added as graph outputs (after the original ones)."""
        from onnx import helper

        graph = self.model.graph
        original = list(graph.output)
        have = {o.name for o in original}
        extra = [helper.make_tensor_value_info(n, self.float_types[n], None) for n in names if n not in have]
        graph.output.extend(extra)
        try:
            return self.model.SerializeToString()
        finally:
            del graph.output[len(original):]


def _session(data: bytes | str, optimize: bool, threads: int | None, what: str = "model"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ONNX Runtime load errors become one line
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(expected_got(what, "a model ONNX Runtime can load", text)) from None


# -- reference selection --------------------------------------------------------------------


def precision_of(manifest: Mapping[str, Any] | None) -> tuple[str, dict | None]:
    """(``"fp32"|"fp16"|"int8"``, source dict or None) from a manifest's ``precision`` section.

    Reads ``{"mode": "fp32"}`` (export) and ``{"mode": "int8", "source": {"file", "sha256"}}``
    (``deploykit quantize``); anything unrecognised counts as fp32 without a source.
    """
    section = (manifest or {}).get("precision")
    if not isinstance(section, Mapping):
        return "fp32", None
    value = section.get("precision", section.get("mode"))
    prec = str(value).lower() if isinstance(value, str) else "fp32"
    if prec not in TOLERANCES:
        prec = "fp32"
    source = section.get("source")
    return prec, (dict(source) if isinstance(source, Mapping) else None)


def resolve_reference(artifact: Path, manifest: Mapping[str, Any] | None, against: str | os.PathLike | None
                      ) -> tuple[Path, str]:
    """(reference ONNX path, description). ``artifact`` itself means the unoptimised run."""
    from ..fileio import sha256_file

    if against is not None:
        ref = Path(against)
        if not ref.is_file():
            raise BadInput(expected_got(f"--against {ref}", "an existing ONNX file", "no such file"))
        return ref, f"{ref} (ORT_DISABLE_ALL)"
    _, source = precision_of(manifest)
    recorded = (source or {}).get("file") or (source or {}).get("path")
    if recorded:
        base = artifact.parent  # the manifest sits beside the artifact
        ref = Path(str(recorded))
        ref = ref if ref.is_absolute() else base / ref
        if not ref.is_file():
            raise BadInput(expected_got(f"FP32 source {ref} (manifest precision.source.file)",
                                        "an existing ONNX file (or pass --against REF.onnx)", "no such file"))
        want = source.get("sha256")
        if isinstance(want, str) and want and sha256_file(ref) != want:
            raise BadInput(expected_got(f"FP32 source {ref}", f"sha256 {want[:12]}… (manifest precision.source)",
                                        "a different file (re-exported after the conversion?); pass --against"))
        return ref, f"FP32 source {ref} (ORT_DISABLE_ALL)"
    return artifact, "the same graph with ONNX Runtime graph optimisations disabled (ORT_DISABLE_ALL)"


# -- the search -----------------------------------------------------------------------------


def _compare(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    s = tensor_error(a, b)
    exact = a.dtype.kind not in "fc" and b.dtype.kind not in "fc"  # integer/bool graph outputs
    if exact and a.shape == b.shape and not np.array_equal(a, b):
        s["mismatch"] = f"{int((a != b).sum())} of {a.size} values differ (exact compare)"
    return s


def _same_after_sorting(a: np.ndarray, b: np.ndarray, tol: Tolerance) -> bool:
    """True when ``a`` and ``b`` hold the same values (within ``tol``) in a different order."""
    if a.shape != b.shape:
        return False
    return not tol.fails(_compare(np.sort(a, axis=None), np.sort(b, axis=None)))


class Prober:
    """Runs both graphs with a window of candidates exposed; counts probes and ONNX Runtime runs."""

    def __init__(self, art: Graph, ref: Graph, feeds: list[dict[str, np.ndarray]],
                 tol: Tolerance, threads: int | None, strict_order: bool = False):
        self.art, self.ref, self.feeds, self.tol, self.threads = art, ref, feeds, tol, threads
        self.probes: list[dict[str, Any]] = []
        self.ort_runs = 0
        self.strict_order = strict_order
        self.compared: set[str] = set()  # every candidate some probe compared
        self.reordered: list[str] = []  # tensors seen holding the reference's values in another order

    def _outputs(self, graph: Graph, names: Sequence[str], optimize: bool) -> list[dict[str, np.ndarray]]:
        sess = _session(graph.with_outputs(names), optimize, self.threads, f"graph {graph.path}")
        wanted = [o.name for o in sess.get_outputs()]
        inputs = {i.name for i in sess.get_inputs()}
        results = []
        for feed in self.feeds:
            missing = inputs - set(feed)
            if missing:
                raise BadInput(expected_got(f"graph {graph.path.name} inputs", "the artifact's inputs",
                                            f"also {sorted(missing)}"))
            values = sess.run(wanted, {k: v for k, v in feed.items() if k in inputs})
            self.ort_runs += 1
            results.append(dict(zip(wanted, values)))
        return results

    def run(self, names: Sequence[str], label: str) -> dict[str, dict[str, Any]]:
        """Error statistics for each of ``names`` (plus both graphs' original outputs when ``names`` is empty)."""
        t0 = time.perf_counter()
        got = self._outputs(self.art, names, optimize=True)
        ref = self._outputs(self.ref, names, optimize=False)
        stats = {}
        keys = list(names) or [k for k in got[0] if k in ref[0]]
        for k in keys:
            parts, sorted_ok = [], True
            for g, r in zip(got, ref):
                s = _compare(g[k], r[k])
                if self.tol.fails(s) and k in self.art.order_dependent:
                    sorted_ok = sorted_ok and _same_after_sorting(g[k], r[k], self.tol)
                parts.append(s)
            st = merge_errors(parts)
            failed = self.tol.fails(st)
            # the same values in another order, downstream of TopK/NMS/ArgMax...: near-ties, not an error
            st["reordered"] = bool(failed and sorted_ok and k in self.art.order_dependent)
            st["fails"] = failed and (self.strict_order or not st["reordered"])
            stats[k] = st
            self.compared.add(k)
            if st["reordered"] and k not in self.reordered:
                self.reordered.append(k)
        self.probes.append({"probe": len(self.probes), "what": label, "tensors": len(keys),
                            "failing": sum(1 for s in stats.values() if s["fails"]),
                            "reordered": sum(1 for s in stats.values() if s["reordered"]),
                            "seconds": round(time.perf_counter() - t0, 3)})
        return stats


def candidates(art: Graph, ref: Graph) -> tuple[list[str], dict[str, int]]:
    """Float node outputs present in both graphs, in the artifact's order; and skip counts."""
    skipped = {"only_in_artifact": 0, "only_in_reference": 0, "not_float_or_untyped": 0}
    out = []
    ref_outputs = set(ref.producers)
    for name in art.order:
        if name not in art.float_types:
            skipped["not_float_or_untyped"] += 1
            continue
        if name not in ref_outputs:
            skipped["only_in_artifact"] += 1
            continue
        if name not in ref.float_types:
            skipped["not_float_or_untyped"] += 1
            continue
        out.append(name)
    skipped["only_in_reference"] = sum(1 for n in ref.float_types if n not in art.producers)
    return out, skipped


def search(n: int, probe: Callable[[int, int], int | None], window: int, lo: int = 0, hi: int | None = None
           ) -> int | None:
    """First failing index in ``[lo, hi)`` with windowed binary search.

    ``probe(start, stop)`` exposes candidates ``start..stop-1`` and returns the first failing
    index among them, or None.
    """
    hi = n if hi is None else hi
    found = None
    while lo < hi:
        if hi - lo <= window:
            first = probe(lo, hi)
            return first if first is not None else found
        mid = (lo + hi) // 2
        start = max(lo, mid - window + 1)
        first = probe(start, mid + 1)
        if first is not None:
            found, hi = first, start
        else:
            lo = mid + 1
    return found


def bisect_graphs(artifact: str | os.PathLike, reference: str | os.PathLike, feeds: list[dict[str, np.ndarray]],
                  tol: Tolerance, *, window: int = DEFAULT_WINDOW, threads: int | None = None,
                  strict_order: bool = False, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Bisect ``artifact`` against ``reference`` (the same path: unoptimised vs optimised run).

    Returns a JSON-able report: ``first_failing`` (tensor, node name/op/inputs, its stats
    and its inputs' stats) or None, ``final_outputs`` stats with ``final_ok``, ``probes``
    and ``ort_runs``.
    """
    if window < 1:
        raise BadInput(expected_got("--window", "a positive number of tensors per probe", window))
    t0 = time.perf_counter()
    artifact, reference = Path(artifact), Path(reference)
    same = artifact.resolve() == reference.resolve()
    art = Graph.load(artifact, "artifact")
    ref = art if same else Graph.load(reference, "reference")
    names, skipped = candidates(art, ref)
    index = {name: i for i, name in enumerate(names)}
    prober = Prober(art, ref, feeds, tol, threads, strict_order)
    say = progress or (lambda m: None)

    say("final outputs")
    final = prober.run([], "final outputs (graphs unmodified)")

    def probe(start: int, stop: int) -> int | None:
        say(f"probe {len(prober.probes)}: tensors {start}..{stop - 1} of {len(names)}")
        stats = prober.run(names[start:stop], f"candidates {start}..{stop - 1}")
        fails = [i for i in range(start, stop) if stats[names[i]]["fails"]]
        return fails[0] if fails else None

    first = search(len(names), probe, window) if names else None
    node_report = None
    while first is not None:
        node = art.producers[names[first]]
        ins = [x for x in node.input if x in index and index[x] < first]
        say(f"confirm: node {node.name or node.op_type} and its {len(ins)} compared inputs")
        stats = prober.run([*ins, names[first]], f"confirm node {node.name or node.op_type}")
        bad_inputs = sorted(index[x] for x in ins if stats[x]["fails"])
        if bad_inputs:  # an input already fails: the culprit is further up
            upper = bad_inputs[0]
            first = search(len(names), probe, window, hi=upper)
            first = upper if first is None else first
            continue
        node_report = {
            "tensor": names[first], "index": first,
            "node": {"name": node.name, "op_type": node.op_type, "inputs": list(node.input),
                     "outputs": list(node.output)},
            "stats": stats[names[first]],
            "inputs": {x: stats[x] for x in ins},
            "inputs_not_compared": [x for x in node.input if x and x not in ins],
        }
        break
    return {
        "artifact": str(artifact), "reference_path": str(reference), "same_graph": same,
        "tolerance": {"rtol": tol.rtol, "atol": tol.atol, "rule": "max|a-b| > atol + rtol * max|b|"},
        "candidates": len(names), "compared": len(prober.compared & set(names)), "skipped": skipped, "window": window,
        "first_failing": node_report,
        "final_outputs": final, "final_ok": not any(s["fails"] for s in final.values()),
        "reordered": prober.reordered, "strict_order": strict_order,
        "probes": prober.probes, "ort_runs": prober.ort_runs,
        "seconds": round(time.perf_counter() - t0, 2),
    }


# -- inputs and the command ---------------------------------------------------------------------


def _random_feeds(path: Path, n: int) -> list[dict[str, np.ndarray]]:
    sess = _session(str(path), False, 1, f"artifact {path}")
    rng = np.random.default_rng(0)
    kinds = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
    feeds = []
    for _ in range(n):
        feed = {}
        for i in sess.get_inputs():
            if i.type not in kinds:
                raise BadInput(expected_got(f"input {i.name!r} of {path.name}", f"one of {sorted(kinds)}", i.type))
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
            dt = np.dtype(kinds[i.type])
            feed[i.name] = (rng.random(shape).astype(dt) if dt.kind == "f" else rng.integers(0, 2, shape).astype(dt))
        feeds.append(feed)
    return feeds


def _detector_feeds(artifact: Path, images_dir, samples: int) -> tuple[str, list[dict[str, np.ndarray]]]:
    from ..runtime import Detector
    from .parity import _detector_inputs

    source, images = _detector_inputs(images_dir)
    feeds = []
    with Detector(artifact) as det:
        batch = det.batch_range[0]  # the smallest batch a run takes
        for k in range(min(samples, len(images))):
            imgs = [images[(k * batch + j) % len(images)][1] for j in range(batch)]
            if det.pixels_in:  # one batch shares one size
                imgs = [imgs[0]] * batch
            feeds.append(det.feed(imgs)[0])
    return f"{len(feeds)} of {source}", feeds


def _generator_feeds(artifact: Path, manifest: dict, label_maps_dir, instances_dir, samples: int
                     ) -> tuple[str, list[dict[str, np.ndarray]]]:
    from ..runtime.generator import Generator
    from .parity import _generator_inputs

    gen = Generator(artifact)
    try:
        source, items = _generator_inputs(gen, manifest, label_maps_dir, instances_dir)
        feeds = []
        for name, lab, inst in items[:samples]:
            try:
                feeds.append(gen.feed(lab, inst, seed=0))
            except BadInput as e:
                raise BadInput(f"{name}: {e}") from None
    finally:
        gen.session.close()
    return f"{len(feeds)} of {source}", feeds


def run_bisect(artifact: str | os.PathLike, against: str | os.PathLike | None = None, *,
               images_dir=None, label_maps_dir=None, instances_dir=None, samples: int = 1,
               rtol: float | None = None, atol: float | None = None, window: int = DEFAULT_WINDOW,
               threads: int | None = None, strict_order: bool = False,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``deploykit parity ARTIFACT --bisect``: the report of :func:`bisect_graphs` plus inputs and reference.

    Inputs: the parity inputs (held-out images / label maps, or ``--images``/``--label-maps``)
    for deploykit detectors and generators, seeded random feeds for other graphs (or without
    a manifest). ``report["ok"]`` is True when no compared tensor and no final output fails.
    """
    from ..manifest import manifest_path, read_manifest
    from .parity import require_onnx_file

    artifact = require_onnx_file(artifact, "an .onnx file (--bisect runs ONNX Runtime)")
    if samples < 1:
        raise BadInput(expected_got("--samples", "a positive int", samples))
    for name, v in (("--rtol", rtol), ("--atol", atol)):
        if v is not None and not v >= 0:
            raise BadInput(expected_got(name, "a number >= 0", v))
    manifest = read_manifest(artifact) if manifest_path(artifact).is_file() else None
    precision, _ = precision_of(manifest)
    d_rtol, d_atol = TOLERANCES[precision]
    tol = Tolerance(d_rtol if rtol is None else rtol, d_atol if atol is None else atol)
    ref_path, ref_desc = resolve_reference(artifact, manifest, against)
    kind = (manifest or {}).get("kind")
    if kind == "detector":
        if label_maps_dir is not None or instances_dir is not None:
            raise BadInput(expected_got("--label-maps/--instances", "--images DIR for a detector artifact",
                                        str(label_maps_dir or instances_dir)))
        source, feeds = _detector_feeds(artifact, images_dir, samples)
    elif kind == "generator":
        if images_dir is not None:
            raise BadInput(expected_got("--images", "--label-maps DIR for a generator artifact", str(images_dir)))
        source, feeds = _generator_feeds(artifact, manifest, label_maps_dir, instances_dir, samples)
    else:
        if images_dir or label_maps_dir or instances_dir:
            raise BadInput(expected_got("--images/--label-maps", "a deploykit detector or generator manifest",
                                        f"kind {kind!r}"))
        source, feeds = f"{samples} seeded random feed(s)", _random_feeds(artifact, samples)
    report = bisect_graphs(artifact, ref_path, feeds, tol, window=window, threads=threads,
                           strict_order=strict_order, progress=progress)
    report.update({"kind": kind, "precision": precision, "reference": ref_desc, "inputs": source,
                   "tolerance_source": "options" if (rtol is not None or atol is not None)
                   else f"default for {precision}"})
    report["ok"] = report["first_failing"] is None and report["final_ok"]
    return report
