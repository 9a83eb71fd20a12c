"""``deploykit parity --bisect``: the first intermediate tensor over tolerance, on small hand-built
graphs (a Conv→Relu chain, an fp16 variant with inserted Casts) and on the exported demo detector."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from deploykit.cli import main
from deploykit.compare.bisect import Tolerance, run_bisect, search, tensor_error
from deploykit.fileio import sha256_file
from deploykit.manifest import read_manifest, write_manifest

N_BLOCKS = 12  # Conv+Relu blocks: 24 candidate tensors


def chain(path: Path, perturb: int | None = None, fp16_relu: int | None = None) -> Path:
    """x [1,4,16,16] -> (conv{i} -> relu{i}) x 12. ``perturb``: add 0.5 to one weight of conv{perturb}.
    ``fp16_relu``: relu{i} runs in float16 between two inserted Casts (tensors only this graph has)."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(N_BLOCKS):
        w = (rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32)
        if perturb == i:
            w[0, 0, 1, 1] += 0.5
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        if fp16_relu == i:
            nodes += [helper.make_node("Cast", [f"c{i}"], [f"c{i}_to16"], name=f"cast{i}a", to=TensorProto.FLOAT16),
                      helper.make_node("Relu", [f"c{i}_to16"], [f"r{i}"], name=f"relu{i}"),
                      helper.make_node("Cast", [f"r{i}"], [f"r{i}_to32"], name=f"cast{i}b", to=TensorProto.FLOAT)]
            x = f"r{i}_to32"
        else:
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 4, 16, 16])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _bisect(*args):
    return CliRunner().invoke(main, ["parity", *map(str, args), "--bisect"])


def _one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


# -- pure pieces --------------------------------------------------------------------------


def test_tensor_error_and_tolerance():
    ref = np.array([0.0, 2.0, -4.0], np.float32)
    s = tensor_error(ref + np.float32(0.002), ref)
    assert math.isclose(s["max_abs"], 0.002, rel_tol=1e-4) and s["ref_max"] == 4.0
    assert math.isclose(s["max_rel"], 0.0005, rel_tol=1e-3)
    assert Tolerance(rtol=1e-3, atol=0).fails(s) is False  # 0.002 <= 1e-3 * 4
    assert Tolerance(rtol=1e-4, atol=0).fails(s) is True
    assert Tolerance(rtol=0, atol=0.01).fails(s) is False
    nan = tensor_error(np.array([np.nan, 1.0]), np.array([0.0, 1.0]))
    assert nan["mismatch"] and Tolerance(1.0, 1.0).fails(nan)  # NaN on one side fails at any tolerance
    assert Tolerance(1.0, 1.0).fails(tensor_error(np.zeros((2, 3)), np.zeros((3, 2))))
    fp16 = tensor_error(np.array([1.0, 2.0], np.float16), np.array([1.0, 2.0], np.float32))
    assert fp16["max_abs"] == 0.0


@pytest.mark.parametrize("first_bad", [None, 0, 1, 7, 22, 23])
@pytest.mark.parametrize("window", [1, 3, 8, 100])
def test_search_finds_first_failure_of_a_propagating_error(first_bad, window):
    """Errors propagate: every index >= first_bad fails. The windowed binary search finds first_bad
    in about log2(n / window) + 1 probes and never probes more than ``window`` tensors at once."""
    n, calls = 24, []

    def probe(start, stop):
        assert 0 <= start < stop <= n and stop - start <= window
        calls.append((start, stop))
        hits = [i for i in range(start, stop) if first_bad is not None and i >= first_bad]
        return hits[0] if hits else None

    assert search(n, probe, window) == first_bad
    assert len(calls) <= math.ceil(math.log2(n)) + 1


# -- the chain --------------------------------------------------------------------------


@pytest.mark.parametrize("window", ["1", "4", "128"])
def test_bisect_names_the_perturbed_conv(tmp_path, window):
    ref = chain(tmp_path / "ref.onnx")
    art = chain(tmp_path / "art.onnx", perturb=7)
    out = tmp_path / "bisect.json"
    r = _bisect(art, "--against", ref, "--window", window, "--json", out)
    assert r.exit_code == 1, r.output
    assert "node 'conv7' (Conv)" in r.output and "bisect: FAIL" in r.output
    rep = json.loads(out.read_text())
    first = rep["first_failing"]
    assert first["tensor"] == "c7" and first["node"] == {"name": "conv7", "op_type": "Conv",
                                                         "inputs": ["r6", "w7"], "outputs": ["c7"]}
    assert first["stats"]["fails"] and first["stats"]["max_rel"] > 1e-4
    assert not first["inputs"]["r6"]["fails"] and first["inputs_not_compared"] == ["w7"]
    assert rep["candidates"] == 2 * N_BLOCKS and rep["final_ok"] is False and rep["ok"] is False
    # probe 0 = final outputs; then about log2(24 / window) probes; one confirming probe
    assert len(rep["probes"]) <= 2 + math.ceil(math.log2(2 * N_BLOCKS)) and rep["ort_runs"] == 2 * len(rep["probes"])
    assert all(p["tensors"] <= int(window) for p in rep["probes"] if p["what"].startswith("candidates"))
    assert rep["probes"][-1]["what"] == "confirm node conv7" and rep["probes"][-1]["tensors"] == 2


def test_bisect_unperturbed_copy_and_default_reference_pass(tmp_path):
    ref = chain(tmp_path / "ref.onnx")
    copy = tmp_path / "copy.onnx"
    shutil.copy(ref, copy)
    out = tmp_path / "b.json"
    r = _bisect(copy, "--against", ref, "--json", out)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["ok"] and rep["first_failing"] is None and rep["final_ok"] and rep["compared"] == 2 * N_BLOCKS
    # no --against, no manifest: the same graph with ONNX Runtime optimisations disabled
    rep = run_bisect(ref)
    assert rep["ok"] and rep["same_graph"] and "ORT_DISABLE_ALL" in rep["reference"]


def test_fp16_tensors_are_compared_and_inserted_casts_skipped(tmp_path):
    ref = chain(tmp_path / "ref.onnx")
    art = chain(tmp_path / "art16.onnx", fp16_relu=3)
    write_manifest(art, {"kind": "test", "model": {"name": "chain"}, "inputs": [], "outputs": [],
                         "batch": {"dynamic": False, "min": 1, "opt": 1, "max": 1},
                         "precision": {"mode": "fp16", "source": {"file": "ref.onnx",
                                                                      "sha256": sha256_file(ref)}}})
    rep = run_bisect(art)  # reference: the manifest's FP32 source; fp16 tolerance
    assert rep["reference_path"] == str(tmp_path / "ref.onnx") and rep["precision"] == "fp16"
    assert rep["tolerance"]["rtol"] == 1e-2 and rep["ok"], rep["first_failing"]
    assert rep["skipped"]["only_in_artifact"] == 2 and rep["candidates"] == 2 * N_BLOCKS  # the two Cast outputs
    # at an fp32 tolerance the float16 relu is the first tensor over it; its float32 input passes
    rep = run_bisect(art, rtol=1e-5, atol=0.0)
    first = rep["first_failing"]
    assert first["node"]["name"] == "relu3" and first["node"]["op_type"] == "Relu"
    assert first["tensor"] == "r3" and 0 < first["stats"]["max_rel"] < 1e-2
    assert first["inputs_not_compared"] == ["c3_to16"]


def test_manifest_source_problems_exit_2(tmp_path):
    ref = chain(tmp_path / "ref.onnx")
    art = chain(tmp_path / "art.onnx", perturb=7)
    manifest = {"kind": "test", "model": {"name": "chain"}, "inputs": [], "outputs": [],
                "batch": {"dynamic": False, "min": 1, "opt": 1, "max": 1},
                "precision": {"mode": "int8", "source": {"file": "missing.onnx"}}}
    write_manifest(art, manifest)
    _one_line_error(_bisect(art), "missing.onnx", "precision.source.file", "no such file")
    manifest["precision"]["source"] = {"file": str(ref), "sha256": "0" * 64}
    write_manifest(art, manifest)
    _one_line_error(_bisect(art), "FP32 source", "sha256 000000000000")
    manifest["precision"]["source"] = {"file": "ref.onnx", "sha256": sha256_file(ref)}
    write_manifest(art, manifest)
    r = _bisect(art)
    assert r.exit_code == 1 and "node 'conv7' (Conv)" in r.output and "default for int8" in r.output


def test_bad_bisect_usage_exits_2(tmp_path):
    ref = chain(tmp_path / "ref.onnx")
    _one_line_error(_bisect(ref, "--against", tmp_path / "nope.onnx"), "--against", "no such file")
    _one_line_error(_bisect(ref, "--window", "0"), "--window", "positive")
    _one_line_error(_bisect(ref, "--rtol", "-1"), "--rtol")
    _one_line_error(CliRunner().invoke(main, ["parity", str(ref), "--rtol", "0.1"]), "--rtol", "--bisect")
    (tmp_path / "bad.onnx").write_bytes(b"not a protobuf")
    _one_line_error(_bisect(tmp_path / "bad.onnx", "--against", ref), "bad.onnx", "expected")


# -- the demo detector ------------------------------------------------------------------


@pytest.fixture()
def detector_onnx(demo_detector_onnx) -> Path:
    return demo_detector_onnx  # exported once per session (tests/conftest.py)


def test_detector_bisect_names_the_perturbed_backbone_conv(detector_onnx, tmp_path):
    model = onnx.load(str(detector_onnx))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    target = convs[3]  # early in the backbone
    weights = {t.name: t for t in model.graph.initializer}
    assert target.input[1] in weights and "backbone" in target.input[1]
    w = numpy_helper.to_array(weights[target.input[1]]).copy()
    w.flat[0] += 0.05 + 0.05 * np.abs(w).max()
    weights[target.input[1]].CopyFrom(numpy_helper.from_array(w, target.input[1]))
    art = tmp_path / "det_perturbed.onnx"
    onnx.save(model, str(art))
    write_manifest(art, read_manifest(detector_onnx))
    out = tmp_path / "b.json"
    r = _bisect(art, "--against", detector_onnx, "--threads", "2", "--json", out)
    assert r.exit_code == 1, r.output
    rep = json.loads(out.read_text())
    first = rep["first_failing"]
    assert first["node"]["name"] == target.name and first["node"]["op_type"] == "Conv"
    assert first["tensor"] == target.output[0]
    assert rep["inputs"].startswith("1 of 20 held-out") and rep["candidates"] > 300
    assert len(rep["probes"]) <= 2 + math.ceil(math.log2(rep["candidates"]))


def test_detector_bisect_optimised_vs_unoptimised_passes(detector_onnx):
    """FP32 artifact, no source: ORT_ENABLE_ALL against ORT_DISABLE_ALL of the same graph.
    TopK near-ties reorder proposals: those tensors are flagged as reordered, not failing."""
    rep = run_bisect(detector_onnx, threads=2)
    assert rep["same_graph"] and rep["first_failing"] is None and rep["final_ok"] and rep["ok"]
    assert rep["compared"] > 100
