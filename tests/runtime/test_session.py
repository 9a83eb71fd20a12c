"""deploykit.runtime.load / Session on ONNX Runtime, with tiny ONNX models built here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import deploykit
from deploykit.errors import BadInput
from deploykit.manifest import write_manifest
from deploykit.runtime import Session, TensorSpec, load

REPO = Path(deploykit.__file__).resolve().parent.parent


# -- tiny model zoo ----------------------------------------------------------

def save_model(path: Path, nodes, inputs, outputs, initializers=()) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="deploykit-tests")
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def make_add_model(path: Path, *, batch_max: int | None = 4) -> Path:
    """z = 2 * a + b (a, b float32 [batch, 4]); k1 = k + 1 (k int64 [2], static)."""
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    save_model(
        path,
        [helper.make_node("Mul", ["a", "two"], ["a2"]), helper.make_node("Add", ["a2", "b"], ["z"]),
         helper.make_node("Add", ["k", "one"], ["k1"])],
        [helper.make_tensor_value_info("a", f32, ["batch", 4]), helper.make_tensor_value_info("b", f32, ["batch", 4]),
         helper.make_tensor_value_info("k", i64, [2])],
        [helper.make_tensor_value_info("z", f32, ["batch", 4]), helper.make_tensor_value_info("k1", i64, [2])],
        [numpy_helper.from_array(np.float32(2.0).reshape(()), "two"),
         numpy_helper.from_array(np.int64(1).reshape(()), "one")],
    )
    if batch_max is not None:
        write_manifest(path, {
            "kind": "test", "model": {"name": "add"},
            "inputs": [{"name": "a", "dtype": "float32", "shape": ["batch", 4]},
                       {"name": "b", "dtype": "float32", "shape": ["batch", 4]},
                       {"name": "k", "dtype": "int64", "shape": [2]}],
            "outputs": [{"name": "z", "dtype": "float32", "shape": ["batch", 4]},
                        {"name": "k1", "dtype": "int64", "shape": [2]}],
            "batch": {"dynamic": True, "min": 1, "opt": 2, "max": batch_max},
        })
    return path


def make_mlp_model(path: Path, seed: int = 0) -> Path:
    """y = tanh(x @ W1) @ W2, x float32 [batch, 64] -> y [batch, 16]."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((64, 128)).astype(np.float32) / 8
    w2 = rng.standard_normal((128, 16)).astype(np.float32) / 8
    f32 = TensorProto.FLOAT
    return save_model(
        path,
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
         helper.make_node("MatMul", ["t", "w2"], ["y"])],
        [helper.make_tensor_value_info("x", f32, ["batch", 64])],
        [helper.make_tensor_value_info("y", f32, ["batch", 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )


@pytest.fixture
def add_model(tmp_path: Path) -> Path:
    return make_add_model(tmp_path / "add.onnx")


def good_feed(batch: int = 2) -> dict[str, np.ndarray]:
    a = np.arange(batch * 4, dtype=np.float32).reshape(batch, 4)
    return {"a": a, "b": np.ones((batch, 4), np.float32), "k": np.array([3, 4], np.int64)}


def one_line_bad_input(fn, *parts: str) -> str:
    """Call fn; it must raise BadInput with a one-line message containing every part."""
    with pytest.raises(BadInput) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    # no chained traceback from the backend: either no context or it is suppressed (raise ... from None)
    assert info.value.__context__ is None or info.value.__suppress_context__, repr(info.value.__context__)
    return message


# -- import hygiene ----------------------------------------------------------

def test_runtime_imports_no_torch():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    code = ("import deploykit.runtime, deploykit.runtime.infer, deploykit.runtime.draw, sys; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported'")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- loading -----------------------------------------------------------------

def test_specs_manifest_and_run(add_model: Path):
    with load(add_model, threads=1) as session:
        assert isinstance(session, Session)
        assert session.inputs == [TensorSpec("a", np.dtype(np.float32), ("batch", 4)),
                                  TensorSpec("b", np.dtype(np.float32), ("batch", 4)),
                                  TensorSpec("k", np.dtype(np.int64), (2,))]
        assert [(s.name, s.dtype, s.shape) for s in session.outputs] == [
            ("z", np.dtype(np.float32), ("batch", 4)), ("k1", np.dtype(np.int64), (2,))]
        assert session.manifest["kind"] == "test" and session.manifest["batch"]["max"] == 4
        assert session.providers == ["CPUExecutionProvider"]
        feed = good_feed(3)
        out = session.run(feed)
        assert list(out) == ["z", "k1"]
        np.testing.assert_array_equal(out["z"], 2 * feed["a"] + 1)
        np.testing.assert_array_equal(out["k1"], [4, 5])
        # non-contiguous inputs are fine
        out = session.run({**feed, "a": np.asfortranarray(feed["a"])})
        np.testing.assert_array_equal(out["z"], 2 * feed["a"] + 1)
    one_line_bad_input(lambda: session.run(feed), "session add.onnx", "closed")


def test_no_manifest_means_none_and_no_batch_limit(tmp_path: Path):
    path = make_add_model(tmp_path / "bare.onnx", batch_max=None)
    session = load(path)
    assert session.manifest is None
    assert session.run(good_feed(9))["z"].shape == (9, 4)


def test_default_providers_and_bad_providers(add_model: Path):
    assert load(add_model).providers[-1] == "CPUExecutionProvider"
    one_line_bad_input(lambda: load(add_model, providers=["CUDAExecutionProvider"]),
                       "providers", "CUDAExecutionProvider", "not available")
    one_line_bad_input(lambda: load(add_model, providers=[]), "providers", "non-empty")
    one_line_bad_input(lambda: load(add_model, threads=0), "threads", "positive int", "0")


# -- feed validation: every error path, one line each -------------------------

FEED_ERRORS = [
    ("missing", lambda f: {k: v for k, v in f.items() if k != "b"}, ["input 'b'", "missing", "['a', 'b', 'k']"]),
    ("extra", lambda f: {**f, "q": f["a"]}, ["input 'q'", "unknown name", "['a', 'b', 'k']"]),
    ("dtype", lambda f: {**f, "a": f["a"].astype(np.float64)},
     ["input 'a'", "expected float32 [batch, 4]", "got float64 [2, 4]", "wrong dtype"]),
    ("rank", lambda f: {**f, "a": f["a"].reshape(-1)}, ["input 'a'", "expected float32 [batch, 4]", "rank 1"]),
    ("static dim", lambda f: {**f, "k": np.array([1, 2, 3], np.int64)},
     ["input 'k'", "expected int64 [2]", "got int64 [3]", "dim 0"]),
    ("static dim 1", lambda f: {**f, "a": np.zeros((2, 5), np.float32)}, ["input 'a'", "got float32 [2, 5]", "dim 1"]),
    ("symbolic", lambda f: {**f, "b": np.ones((3, 4), np.float32)},
     ["input 'b' dim 0 (batch)", "expected 2 as in input 'a'", "got 3"]),
    ("batch max", lambda f: {k: (np.zeros((5, 4), np.float32) if k in "ab" else v) for k, v in f.items()},
     ["input 'a' batch", "expected 1..4 (manifest batch range)", "got 5"]),
    ("batch zero", lambda f: {k: (np.zeros((0, 4), np.float32) if k in "ab" else v) for k, v in f.items()},
     ["input 'a' batch", "got 0"]),
    ("not an array", lambda f: {**f, "a": f["a"].tolist()}, ["input 'a'", "numpy.ndarray", "got list"]),
]


@pytest.mark.parametrize("mutate,parts", [e[1:] for e in FEED_ERRORS], ids=[e[0] for e in FEED_ERRORS])
def test_feed_errors(add_model: Path, mutate, parts):
    session = load(add_model)
    one_line_bad_input(lambda: session.run(mutate(good_feed(2))), *parts)


def test_feed_not_a_dict(add_model: Path):
    one_line_bad_input(lambda: load(add_model).run([np.zeros(4)]), "feed", "a dict", "got list")


# -- bad artifacts -----------------------------------------------------------

def test_missing_file_and_directory(tmp_path: Path):
    one_line_bad_input(lambda: load(tmp_path / "nope.onnx"), "nope.onnx", "no such file")
    one_line_bad_input(lambda: load(tmp_path), "a directory")


def test_unknown_suffix(tmp_path: Path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    one_line_bad_input(lambda: load(path), "model.pt", ".onnx", "'.pt'")


def test_plan_needs_tensorrt(tmp_path: Path):
    path = tmp_path / "model.plan"
    path.write_bytes(b"\0" * 64)
    one_line_bad_input(lambda: load(path), "TensorRT engine", "tensorrt", "GPU")


@pytest.mark.parametrize("kind", ["truncated", "garbage", "text", "empty", "image"])
def test_corrupt_onnx(tmp_path: Path, kind: str):
    good = make_mlp_model(tmp_path / "good.onnx").read_bytes()
    data = {
        "truncated": good[: len(good) // 2],
        "garbage": np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text": b"this is not a model\n" * 20,
        "empty": b"",
        "image": b"\x89PNG\r\n\x1a\n" + b"\0" * 100,
    }[kind]
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    one_line_bad_input(lambda: load(path), f"ONNX model {path}", "expected a valid ONNX file")


def test_sha256_mismatch(tmp_path: Path):
    path = make_add_model(tmp_path / "m.onnx")
    make_mlp_model(path)  # replace the artifact; the manifest still describes the old one
    message = one_line_bad_input(lambda: load(path), "manifest", "m.json", "sha256")
    assert "artifact changed" in message


def test_manifest_not_json(tmp_path: Path):
    path = make_mlp_model(tmp_path / "m.onnx")
    path.with_suffix(".json").write_text("{not json")
    one_line_bad_input(lambda: load(path), "manifest", "valid JSON")


# -- threads -----------------------------------------------------------------

def test_thread_safety_8x50(tmp_path: Path, run_in_threads):
    session = load(make_mlp_model(tmp_path / "mlp.onnx"), threads=1)
    rng = np.random.default_rng(7)
    feeds = [[rng.standard_normal((1 + (t + i) % 3, 64)).astype(np.float32) for i in range(50)] for t in range(8)]
    expected = [[session.run({"x": x})["y"] for x in per_thread] for per_thread in feeds]
    got: list[list[np.ndarray | None]] = [[None] * 50 for _ in range(8)]

    def worker(t: int) -> None:
        for i, x in enumerate(feeds[t]):
            got[t][i] = session.run({"x": x})["y"]

    run_in_threads(worker, 8)
    for t in range(8):
        for i in range(50):
            np.testing.assert_array_equal(got[t][i], expected[t][i], err_msg=f"thread {t} request {i}")
