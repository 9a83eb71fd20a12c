"""Shared fixtures; GPU/TensorRT tests skip with a reason where those are missing."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys

import pytest

#: A test report's property naming the tests that ran against TensorRT's real Python module (tests/trt_real.py).
_REAL_TRT = ("tensorrt_bindings", "used")
_USES_BEFORE = pytest.StashKey[int]()


def _trt_uses() -> int:
    module = sys.modules.get("trt_real")
    return getattr(module, "USES", 0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    item.stash[_USES_BEFORE] = _trt_uses()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if call.when == "call" and _trt_uses() > item.stash.get(_USES_BEFORE, 0):
        report.user_properties.append(_REAL_TRT)


def pytest_terminal_summary(terminalreporter):
    """One line saying how many tests checked deploykit's TensorRT calls against TensorRT's real module."""
    outcomes = {key: sum(1 for r in terminalreporter.stats.get(key, [])
                         if getattr(r, "when", "") == "call" and _REAL_TRT in map(tuple, r.user_properties))
                for key in ("passed", "failed")}
    try:
        version = importlib.metadata.version("tensorrt-cu13-bindings")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is None:
        terminalreporter.write_line("== TensorRT's real Python module: tensorrt-cu13-bindings not installed, "
                                    "its tests skipped")
    elif outcomes["passed"] or outcomes["failed"]:
        terminalreporter.write_line(f"== TensorRT's real Python module (tensorrt-cu13-bindings {version}, over stub "
                                    f"libraries): {outcomes['passed']} tests passed against it, "
                                    f"{outcomes['failed']} failed")


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


def _export_demo_detector(tmp_path_factory, filename: str, build_kwargs: dict, **export_kwargs):
    """fasterrcnn_demo (bundled checkpoint) built with ``build_kwargs``, exported FP32 to a new folder."""
    from deploykit import models
    from deploykit.export.detector import export_detector, model_info

    ckpt = models.resolve_checkpoint("fasterrcnn_demo", None)
    net = models.build("fasterrcnn_demo", ckpt, **build_kwargs)
    path = tmp_path_factory.mktemp("demo_detector") / filename
    export_detector(net, path, model_info=model_info("fasterrcnn_demo", ckpt, build_kwargs), **export_kwargs)
    return path


CANVAS_320 = {"min_size": 320, "max_size": 320}


@pytest.fixture(scope="session")
def demo_detector_onnx(tmp_path_factory):
    """fasterrcnn_demo (bundled checkpoint) exported at 320x320, FP32, once per session."""
    return _export_demo_detector(tmp_path_factory, "det.onnx", CANVAS_320, input_size=(320, 320))


@pytest.fixture(scope="session")
def demo_detector_batch_onnx(tmp_path_factory):
    """fasterrcnn_demo (bundled checkpoint) exported at 320x320 with a dynamic batch of 1..4, FP32, once per
    session."""
    return _export_demo_detector(tmp_path_factory, "det_b4.onnx", CANVAS_320, input_size=(320, 320),
                                 dynamic_batch=4)


@pytest.fixture(scope="session")
def demo_detector_pixels_onnx(tmp_path_factory):
    """fasterrcnn_demo (bundled checkpoint) exported pixels-in: uint8 image [batch, height, width, 3] of any
    size (the model's own resize), batch 1..4, FP32, once per session."""
    return _export_demo_detector(tmp_path_factory, "pix.onnx", {}, input="image", dynamic_batch=4)


@pytest.fixture(scope="session")
def demo_detector_list_onnx(tmp_path_factory):
    """fasterrcnn_demo (bundled checkpoint) as built, exported image-list: images of different sizes in one
    call (``image`` [batch, height, width, 3] + ``image_hw`` + ``canvas``), batch 1..8, FP32, once per session."""
    return _export_demo_detector(tmp_path_factory, "list.onnx", {}, input="image-list", dynamic_batch=8)


MASK_RANGE = ((32, 32), (2048, 2048))  # batch 4 x 100 pasted masks of the largest image fits one tensor


def _export_demo_maskrcnn(tmp_path_factory, filename: str, **export_kwargs):
    """maskrcnn_demo (bundled checkpoint) as built, pixels-in, dynamic size and batch 1..4, FP32."""
    from deploykit import models
    from deploykit.export.detector import export_detector, model_info

    ckpt = models.resolve_checkpoint("maskrcnn_demo", None)
    net = models.build("maskrcnn_demo", ckpt)
    path = tmp_path_factory.mktemp("demo_maskrcnn") / filename
    export_detector(net, path, input="image", dynamic_batch=4, image_size_range=MASK_RANGE,
                    model_info=model_info("maskrcnn_demo", ckpt, {}), class_names=models_class_names(net),
                    **export_kwargs)
    return path


def models_class_names(net):
    from deploykit.export.detector import detector_class_names

    return detector_class_names("maskrcnn_demo", net)


@pytest.fixture(scope="session")
def demo_maskrcnn_onnx(tmp_path_factory):
    """maskrcnn_demo exported as `deploykit export` does by default: masks pasted in the graph, uint8 0/1."""
    return _export_demo_maskrcnn(tmp_path_factory, "mask.onnx")


@pytest.fixture(scope="session")
def demo_maskrcnn_probs_onnx(tmp_path_factory):
    """maskrcnn_demo with both mask forms: pasted probabilities (no threshold) and the compact outputs."""
    return _export_demo_maskrcnn(tmp_path_factory, "mask_probs.onnx", masks="both", mask_threshold=None)


@pytest.fixture(scope="session")
def demo_generator_onnx(tmp_path_factory):
    """spade_demo (bundled checkpoint) exported, FP32, once per session."""
    from deploykit.export.spade import export_spade

    path = tmp_path_factory.mktemp("demo_generator") / "gen.onnx"
    export_spade("spade_demo", path)
    return path


@pytest.fixture()
def precision_summary():
    """``summary['precision']`` as ``deploykit demo`` writes it (made-up numbers, one INT8 budget missed)."""
    checks = [
        {"precision": "fp16", "model": "fasterrcnn_demo", "metric": "mAP@[.5:.95] drop (points)", "value": 0.0528,
         "op": "<=", "limit": 0.2, "ok": True},
        {"precision": "fp16", "model": "spade_demo", "metric": "PSNR mean vs FP32 PyTorch (dB)", "value": 84.896,
         "op": ">=", "limit": 45.0, "ok": True},
        {"precision": "int8", "model": "fasterrcnn_demo", "metric": "mAP@[.5:.95] drop (points)", "value": 1.234,
         "op": "<=", "limit": 1.0, "ok": False},
        {"precision": "int8", "model": "spade_demo", "metric": "PSNR mean vs FP32 PyTorch (dB)", "value": 51.915,
         "op": ">=", "limit": 30.0, "ok": True},
    ]
    det_rows = {
        "fp32": {"onnx": "fasterrcnn_demo.onnx", "map": 0.850644, "map50": 0.978071, "drop": {"map": 0.0, "map50": 0.0},
                 "latency_ms": 107.04, "speedup": 9.368, "samples_ms": [107.04, 110.0, 105.5]},
        "fp16": {"onnx": "fasterrcnn_demo_fp16.onnx", "map": 0.850116, "map50": 0.978048,
                 "drop": {"map": 0.0528, "map50": 0.0023}, "latency_ms": 131.62, "speedup": 7.619,
                 "samples_ms": [131.62, 133.0, 130.0]},
        "int8": {"onnx": "fasterrcnn_demo_int8.onnx", "map": 0.838304, "map50": 0.978225,
                 "drop": {"map": 1.234, "map50": -0.0154}, "latency_ms": 159.48, "speedup": 6.288,
                 "samples_ms": [159.48, 160.0, 158.0]},
    }
    gen_rows = {
        "fp32": {"onnx": "spade_demo.onnx", "psnr_mean": 100.0, "psnr_min": 100.0, "ssim_mean": 1.0, "ssim_min": 1.0,
                 "latency_ms": 89.31, "speedup": 4.163, "samples_ms": [89.31, 90.0, 88.0]},
        "fp16": {"onnx": "spade_demo_fp16.onnx", "psnr_mean": 84.896, "psnr_min": 82.848, "ssim_mean": 0.9999999,
                 "ssim_min": 0.9999999, "latency_ms": 136.38, "speedup": 2.726, "samples_ms": [136.38, 137.0, 135.0]},
        "int8": {"onnx": "spade_demo_int8.onnx", "psnr_mean": 51.915, "psnr_min": 43.429, "ssim_mean": 0.998706,
                 "ssim_min": 0.995189, "latency_ms": 140.77, "speedup": 2.641, "samples_ms": [140.77, 141.0, 139.0]},
    }
    return {
        "calibration": {"samples": 64, "seed": 0, "method": "entropy", "default_samples": 128,
                        "source": "synthetic:synthetic_shapes seed=2000"},
        "budgets": {"fp16": {"map_drop": 0.2, "psnr_db": 45.0}, "int8": {"map_drop": 1.0, "psnr_db": 30.0}},
        "rounds": 3, "threads": 2,
        "detector": {"model": "fasterrcnn_demo", "images": 100, "data": "synthetic held-out",
                     "reference": {"map": 0.850644, "map50": 0.978071, "latency_ms": 1002.76, "speedup": 1.0,
                                   "samples_ms": [1002.76, 990.0, 1010.0]},
                     "rows": det_rows},
        "generator": {"model": "spade_demo", "images": 16, "data": "spade_demo held-out",
                      "reference": {"latency_ms": 371.8, "speedup": 1.0, "samples_ms": [371.8, 370.0, 375.0]},
                      "rows": gen_rows},
        "checks": checks,
        "tensorrt": {"skipped": "no `tensorrt` Python package"},
        "ok": False,
    }
