"""Shared fixtures; GPU/TensorRT tests skip with a reason where those are missing."""

from __future__ import annotations

import importlib.util
import shutil

import pytest


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def pytest_collection_modifyitems(config, items):
    has_trt = importlib.util.find_spec("tensorrt") is not None
    skip_trt = pytest.mark.skip(reason="TensorRT Python package not installed (pip install deploykit[tensorrt])")
    skip_gpu = pytest.mark.skip(reason="no NVIDIA GPU on this machine")
    for item in items:
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
        if "gpu" in item.keywords and not _has_gpu():
            item.add_marker(skip_gpu)


@pytest.fixture()
def run_in_threads():
    """``run(worker, n)``: start ``worker(t)`` in n threads released together; re-raise any error."""
    import threading

    def run(worker, n: int) -> None:
        start = threading.Barrier(n)
        errors: list[BaseException] = []

        def wrapped(t: int) -> None:
            try:
                start.wait()
                worker(t)
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=wrapped, args=(t,)) for t in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors

    return run


@pytest.fixture(scope="session")
def demo_detector_onnx(tmp_path_factory):
    """fasterrcnn_demo (bundled checkpoint) exported at 320x320, FP32, once per session."""
    from deploykit import models
    from deploykit.export.detector import export_detector, model_info

    ckpt = models.resolve_checkpoint("fasterrcnn_demo", None)
    kwargs = {"min_size": 320, "max_size": 320}
    net = models.build("fasterrcnn_demo", ckpt, **kwargs)
    path = tmp_path_factory.mktemp("demo_detector") / "det.onnx"
    export_detector(net, path, input_size=(320, 320), model_info=model_info("fasterrcnn_demo", ckpt, kwargs))
    return path


@pytest.fixture(scope="session")
def demo_generator_onnx(tmp_path_factory):
    """spade_demo (bundled checkpoint) exported, FP32, once per session."""
    from deploykit.export.spade import export_spade

    path = tmp_path_factory.mktemp("demo_generator") / "gen.onnx"
    export_spade("spade_demo", path)
    return path
