"""``deploykit quantize``: calibration data -> FP16/INT8 graph -> accuracy budget -> artifact.

Everything is built in a scratch directory; the output ``.onnx`` and its
manifest appear (atomically) only when every step succeeded, so a failed
budget or a bad calibration folder leaves nothing behind.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import onnx

from ..errors import BadInput, CheckFailed, expected_got
from ..export.trt_support import check_trt
from ..fileio import scratch_dir
from ..manifest import read_manifest, write_artifact, write_manifest
from .budget import Budget, meet_budget, parse_budget, temp_artifact
from .convert import convert

__all__ = ["quantize_artifact", "budget_evaluator"]


def budget_evaluator(manifest: dict[str, Any], budget: Budget, *, data: str | os.PathLike | None = None,
                     samples: int | None = None, threads: int | None = None, progress: bool = False,
                     scratch: str | os.PathLike) -> Callable[[Any], float]:
    """A function ``candidate -> metric`` for ``budget``, against the PyTorch reference (computed once).

    A candidate is a path to an artifact with its manifest, or an
    ``onnx.ModelProto`` (saved to ``scratch`` with ``manifest``).
    """
    from ..compare.evaluate import DetectorEval, GeneratorEval

    counter = {"n": 0}

    def as_path(candidate) -> Path:
        if isinstance(candidate, onnx.ModelProto):
            counter["n"] += 1
            return temp_artifact(candidate, manifest, scratch, name=f"candidate_{counter['n']}.onnx")
        return Path(candidate)

    if manifest["kind"] == "detector":
        ev = DetectorEval(manifest, data=data, samples=samples, threads=threads, progress=progress)
        ref = ev.reference_metrics()
        key = {"map-drop": "map", "map50-drop": "map50", "mask-map-drop": "mask_map"}[budget.metric]
        if key not in ref:
            raise BadInput(expected_got("--accuracy-budget mask-map-drop", "a Mask R-CNN graph (with masks)",
                                        "a detector without masks"))

        def evaluate(candidate) -> float:
            return 100.0 * (ref[key] - ev.artifact_metrics(as_path(candidate))[key])
    else:
        ev = GeneratorEval(manifest, data=data, samples=samples, threads=threads, progress=progress)
        key = {"psnr": "psnr_mean", "ssim": "ssim_mean"}[budget.metric]

        def evaluate(candidate) -> float:
            return float(ev.psnr_ssim(as_path(candidate))[key])
    return evaluate


def quantize_artifact(source: str | os.PathLike, out: str | os.PathLike, precision: str, *,
                      calib: str | os.PathLike | None = None, samples: int = 128, seed: int = 0,
                      method: str = "entropy", budget: str | None = None,
                      eval_data: str | os.PathLike | None = None, eval_samples: int | None = None,
                      calibration_cache: str | os.PathLike | None = None, threads: int | None = None,
                      ort_lowering: bool = False, ort_cpu: str = "auto",
                      progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Convert the FP32 artifact ``source`` to ``precision`` and write ``out`` (+ manifest).

    With ``budget`` (e.g. ``"map-drop=0.5"``), the result is evaluated against
    the PyTorch reference and, if it misses, the most sensitive INT8 layers are
    moved back to FP32 until it holds (:func:`deploykit.precision.budget.meet_budget`).
    ``ort_lowering`` adds the ONNX Runtime CPU lowering for ``ort_cpu`` (``auto``: this
    machine's class; ``x86-vnni`` or ``x86``, see :mod:`deploykit.precision.ort_lowering`).
    Returns the manifest written.
    """
    from ..data.calibration import calibration_feeds

    say = log or (lambda _m: None)
    source, out = Path(source), Path(out)
    manifest = read_manifest(source)
    parsed = parse_budget(budget, manifest.get("kind")) if budget else None
    if parsed is not None and precision == "fp32":
        raise BadInput(expected_got("--accuracy-budget", "an fp16 or int8 --precision", "fp32"))
    if ort_lowering and precision != "int8":
        raise BadInput(expected_got("--ort-lowering", "--precision int8", precision))
    target = _ort_target(ort_cpu, parsed) if ort_lowering else None
    if calibration_cache and precision != "int8":
        raise BadInput(expected_got("--calibration-cache", "--precision int8", precision))
    feeds, description = None, None
    if precision != "fp32":
        say(f"calibration data: {samples} samples from {calib or 'the synthetic generator'}")
        feeds, description = calibration_feeds(manifest, calib, samples=samples, seed=seed, progress=progress)
    with scratch_dir("deploykit-quantize-") as tmp:
        tmpdir = Path(tmp)
        staged = tmpdir / out.name
        say(f"converting to {precision}")
        new = convert(source, staged, precision, feeds=feeds, calibration=description, method=method, log=say)
        if parsed is not None:
            say(f"checking accuracy budget {parsed} ({parsed.describe()})")
            scratch = tmpdir / "candidates"
            scratch.mkdir()
            evaluate = budget_evaluator(new, parsed, data=eval_data, samples=eval_samples, threads=threads,
                                        progress=progress, scratch=scratch)
            if precision == "int8":
                result = meet_budget(staged, source, parsed, evaluate, feeds, log=say, threads=threads)
                summary = result.summary()
                if result.moved:
                    onnx.save_model(result.model, str(staged))
            else:  # FP16: no search, the budget is a check
                fp32_value = evaluate(source)
                if not parsed.met(fp32_value):
                    raise CheckFailed(f"accuracy budget {parsed} cannot be met even in FP32: the FP32 graph "
                                      f"gives {parsed.metric} {fp32_value:.4g}")
                value = evaluate(staged)
                summary = {"spec": str(parsed), "meaning": parsed.describe(), "met": parsed.met(value),
                           "value": value, "moved_to_fp32": []}
                if not summary["met"]:
                    raise CheckFailed(f"fp16 graph misses accuracy budget {parsed}: {parsed.metric} {value:.4g}")
            new = copy.deepcopy(new)
            new["precision"]["budget"] = summary
            if summary["moved_to_fp32"]:
                moved = {m["node"] for m in summary["moved_to_fp32"]}
                new["precision"]["kept_high_precision"] = sorted(set(new["precision"]["kept_high_precision"]) | moved)
                new["precision"]["low_precision_nodes"] -= len(moved)
            write_manifest(staged, new)
        if target is not None:
            _lower_for_ort(staged, target, parsed, evaluate if parsed is not None else None, say)
        if calibration_cache:
            from .trt_cache import write_calibration_cache

            count = write_calibration_cache(staged, calibration_cache)
            say(f"wrote {calibration_cache} ({count} tensors)")
        if target is None:  # an --ort-lowering graph is for ONNX Runtime CPU only (build refuses it by its manifest)
            # the final graph, nothing published yet; its manifest (the source's) declares data-dependent outputs
            check_trt(onnx.load(str(staged)), f"{precision} graph {out.name}", manifest=manifest)
        _publish(staged, out)
    return read_manifest(out)


def _ort_target(ort_cpu: str, budget: Budget | None) -> str:
    """The lowering target for ``--ort-cpu`` (refused before any work when it cannot be honoured)."""
    from ..runtime import cpu
    from .ort_lowering import TARGETS, target_for

    here = cpu.cpu_class()
    if ort_cpu == "auto":
        return target_for(here)
    if ort_cpu not in TARGETS:
        raise BadInput(expected_got("--ort-cpu", "auto | " + " | ".join(TARGETS), repr(ort_cpu)))
    if budget is not None and here not in cpu.TARGET_CLASSES[ort_cpu]:
        raise BadInput(expected_got(f"--ort-cpu {ort_cpu} with --accuracy-budget",
                                    f"a machine where that lowering is exact ({', '.join(sorted(cpu.TARGET_CLASSES[ort_cpu]))})"
                                    " to check the budget on", f"this {here} CPU"))
    return ort_cpu


def _lower_for_ort(staged: Path, target: str, budget: Budget | None, evaluate: Callable[[Any], float] | None,
                   say: Callable[[str], None]) -> None:
    """Add the exact output Q/DQ pairs that let ONNX Runtime's CPU kernels run INT8 convolutions,
    with the weight encoding whose integer kernels are exact on ``target`` CPUs.

    The rewrite is exact under reference arithmetic, but ORT's fused integer
    kernels round requantization differently from float Conv + Q, so with a
    budget the lowered graph is evaluated again and must still meet it.
    """
    from ..runtime import cpu
    from .ort_lowering import lower_for_ort

    manifest = json.loads(staged.with_suffix(".json").read_text())
    lowered, record = lower_for_ort(onnx.load(str(staged)), target)
    record["made_on"] = cpu.cpu_class()
    say(f"ONNX Runtime lowering for {target} CPUs ({record['lowering']}): {record['output_qdq_pairs']} output "
        f"Q/DQ pair(s) added" + (f", {record['uint8_weights']} weights stored as uint8" if record["uint8_weights"]
                                 else ""))
    if budget is not None and evaluate is not None and record["output_qdq_pairs"]:
        value = float(evaluate(lowered))
        record["budget_value"] = value
        if not budget.met(value):
            raise CheckFailed(f"the ONNX Runtime-lowered INT8 graph misses accuracy budget {budget}: "
                              f"{budget.metric} {value:.4g} (ORT's integer kernels round differently); "
                              "drop --ort-lowering")
    onnx.save_model(lowered, str(staged))
    manifest["precision"]["ort_lowering"] = record
    write_manifest(staged, manifest)


def _publish(staged: Path, out: Path) -> None:
    """Move the staged artifact and its manifest to ``out`` (each atomically), manifest fixed up for the name."""
    manifest = json.loads(staged.with_suffix(".json").read_text())
    precision = manifest.get("precision") or {}
    src = precision.get("source") or {}
    if src.get("file"):  # re-anchor the relative source path at the final directory
        absolute = (staged.parent / src["file"]).resolve() if not os.path.isabs(src["file"]) else Path(src["file"])
        src["file"] = os.path.relpath(absolute, out.resolve().parent)
    write_artifact(out, lambda target: shutil.copyfile(staged, target), manifest)  # both together, crash-safe
