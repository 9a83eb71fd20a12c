"""deploykit.runtime.cpu: the CPU class of ONNX Runtime's integer kernels, and Session's warning.

Every test forces the CPU flags or class: nothing here depends on the machine running it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deploykit.manifest import write_manifest
from deploykit.runtime import cpu, load

ZEN5 = ("fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl "
        "avx_vnni avx512_bf16 avx512vbmi avx512_vnni").split()  # this project's build machine
ZEN2 = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 sha_ni".split()  # AVX2-only EPYC (CI)
SKYLAKE_SP = "fpu sse2 ssse3 fma sse4_2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl".split()
CASCADE_LAKE = SKYLAKE_SP + ["avx512_vnni"]
SAPPHIRE_RAPIDS = CASCADE_LAKE + ["avx_vnni", "amx_tile", "amx_int8", "amx_bf16"]
ALDER_LAKE = ZEN2 + ["avx_vnni"]  # AVX-VNNI without AVX-512
NEHALEM = "fpu sse sse2 ssse3 sse4_1 sse4_2".split()


@pytest.mark.parametrize("flags, expected", [
    (ZEN5, cpu.X86_VNNI), (CASCADE_LAKE, cpu.X86_VNNI), (SAPPHIRE_RAPIDS, cpu.X86_VNNI), (ALDER_LAKE, cpu.X86_VNNI),
    (ZEN2, cpu.X86_NO_VNNI), (SKYLAKE_SP, cpu.X86_NO_VNNI), (NEHALEM, cpu.X86_NO_VNNI),
    # MLAS's AVX-512 core kernels (saturating) replace its AVX-VNNI ones unless AVX-512 VNNI is there too
    (SKYLAKE_SP + ["avx_vnni"], cpu.X86_NO_VNNI),
])
def test_classify_flags(flags, expected):
    assert cpu.classify_flags(flags) == expected
    assert cpu.cpu_class(flags, machine="x86_64") == expected


def test_cpu_flags_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: " + " ".join(ZEN2) +
                    "\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu.cpu_flags(info) == set(ZEN2)  # the first processor's
    assert cpu.cpu_flags(tmp_path / "missing") is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpu.cpu_flags(tmp_path / "noflags") is None


def test_other_machines_and_unreadable_flags(monkeypatch):
    assert cpu.cpu_class(ZEN5, machine="aarch64") == cpu.NON_X86
    monkeypatch.setattr(cpu, "cpu_flags", lambda *a: None)
    assert cpu.cpu_class(machine="AMD64") == cpu.UNKNOWN


def _manifest(**record) -> dict:
    return {"precision": {"mode": "int8", "ort_lowering": record}}


@pytest.mark.parametrize("record, this, warns, needle", [
    ({"lowering": "u8s8", "cpu_class": "x86-vnni"}, cpu.X86_VNNI, False, None),
    ({"lowering": "u8s8", "cpu_class": "x86-vnni"}, cpu.X86_NO_VNNI, True, "outputs can be wrong"),
    ({"lowering": "u8s8", "cpu_class": "x86-vnni"}, cpu.UNKNOWN, True, "cannot be read"),
    ({"lowering": "u8u8", "cpu_class": "x86"}, cpu.X86_VNNI, False, None),
    ({"lowering": "u8u8", "cpu_class": "x86"}, cpu.X86_NO_VNNI, False, None),
    ({"lowering": "u8u8", "cpu_class": "x86"}, cpu.UNKNOWN, False, None),
    ({"lowering": "u8u8", "cpu_class": "x86"}, cpu.NON_X86, True, "not checked"),
    ({"output_qdq_pairs": 17}, cpu.X86_NO_VNNI, True, "outputs can be wrong"),  # lowered before classes existed
])
def test_lowering_mismatch(record, this, warns, needle):
    message = cpu.lowering_mismatch(_manifest(**record), this)
    assert (message is not None) == warns, message
    if warns:
        assert needle in message and this in message and "--ort-cpu x86" in message
    assert cpu.lowering_mismatch({"precision": {"mode": "int8"}}, this) is None
    assert cpu.lowering_mismatch(None, this) is None


def _identity_artifact(path: Path, manifest_precision: dict) -> Path:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    write_manifest(path, {"kind": "test", "model": {"name": "identity"},
                          "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 2]}],
                          "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 2]}],
                          "batch": {"dynamic": False, "min": 1, "opt": 1, "max": 1},
                          "precision": manifest_precision})
    return path


@pytest.mark.parametrize("this, expected_warnings", [(cpu.X86_NO_VNNI, 1), (cpu.X86_VNNI, 0)])
def test_session_warns_once_per_artifact(tmp_path, monkeypatch, this, expected_warnings):
    monkeypatch.setattr(cpu, "cpu_class", lambda *a, **k: this)
    path = _identity_artifact(tmp_path / "lowered.onnx", _manifest(lowering="u8s8", cpu_class="x86-vnni")["precision"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with load(path) as session:
                np.testing.assert_array_equal(session.run({"x": np.ones((1, 2), np.float32)})["y"], 1)
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning) and "lowered for ONNX Runtime" in str(w.message)]
    assert len(ours) == expected_warnings, [str(w.message) for w in caught]
    if ours:
        assert "lowered.onnx" in str(ours[0].message) and "x86-no-vnni" in str(ours[0].message)
