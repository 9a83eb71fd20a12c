"""`deploykit triton`: every written config.pbtxt parses into Triton's ModelConfig protobuf and agrees
with the graph's inputs/outputs (read here with `onnx`, not with the writer's code), per model family,
backend and precision; native-backend repositories cannot run here (no Triton ONNX Runtime / TensorRT
backend, no GPU), so parsing and I/O agreement are what is tested for them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto

from deploykit.cli import main
from deploykit.errors import BadInput
from deploykit.manifest import manifest_path, read_manifest, write_manifest
from deploykit.serving.pbtxt import dumps, quote
from deploykit.serving.repository import RepositoryOptions, write_repository

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed "
                         "(pip install 'deploykit[serving]')")
from google.protobuf import text_format  # noqa: E402 (comes with tritonclient[grpc])

ONNX_TYPES = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.FLOAT16: "TYPE_FP16", TensorProto.UINT8: "TYPE_UINT8",
              TensorProto.INT32: "TYPE_INT32", TensorProto.INT64: "TYPE_INT64"}


def parse(model_dir):
    """config.pbtxt -> ModelConfig (text_format raises on any unknown field or malformed value)."""
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def onnx_io(path):
    model = onnx.load(str(path), load_external_data=False)

    def spec(v):
        t = v.type.tensor_type
        return v.name, ONNX_TYPES[t.elem_type], [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]

    return [spec(v) for v in model.graph.input], [spec(v) for v in model.graph.output]


def dims_of(t):
    return list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)


def assert_graph_agrees(cfg, onnx_path):
    """Triton's view of each tensor (dims + batch axis) is the ONNX graph's tensor."""
    ins, outs = onnx_io(onnx_path)
    for tensors, graph in ((cfg.input, ins), (cfg.output, outs)):
        assert [t.name for t in tensors] == [g[0] for g in graph]
        for t, (name, dtype, shape) in zip(tensors, graph):
            assert mc.DataType.Name(t.data_type) == dtype, name
            if cfg.max_batch_size > 0:
                assert shape[0] in (-1, 1), (name, shape)
                assert dims_of(t) == shape[1:], (name, list(t.dims), shape)
            else:
                assert dims_of(t) == shape, (name, list(t.dims), shape)


def assert_pipeline_agrees(cfg, onnx_path, manifest):
    """The Python backend's deploykit interface, sized from the graph (K) and the manifest."""
    ins, outs = onnx_io(onnx_path)
    if manifest["kind"] == "detector":
        (image,) = cfg.input
        assert (image.name, mc.DataType.Name(image.data_type), list(image.dims), image.allow_ragged_batch) == \
            ("image", "TYPE_UINT8", [-1, -1, 3], True)
        k = dict((n, s) for n, _, s in outs)["boxes"][1]
        got = {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in cfg.output}
        assert got == {"num_detections": ("TYPE_INT32", [1]), "boxes": ("TYPE_FP32", [k, 4]),
                       "scores": ("TYPE_FP32", [k]), "labels": ("TYPE_INT32", [k])}
    else:
        graph = {n: (d, s) for n, d, s in ins}
        got = {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in cfg.input}
        assert got == {n: (d, s[1:]) for n, (d, s) in graph.items()}  # label_map / instance_map [H, W]
        (image,) = cfg.output
        h, w = manifest["preprocessing"]["input_size"]
        assert (image.name, mc.DataType.Name(image.data_type), list(image.dims)) == ("image", "TYPE_UINT8", [h, w, 3])


def check_model_dir(model_dir, artifact, backend):
    """Parse, I/O agreement, the files beside the config, and what the config says about the backend."""
    cfg = parse(model_dir)
    manifest = read_manifest(artifact)
    version = model_dir / "1"
    if backend == "python":
        assert_pipeline_agrees(cfg, artifact, manifest)
    else:
        assert_graph_agrees(cfg, artifact)
    copied = version / ("model.plan" if backend == "tensorrt" else "model.onnx")
    assert copied.read_bytes() == artifact.read_bytes()
    assert read_manifest(copied)["artifact"]["file"] == copied.name  # sha256 verified by read_manifest
    assert (cfg.backend, cfg.platform) == {"onnxruntime": ("onnxruntime", ""), "tensorrt": ("", "tensorrt_plan"),
                                           "python": ("python", ""), "python-graph": ("python", "")}[backend]
    assert (version / "model.py").exists() == backend.startswith("python")
    facts = json.loads(cfg.parameters["deploykit_manifest"].string_value)
    assert facts["kind"] == manifest["kind"] and facts.get("class_names") == manifest.get("class_names")
    if manifest["kind"] == "detector":
        labels = next(o for o in cfg.output if o.name == "labels")
        assert labels.label_filename == "labels.txt"
        assert (model_dir / "labels.txt").read_text().splitlines() == manifest["class_names"]
    (warm,) = cfg.model_warmup
    assert sorted(warm.inputs) == sorted(t.name for t in cfg.input if not t.optional)
    for name, w in warm.inputs.items():
        raw = (model_dir / "warmup" / w.input_data_file).read_bytes()
        dtype = np.dtype({"TYPE_FP32": "float32", "TYPE_UINT8": "uint8", "TYPE_INT32": "int32"}[
            mc.DataType.Name(w.data_type)])
        assert len(raw) == int(np.prod(w.dims)) * dtype.itemsize and all(d > 0 for d in w.dims), name
    (group,) = cfg.instance_group
    assert mc.ModelInstanceGroup.Kind.Name(group.kind) == ("KIND_CPU" if backend.startswith("python") else "KIND_GPU")
    return cfg


@pytest.mark.parametrize("backend", ["onnxruntime", "python", "python-graph"])
def test_fp32_configs_parse_and_agree_with_the_graphs(backend, demo_detector_onnx, demo_generator_onnx, tmp_path):
    dirs = write_repository([demo_detector_onnx, demo_generator_onnx], tmp_path / "repo",
                            options=RepositoryOptions(backend=backend))
    assert [d.name for d in dirs] == ["det", "gen"]
    for model_dir, artifact in zip(dirs, (demo_detector_onnx, demo_generator_onnx)):
        cfg = check_model_dir(model_dir, artifact, backend)
        # the demo exports have a static batch of 1: Triton batching is the pipeline's (python) or none
        assert cfg.max_batch_size == (8 if backend == "python" else 1)
        assert cfg.HasField("dynamic_batching") == (backend == "python")
        accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator
        if backend == "onnxruntime":
            assert [a.name for a in accel] == ["tensorrt"]
            assert dict(accel[0].parameters) == {"max_workspace_size_bytes": str(1024 << 20)}
        else:
            assert not accel


@pytest.fixture(scope="module")
def quantized(demo_detector_onnx, demo_generator_onnx, tmp_path_factory):
    """fp16 and int8 of both demo models (ModelOpt, 2 calibration samples: only their I/O matters here)."""
    pytest.importorskip("modelopt.onnx.quantization")
    from deploykit.data.calibration import calibration_feeds
    from deploykit.precision.convert import convert

    out, root = [], tmp_path_factory.mktemp("quantized")
    for src in (demo_detector_onnx, demo_generator_onnx):
        feeds = calibration_feeds(read_manifest(src), None, samples=2, seed=0, progress=False)[0]
        for precision in ("fp16", "int8"):
            dst = root / f"{src.stem}_{precision}.onnx"
            convert(src, dst, precision, feeds=feeds, calibration={"source": "test", "samples": 2})
            out.append(dst)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_fp16_int8_configs_parse_and_agree_with_the_graphs(backend, quantized, tmp_path):
    dirs = write_repository(quantized, tmp_path / "repo", options=RepositoryOptions(backend=backend))
    for model_dir, artifact in zip(dirs, quantized):
        cfg = check_model_dir(model_dir, artifact, backend)
        facts = json.loads(cfg.parameters["deploykit_manifest"].string_value)
        assert facts["precision"] == artifact.stem.rsplit("_", 1)[1]


def test_pixels_in_graph_config_needs_no_python(demo_detector_pixels_onnx, tmp_path):
    """A pixels-in export (uint8 image [batch, height, width, 3], boxes in the image's pixels): the native
    config takes the image as it is (-1 sides), batch range -> max_batch_size, a [B] output as dims [1] +
    reshape [], TensorRT profiles from the manifest's batch and image-size ranges; no deploykit code runs."""
    art = demo_detector_pixels_onnx
    manifest = read_manifest(art)
    (model_dir,) = write_repository([art], tmp_path / "repo", options=RepositoryOptions(
        preferred_batch_sizes=(2, 4), trt_engine_cache="/cache/trt", trt_workspace_mb=2048, instances=2,
        gpus=(0, 1)))
    cfg = check_model_dir(model_dir, art, "onnxruntime")
    assert cfg.max_batch_size == 4 and list(cfg.input[0].dims) == [-1, -1, 3]
    num = cfg.output[0]
    assert (list(num.dims), list(num.reshape.shape), num.HasField("reshape")) == ([1], [], True)
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert "deploykit_mode" not in cfg.parameters and not (model_dir / "1" / "model.py").exists()
    sizes = manifest["preprocessing"]["image_size_range"]
    h, w = sizes["opt"]
    assert list(cfg.model_warmup[0].inputs["image"].dims) == [h, w, 3]  # the range's opt size
    params = dict(cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters)
    shape = {k: "image:{}x{}x{}x3".format(b, *sizes[k]) for k, b in (("min", 1), ("opt", 1), ("max", 4))}
    assert params == {"max_workspace_size_bytes": str(2048 << 20), "trt_engine_cache_enable": "1",
                      "trt_engine_cache_path": "/cache/trt", "trt_profile_min_shapes": shape["min"],
                      "trt_profile_opt_shapes": shape["opt"], "trt_profile_max_shapes": shape["max"]}
    group = cfg.instance_group[0]
    assert (group.count, list(group.gpus)) == (2, [0, 1])
    (python_dir,) = write_repository([art], tmp_path / "repo_py", options=RepositoryOptions(backend="python"))
    check_model_dir(python_dir, art, "python")  # the Python backend serves it too (tests/serving/test_serving.py)


def test_tensorrt_plan_config_from_its_manifest(demo_detector_onnx, tmp_path):
    """A plan (stand-in bytes; TensorRT is not installed here) gets platform tensorrt_plan and the
    manifest's I/O, which is the ONNX graph's it was built from."""
    from deploykit.engine.build import plan_manifest

    plan = tmp_path / "det.plan"
    plan.write_bytes(b"PLAN")
    write_manifest(plan, plan_manifest(read_manifest(demo_detector_onnx), onnx_sha256="ab" * 32,
                                       trt_version="11.4.0", gpu="NVIDIA L4", compute_capability="8.9",
                                       workspace_mb=1024))
    (model_dir,) = write_repository([plan], tmp_path / "repo")
    cfg = parse(model_dir)
    assert_graph_agrees(cfg, demo_detector_onnx)
    assert cfg.platform == "tensorrt_plan" and not cfg.backend
    copied = model_dir / "1" / "model.plan"
    assert copied.read_bytes() == b"PLAN" and manifest_path(copied).is_file()
    assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator


def test_refusals_name_the_problem_and_write_nothing(demo_detector_onnx, tmp_path):
    repo = tmp_path / "repo"
    cases = [
        ([demo_detector_onnx], {"options": RepositoryOptions(backend="tensorrt")}, "onnxruntime for .onnx"),
        ([demo_detector_onnx], {"options": RepositoryOptions(max_batch_size=4)}, "batch is fixed"),
        ([demo_detector_onnx, demo_detector_onnx], {}, "duplicates ['det']"),
        ([tmp_path / "missing.onnx"], {}, "no such file"),
        ([demo_detector_onnx], {"options": RepositoryOptions(kind="cpu", gpus=(0,))}, "instance kind cpu"),
        ([demo_detector_onnx], {"options": RepositoryOptions(backend="python", max_batch_size=2,
                                                             preferred_batch_sizes=(4,))}, "<= max batch size 2"),
    ]
    for artifacts, kw, words in cases:
        with pytest.raises(BadInput) as info:
            write_repository(artifacts, repo, **kw)
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)
        assert not repo.exists()


def test_manifest_that_disagrees_with_the_graph_is_refused(demo_detector_pixels_onnx, tmp_path):
    art = tmp_path / "pix.onnx"
    shutil.copyfile(demo_detector_pixels_onnx, art)
    manifest = read_manifest(demo_detector_pixels_onnx)
    manifest["inputs"][0]["dtype"] = "float32"
    write_manifest(art, manifest)
    with pytest.raises(BadInput, match="manifest of another file"):
        write_repository([art], tmp_path / "repo")


def test_existing_model_dir_needs_overwrite(demo_generator_onnx, tmp_path):
    repo = tmp_path / "repo"
    write_repository([demo_generator_onnx], repo, options=RepositoryOptions(backend="python"))
    with pytest.raises(BadInput, match="--overwrite"):
        write_repository([demo_generator_onnx], repo)
    write_repository([demo_generator_onnx], repo, overwrite=True)  # python -> onnxruntime, replaced whole
    assert parse(repo / "gen").backend == "onnxruntime" and not (repo / "gen" / "1" / "model.py").exists()
    assert sorted(p.name for p in repo.iterdir()) == ["gen"]  # no temporary directories left


def test_cli_writes_the_repository_and_errors_in_one_line(demo_detector_onnx, tmp_path):
    runner = CliRunner()
    repo = tmp_path / "repo"
    result = runner.invoke(main, ["triton", str(demo_detector_onnx), "-o", str(repo), "--backend", "python",
                                  "--name", "detector", "--max-batch-size", "4", "--instances", "2"])
    assert result.exit_code == 0, result.output
    assert f"wrote {repo / 'detector'}/ (python)" in result.output
    cfg = parse(repo / "detector")
    assert (cfg.name, cfg.max_batch_size, cfg.instance_group[0].count) == ("detector", 4, 2)
    for args, words in ((["--gpus", "a,b"], "--gpus"), (["--backend", "tensorrt"], "onnxruntime for .onnx")):
        result = runner.invoke(main, ["triton", str(demo_detector_onnx), "-o", str(tmp_path / "r2"), *args])
        assert result.exit_code == 2 and "Traceback" not in result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.stderr
        assert not (tmp_path / "r2").exists()


def test_strings_survive_protobuf_text_format():
    """Quotes, backslashes, newlines and non-ASCII names round-trip through text_format exactly."""
    text = 'a "quoted" \\ back\nslash, tab\t, naïve – 検出'
    cfg = text_format.Parse(dumps({"name": text, "parameters": [{"key": "k", "value": {"string_value": text}}]}),
                            mc.ModelConfig())
    assert cfg.name == text and cfg.parameters["k"].string_value == text
    assert quote("x").startswith('"') and "\n" not in quote(text)


@pytest.mark.parametrize("cmd, words", [
    ("triton", ["--backend", "onnxruntime", "python-graph", "--max-queue-delay-us", "default: 1000",
                "--trt-engine-cache", "--instances", "--gpus"]),
    ("serve", ["--http-port", "default: 8000", "--grpc-port", "default: 8001", "--metrics-port", "default: 8002",
               "--server", "--exit-timeout"]),
])
def test_help_explains_the_serving_commands(cmd, words):
    out = CliRunner().invoke(main, [cmd, "--help"], terminal_width=200).output
    assert all(w in out for w in words), out
