"""``deploykit build``: compile an exported ONNX file into a TensorRT 11 engine (``.plan``).

TensorRT 11 is strongly typed: the precision is the ONNX graph's (fp16 casts,
int8 Q/DQ), so the build is parse + build, with no precision flags. First, on
the CPU, the graph is checked against TensorRT's ONNX-parser support matrix
(:mod:`deploykit.export.trt_support`): a graph the parser would refuse stops
here (exit 1, every violation listed) before TensorRT is even looked for. Then
``init_libnvinfer_plugins`` (RoiAlign imports as the ``ROIAlign_TRT`` plugin)
-> ``Builder`` -> ``create_network()`` -> ``OnnxParser.parse`` -> builder config
(workspace limit, one optimisation profile from the manifest's batch range,
timing cache) -> ``build_serialized_network``. The plan is written atomically
and its manifest (``X.plan.json``) records the TensorRT version, GPU, source ONNX
sha256 and the standard plugins the engine needs.

No torch here.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInput, CheckFailed, expected_got
from ..export.trt_support import Readiness, check_readiness, report_text
from ..fileio import sha256_file, write_bytes_atomic
from ..manifest import manifest_path, read_manifest, write_artifact
from ..runtime.tensorrt import gpu_info, init_plugins, require, trt_logger
from .profiles import profile_shapes

DEFAULT_WORKSPACE_MB = 1024


def plan_manifest(onnx_manifest: dict[str, Any], *, onnx_sha256: str, trt_version: str, gpu: str,
                  compute_capability: str, workspace_mb: int, plugins: list[str] | None = None) -> dict[str, Any]:
    """The plan's manifest: a copy of the ONNX manifest, artifact format ``tensorrt-plan``, plus ``tensorrt``.

    ``tensorrt.plugins`` lists the standard-library plugins the engine uses (e.g.
    ``["ROIAlign_TRT v2"]``) and ``tensorrt.needs_standard_plugins`` says whether a
    runtime must call ``initLibNvInferPlugins`` before deserialising it.
    """
    manifest = copy.deepcopy(onnx_manifest)
    manifest["artifact"] = {"format": "tensorrt-plan"}  # file and sha256 are filled in by write_manifest
    manifest["tensorrt"] = {
        "version": trt_version,
        "gpu": gpu,
        "compute_capability": compute_capability,
        "source_onnx": onnx_manifest.get("artifact", {}).get("file"),
        "source_onnx_sha256": onnx_sha256,
        "workspace_mb": workspace_mb,
        "plugins": list(plugins or []),
        "needs_standard_plugins": bool(plugins),
    }
    return manifest


def check_ready(onnx_path: Path, data: bytes, onnx_manifest: dict[str, Any],
                echo: Callable[[str], None] = print) -> Readiness:
    """TensorRT readiness of the ONNX file (CPU only): echo each violation, raise CheckFailed (exit 1) if any."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and friends
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(expected_got(f"ONNX model {onnx_path}", "an ONNX protobuf", f"unreadable ({first})")) from None
    readiness = check_readiness(model, onnx_manifest)
    if not readiness.ok:
        for line in report_text(readiness, onnx_path.name)[:-1]:
            echo(line)
        raise CheckFailed(expected_got(f"ONNX model {onnx_path}", "a graph inside TensorRT's ONNX-parser support "
                                       "matrix", f"{len(readiness.violations)} violation(s), listed above"))
    return readiness


def build_engine(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, *,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, timing_cache: str | os.PathLike | None = None,
                 verbose: bool = False, echo: Callable[[str], None] = print,
                 opt_image_size: tuple[int, int] | None = None) -> Path:
    """Build ``plan_path`` from ``onnx_path`` (with its manifest); return the plan's path.

    The optimisation profile comes from the manifest: batch range, and for dynamic-size
    detectors the image size range (min/opt/max; ``opt_image_size`` overrides opt).

    Raises CheckFailed (exit 1) when the graph breaks the TensorRT-readiness
    rules (checked first, without TensorRT; each violation echoed on its own
    line), e.g. an ``--ort-lowering`` graph (for ONNX Runtime CPU only). Raises
    BadInput (one line) for a missing ONNX file or manifest, a bad workspace
    size, an ONNX file TensorRT's parser still refuses (each parser error is
    echoed first, one per line), and when TensorRT, cuda-python or a GPU is
    missing (naming which, and ``pip install 'deploykit[tensorrt]'``).
    Nothing is written unless the build succeeds.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise BadInput(expected_got(f"ONNX model {onnx_path}", "an existing .onnx file exported by deploykit",
                                    "a directory" if onnx_path.is_dir() else "no such file"))
    if plan_path.suffix.lower() not in (".plan", ".engine"):
        raise BadInput(expected_got(f"output {plan_path}", "a file ending in .plan or .engine",
                                    repr(plan_path.suffix or "no suffix")))
    if plan_path.resolve() == onnx_path.resolve() or manifest_path(plan_path, legacy=False).resolve() == \
            manifest_path(onnx_path).resolve():
        raise BadInput(expected_got(f"output {plan_path}", "a path whose manifest differs from the ONNX file's "
                                    f"({manifest_path(onnx_path).name}; each artifact has its own manifest)",
                                    plan_path.name))
    if not isinstance(workspace_mb, int) or workspace_mb < 1:
        raise BadInput(expected_got("--workspace-mb", "a positive number of MiB", repr(workspace_mb)))
    onnx_manifest = read_manifest(onnx_path)  # verifies the sha256
    shapes = profile_shapes(onnx_manifest, opt_image_size)
    data = onnx_path.read_bytes()
    readiness = check_ready(onnx_path, data, onnx_manifest, echo)
    require("deploykit build")

    import tensorrt as trt

    gpu, cc = gpu_info()
    logger = trt_logger(trt, verbose)
    init_plugins(trt, logger)  # before parsing: RoiAlign imports as the ROIAlign_TRT plugin
    builder = trt.Builder(logger)
    network = builder.create_network()  # TensorRT 11: strongly typed, explicit batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data, str(onnx_path)):
        for i in range(parser.num_errors):
            echo(f"  parser: {str(parser.get_error(i)).strip().splitlines()[0]}")
        raise BadInput(expected_got(f"ONNX model {onnx_path}", "a graph the TensorRT ONNX parser accepts",
                                    f"{parser.num_errors} parser error(s), listed above"))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if tensor.name in shapes:
            profile.set_shape(tensor.name, *shapes[tensor.name])
        elif any(d < 0 for d in tensor.shape):
            raise BadInput(expected_got(f"network input {tensor.name!r}", "a shape in the manifest's inputs",
                                        f"dynamic shape {list(tensor.shape)} not in the manifest"))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)

    echo(f"building {plan_path.name} with TensorRT {trt.__version__} on {gpu} (sm {cc}) …")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BadInput(expected_got(f"TensorRT build of {onnx_path}", "a serialized engine",
                                    "a failed build (run with --verbose for TensorRT's log)"))
    if cache_path is not None:
        write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    # the plan and its manifest are published together: a kill leaves the old pair or the new one
    write_artifact(plan_path, lambda staged: staged.write_bytes(bytes(serialized)),
                   plan_manifest(onnx_manifest, onnx_sha256=sha256_file(onnx_path), trt_version=trt.__version__,
                                 gpu=gpu, compute_capability=cc, workspace_mb=workspace_mb,
                                 plugins=readiness.plugins))
    return plan_path
