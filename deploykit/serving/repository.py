"""Triton model repositories from deploykit artifacts: ``deploykit triton ARTIFACT... -o REPO``.

Layout (one directory per artifact, version 1 unless asked)::

    REPO/<name>/config.pbtxt          Triton's ModelConfig (protobuf text)
    REPO/<name>/labels.txt            detector class names, one per line (index = label)
    REPO/<name>/warmup/<input>        raw sample inputs for model_warmup
    REPO/<name>/1/model.onnx          backend onnxruntime (TensorRT accelerator settable), or
    REPO/<name>/1/model.plan          platform tensorrt_plan, or
    REPO/<name>/1/model.py            backend python: deploykit's runtime on the artifact beside it
    REPO/<name>/1/model.json          the artifact's manifest (model.plan.json for plans)

Backends:

- ``onnxruntime`` / ``tensorrt``: Triton's native backends run the graph as exported. Inputs
  and outputs are the graph's; the batch axis becomes ``max_batch_size``, dynamic sides -1.
  A tensor-input detector then needs the client's preprocessing (:class:`~deploykit.serving.Client`
  does it); a pixels-in graph needs none.
- ``python``: Triton's Python backend runs deploykit's :class:`~deploykit.runtime.Detector` /
  :class:`~deploykit.runtime.Generator`: a detector takes ``image`` uint8 ``[-1, -1, 3]`` (ragged
  batching, so images of any size batch together) and answers padded detections in the original
  image's pixels; a generator takes ``label_map`` (+ ``instance_map``) and answers ``image`` uint8
  ``[H, W, 3]``. This is what the Triton bundled with ``nvidia-pytriton`` runs (CPU).
- ``python-graph``: the native backends' exact interface, run by deploykit's Session in the
  Python backend (for CPU machines, and to exercise a native repository's clients here).

Every config carries ``parameters { key: "deploykit_manifest" }``: the manifest facts a client
needs (kind, preprocessing, class names, ...), so :class:`Client` needs nothing but the URL.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..engine.profiles import profile_shapes
from ..errors import BadInput, expected_got
from ..fileio import fsync_tree, replace_dir, stage_dir, write_json_atomic
from ..manifest import manifest_path, read_manifest
from .pbtxt import Enum, dumps

BACKENDS = ("onnxruntime", "tensorrt", "python", "python-graph")
PYTHON_BACKENDS = ("python", "python-graph")
ARTIFACT_SUFFIXES = {".onnx": "model.onnx", ".plan": "model.plan", ".engine": "model.plan"}

#: numpy dtype name -> Triton data type.
TRITON_DTYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
}
NUMPY_DTYPES = {v.removeprefix("TYPE_"): k for k, v in TRITON_DTYPES.items()}  # "FP32" -> "float32"

MANIFEST_KEYS = ("kind", "model", "inputs", "outputs", "batch", "preprocessing", "postprocessing", "class_names")
DETECTOR_OUTPUTS = ("num_detections", "boxes", "scores", "labels")
LABELS_FILE = "labels.txt"
PYTHON_MODEL = '''"""Triton Python-backend model written by `deploykit triton`.

deploykit's runtime runs the artifact beside this file; the server's Python must have
deploykit installed (`deploykit serve` sets that up for the Triton bundled with nvidia-pytriton).
"""

from deploykit.serving.python_model import TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class RepositoryOptions:
    """How `deploykit triton` configures each model (defaults in parentheses).

    backend: one of :data:`BACKENDS` (``onnxruntime`` for .onnx, ``tensorrt`` for .plan).
    max_batch_size: largest batch Triton forms (the graph's batch range for native backends,
        8 for ``python``). preferred_batch_sizes: dynamic batcher's preferred sizes (none).
    max_queue_delay_us: how long the dynamic batcher waits to fill a batch (1000 µs).
    instances: model instances per device (1); kind: ``gpu``/``cpu``/``auto`` (gpu for native
        backends, cpu for python); gpus: GPU ids for the instances (all).
    warmup: a model_warmup with a sample input (on). threads: intra-op threads per instance (runtime's default).
    ort_tensorrt: onnxruntime backend's TensorRT execution accelerator (on); trt_workspace_mb (1024);
        trt_engine_cache: directory for its engine cache (off).
    """

    backend: str | None = None
    version: int = 1
    max_batch_size: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 1000
    instances: int = 1
    kind: str | None = None
    gpus: tuple[int, ...] = ()
    warmup: bool = True
    threads: int | None = None
    ort_tensorrt: bool = True
    trt_workspace_mb: int = 1024
    trt_engine_cache: str | None = None

    def check(self) -> None:
        """BadInput naming the first option out of range."""
        if self.backend is not None and self.backend not in BACKENDS:
            raise BadInput(expected_got("backend", " or ".join(BACKENDS), repr(self.backend)))
        if self.kind is not None and self.kind not in ("gpu", "cpu", "auto"):
            raise BadInput(expected_got("instance kind", "gpu, cpu or auto", repr(self.kind)))
        checks = [("version", self.version, 1), ("instances", self.instances, 1),
                  ("max queue delay (µs)", self.max_queue_delay_us, 0), ("TensorRT workspace (MiB)",
                                                                         self.trt_workspace_mb, 1)]
        if self.max_batch_size is not None:
            checks.append(("max batch size", self.max_batch_size, 1))
        if self.threads is not None:
            checks.append(("threads", self.threads, 1))
        checks += [("preferred batch size", p, 1) for p in self.preferred_batch_sizes]
        checks += [("GPU id", g, 0) for g in self.gpus]
        for what, value, low in checks:
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise BadInput(expected_got(what, f"an integer >= {low}", repr(value)))
        if self.max_batch_size is not None and any(p > self.max_batch_size for p in self.preferred_batch_sizes):
            raise BadInput(expected_got("preferred batch sizes", f"<= max batch size {self.max_batch_size}",
                                        list(self.preferred_batch_sizes)))
        if self.gpus and self.kind == "cpu":
            raise BadInput(expected_got("GPU ids", "none with instance kind cpu", list(self.gpus)))


@dataclass(frozen=True)
class Tensor:
    """One input or output as Triton sees it: dims without the batch axis when ``max_batch_size > 0``."""

    name: str
    dtype: str                      # numpy name, e.g. "float32"
    dims: tuple[int, ...]           # -1 for dynamic
    reshape: tuple[int, ...] | None = None  # the graph's shape when Triton's dims differ ([1] for a [B] tensor)
    ragged: bool = False
    optional: bool = False
    label_filename: str | None = None

    def config(self, output: bool = False) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "data_type": Enum(TRITON_DTYPES[self.dtype]),
                                 "dims": list(self.dims)}
        if self.reshape is not None:
            entry["reshape"] = {"shape": list(self.reshape)}
        if not output:
            entry["allow_ragged_batch"] = True if self.ragged else None
            entry["optional"] = True if self.optional else None
        else:
            entry["label_filename"] = self.label_filename
        return entry


@dataclass
class ModelSpec:
    """Everything one model directory needs; :func:`model_spec` builds it, :func:`write_model` writes it."""

    name: str
    artifact: Path
    manifest: dict[str, Any]
    backend: str
    max_batch_size: int
    inputs: list[Tensor]
    outputs: list[Tensor]
    options: RepositoryOptions
    warmup: dict[str, np.ndarray] = field(default_factory=dict)  # input name -> one sample, no batch axis

    @property
    def artifact_file(self) -> str:
        return ARTIFACT_SUFFIXES[self.artifact.suffix.lower()]

    def config(self) -> dict[str, Any]:
        """Triton's ModelConfig as nested values for :func:`deploykit.serving.pbtxt.dumps`."""
        o = self.options
        config: dict[str, Any] = {"name": self.name}
        if self.backend == "tensorrt":
            config["platform"] = "tensorrt_plan"
        else:
            config["backend"] = "python" if self.backend in PYTHON_BACKENDS else self.backend
        config["max_batch_size"] = self.max_batch_size
        config["input"] = [t.config() for t in self.inputs]
        config["output"] = [t.config(output=True) for t in self.outputs]
        if self.max_batch_size > 1:
            config["dynamic_batching"] = {"preferred_batch_size": list(o.preferred_batch_sizes),
                                          "max_queue_delay_microseconds": o.max_queue_delay_us}
        kind = o.kind or ("cpu" if self.backend in PYTHON_BACKENDS else "gpu")
        config["instance_group"] = [{"count": o.instances, "kind": Enum(f"KIND_{kind.upper()}"),
                                     "gpus": list(o.gpus)}]
        if self.backend == "onnxruntime" and o.ort_tensorrt:
            config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
                {"name": "tensorrt", "parameters": [{"key": k, "value": v} for k, v in self._trt_parameters()]}]}}
        config["parameters"] = [{"key": k, "value": {"string_value": v}} for k, v in self._parameters()]
        if self.warmup:
            config["model_warmup"] = [{"name": "sample", "batch_size": 1, "count": 1, "inputs": [
                {"key": name, "value": {"data_type": Enum(TRITON_DTYPES[str(a.dtype)]), "dims": list(a.shape),
                                        "input_data_file": name}}
                for name, a in self.warmup.items()]}]
        return config

    def _parameters(self) -> list[tuple[str, str]]:
        facts = {k: self.manifest[k] for k in MANIFEST_KEYS if k in self.manifest}
        model = facts.get("model") or {}
        facts["model"] = {"name": model.get("name"), "checkpoint_sha256": model.get("checkpoint_sha256")}
        facts["precision"] = (self.manifest.get("precision") or {}).get("mode")
        facts["artifact_sha256"] = (self.manifest.get("artifact") or {}).get("sha256")
        facts["interface"] = "pipeline" if self.backend == "python" else "graph"
        params = [("deploykit_manifest", json.dumps(facts, separators=(",", ":"), ensure_ascii=True))]
        if self.backend in PYTHON_BACKENDS:
            params += [("deploykit_mode", "pipeline" if self.backend == "python" else "graph"),
                       ("deploykit_artifact", self.artifact_file)]
            if self.options.threads:
                params.append(("deploykit_threads", str(self.options.threads)))
        elif self.backend == "onnxruntime" and self.options.threads:
            params += [("intra_op_thread_count", str(self.options.threads)), ("inter_op_thread_count", "1")]
        return params

    def _trt_parameters(self) -> list[tuple[str, str]]:
        o = self.options
        params = [("max_workspace_size_bytes", str(o.trt_workspace_mb << 20))]
        if o.trt_engine_cache:
            params += [("trt_engine_cache_enable", "1"), ("trt_engine_cache_path", o.trt_engine_cache)]
        shapes = _profile_shapes(self.manifest, self.max_batch_size)
        if shapes:
            for key, i in (("trt_profile_min_shapes", 0), ("trt_profile_opt_shapes", 1), ("trt_profile_max_shapes", 2)):
                params.append((key, ",".join(f"{n}:" + "x".join(map(str, s[i])) for n, s in shapes.items())))
        return params


def _profile_shapes(manifest: dict[str, Any], max_batch_size: int) -> dict[str, tuple] | None:
    """TensorRT EP profile shapes ``{input: (min, opt, max)}``, read as ``deploykit build`` reads them
    (:func:`deploykit.engine.profiles.profile_shapes`), a dynamic batch widened to ``max_batch_size``;
    None when the graph's shapes are static or a dynamic dimension has no range in the manifest (the
    TensorRT EP then builds engines as shapes come)."""
    specs = manifest.get("inputs") or []
    if not any(isinstance(d, str) for spec in specs for d in spec.get("shape") or []):
        return None
    batch = dict(manifest.get("batch") or {})
    if batch.get("dynamic") and isinstance(batch.get("max"), int):
        batch["max"] = max(batch["max"], max_batch_size)
    try:
        return profile_shapes({**manifest, "batch": batch})
    except BadInput:
        return None


# ---------------------------------------------------------------------------------------------
# From an artifact to a ModelSpec


def _graph_io(artifact: Path, manifest: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """The graph's inputs and outputs ``[{name, dtype, shape}]``: from the ONNX file (checked against the
    manifest), or from the manifest for a TensorRT plan (which cannot be opened without TensorRT)."""
    ins, outs = manifest.get("inputs") or [], manifest.get("outputs") or []
    if artifact.suffix.lower() != ".onnx":
        return ins, outs
    from ..runtime.backends import load

    with load(artifact) as session:
        graph = [[{"name": s.name, "dtype": str(s.dtype), "shape": list(s.shape)} for s in specs]
                 for specs in (session.inputs, session.outputs)]
    for what, from_graph, from_manifest in (("inputs", graph[0], ins), ("outputs", graph[1], outs)):
        if [_io_key(t) for t in from_graph] != [_io_key(t) for t in from_manifest]:
            raise BadInput(expected_got(f"{artifact} {what}", f"the manifest's {_io_text(from_manifest)}",
                                        f"{_io_text(from_graph)} in the graph (manifest of another file?)"))
    return graph[0], graph[1]


def _io_key(t: dict) -> tuple:
    return t["name"], str(t["dtype"]), tuple(d if isinstance(d, int) else "?" for d in t["shape"])


def _io_text(ts: list[dict]) -> str:
    return "; ".join(f"{t['name']} {t['dtype']} {list(t['shape'])}" for t in ts)


def _batching(tensors: list[dict], manifest: dict[str, Any], artifact: Path) -> int:
    """``max_batch_size`` for the graph: its dynamic batch range's max, 1 for a static batch of 1, else 0."""
    firsts = {(t["shape"][0] if t["shape"] else None) for t in tensors}
    if len(firsts) == 1 and isinstance(next(iter(firsts)), str):
        high = (manifest.get("batch") or {}).get("max")
        if not isinstance(high, int) or high < 1:
            raise BadInput(expected_got(f"{artifact} manifest batch.max", "a positive int for a dynamic batch axis",
                                        repr(high)))
        return high
    return 1 if firsts == {1} else 0


def _tensor(t: dict, max_batch_size: int) -> Tensor:
    if t["dtype"] not in TRITON_DTYPES:
        raise BadInput(expected_got(f"tensor {t['name']!r} dtype", "a numeric dtype Triton has", repr(t["dtype"])))
    shape = [d if isinstance(d, int) else -1 for d in t["shape"]]
    if max_batch_size:
        shape = shape[1:]
        if not shape:  # a [B] tensor: Triton needs one dim, the graph has none after the batch axis
            return Tensor(t["name"], t["dtype"], (1,), reshape=())
    return Tensor(t["name"], t["dtype"], tuple(shape))


def _canvas(manifest: dict[str, Any]) -> tuple[int, int]:
    """A representative image size (H, W) for warmup: the fixed canvas or the dynamic range's opt."""
    pre = manifest.get("preprocessing") or {}
    size = (pre.get("image_size_range") or {}).get("opt") or pre.get("input_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size):
        return int(size[0]), int(size[1])
    return 320, 320


def sample_image(height: int, width: int) -> np.ndarray:
    """A deterministic RGB sample for warmup: a gradient with a few solid rectangles, uint8 [H, W, 3]."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                    np.full_like(xx, 96)], axis=-1).astype(np.uint8)
    for k, colour in enumerate(((230, 40, 40), (40, 200, 60), (40, 60, 230))):
        y0, x0 = height * (1 + 2 * k) // 8, width * (1 + 2 * k) // 8
        img[y0:y0 + height // 5, x0:x0 + width // 5] = colour
    return img


def _warmup_sample(t: Tensor, manifest: dict[str, Any]) -> np.ndarray | None:
    """One sample (no batch axis) for input ``t`` of a graph or pipeline; None when its dims are unknown."""
    pre = manifest.get("preprocessing") or {}
    h, w = _canvas(manifest)
    dims = list(t.reshape if t.reshape is not None else t.dims)
    if t.name == "image" and t.dtype == "uint8" and len(dims) == 3 and dims[2] == 3:
        return sample_image(dims[0] if dims[0] > 0 else h, dims[1] if dims[1] > 0 else w)
    if any(d < 0 for d in dims):
        return None
    if t.name == "image_sizes":
        return np.asarray(pre.get("input_size") or [h, w], dtype=t.dtype).reshape(dims)
    if t.name == "label_map":
        low = (pre.get("label_range") or [0])[0]
        return np.full(dims, low, dtype=t.dtype)
    return np.zeros(dims, dtype=t.dtype)  # normalised images (the mean colour), instance ids, z


def _pipeline_io(manifest: dict[str, Any], graph_outputs: list[dict], artifact: Path) -> tuple[list, list]:
    """The Python backend's deploykit interface (pixels in, original-pixel detections / uint8 images out)."""
    kind = manifest.get("kind")
    if kind == "detector":
        outputs = {t["name"]: t for t in graph_outputs}
        if (manifest.get("postprocessing") or {}).get("raw") or any(n not in outputs for n in DETECTOR_OUTPUTS):
            raise BadInput(expected_got(f"{artifact} outputs", f"{list(DETECTOR_OUTPUTS)} for backend python "
                                        "(a raw export serves only with --backend onnxruntime or python-graph)",
                                        sorted(outputs)))
        k = outputs["boxes"]["shape"][-2]
        if not isinstance(k, int):
            raise BadInput(expected_got(f"{artifact} output 'boxes'", "[batch, K, 4] with a fixed K",
                                        outputs["boxes"]["shape"]))
        ins = [Tensor("image", "uint8", (-1, -1, 3), ragged=True)]
        outs = [Tensor("num_detections", "int32", (1,)), Tensor("boxes", "float32", (k, 4)),
                Tensor("scores", "float32", (k,)), Tensor("labels", "int32", (k,), label_filename=LABELS_FILE)]
        if (manifest.get("postprocessing") or {}).get("masks"):  # Mask R-CNN: each request's masks, its own size
            outs.append(Tensor("masks", "uint8", (-1, -1, -1)))
        return ins, outs
    pre = manifest.get("preprocessing") or {}
    size = pre.get("input_size")
    dtypes = pre.get("input_dtypes") or {}
    if not (isinstance(size, list) and len(size) == 2):
        raise BadInput(expected_got(f"{artifact} manifest preprocessing.input_size", "[H, W]", repr(size)))
    h, w = int(size[0]), int(size[1])
    ins = [Tensor("label_map", str(dtypes.get("label_map", "int64")), (h, w))]
    if pre.get("use_instance"):
        ins.append(Tensor("instance_map", "int32", (h, w)))
    if pre.get("use_vae"):
        ins.append(Tensor("z", "float32", (int(pre["z_dim"]),), optional=True))
    return ins, [Tensor("image", "uint8", (h, w, 3))]


def model_spec(artifact: str | os.PathLike, name: str, options: RepositoryOptions) -> ModelSpec:
    """Read ``artifact`` and its manifest; the model directory to write for ``options``."""
    options.check()
    artifact = Path(artifact)
    if not artifact.is_file():
        raise BadInput(expected_got(f"artifact {artifact}", "an existing .onnx or .plan file",
                                    "a directory" if artifact.is_dir() else "no such file"))
    if artifact.suffix.lower() not in ARTIFACT_SUFFIXES:
        raise BadInput(expected_got(f"artifact {artifact}", "a .onnx, .plan or .engine file", repr(artifact.suffix)))
    manifest = read_manifest(artifact)
    if manifest.get("kind") not in ("detector", "generator"):
        raise BadInput(expected_got(f"{artifact} manifest kind", "'detector' or 'generator'",
                                    repr(manifest.get("kind"))))
    is_onnx = artifact.suffix.lower() == ".onnx"
    backend = options.backend or ("onnxruntime" if is_onnx else "tensorrt")
    if backend == "onnxruntime" and not is_onnx or backend == "tensorrt" and is_onnx:
        raise BadInput(expected_got(f"backend {backend} for {artifact.name}",
                                    "onnxruntime for .onnx, tensorrt for .plan (or python, python-graph)",
                                    artifact.suffix))
    graph_in, graph_out = _graph_io(artifact, manifest)
    if backend == "python":
        inputs, outputs = _pipeline_io(manifest, graph_out, artifact)
        max_batch = options.max_batch_size or 8
    else:
        graph_max = _batching(graph_in + graph_out, manifest, artifact)
        max_batch = graph_max
        if options.max_batch_size is not None and options.max_batch_size != graph_max:
            dynamic = isinstance((graph_in[0]["shape"] or [None])[0], str)
            if not dynamic or options.max_batch_size > graph_max:
                raise BadInput(expected_got(f"max batch size for {artifact.name}",
                                            f"<= the graph's batch range max {graph_max}" if dynamic else
                                            "none (the graph's batch is fixed; export with --dynamic-batch N)",
                                            options.max_batch_size))
            max_batch = options.max_batch_size
        inputs = [_tensor(t, graph_max) for t in graph_in]
        outputs = [_tensor(t, graph_max) for t in graph_out]
        if manifest["kind"] == "detector":
            outputs = [Tensor(t.name, t.dtype, t.dims, t.reshape, label_filename=LABELS_FILE)
                       if t.name == "labels" else t for t in outputs]
    if options.max_batch_size is not None and any(p > max_batch for p in options.preferred_batch_sizes):
        raise BadInput(expected_got("preferred batch sizes", f"<= max batch size {max_batch}",
                                    list(options.preferred_batch_sizes)))
    spec = ModelSpec(name, artifact, manifest, backend, max_batch, inputs, outputs, options)
    if options.warmup:
        samples = {t.name: _warmup_sample(t, manifest) for t in inputs if not t.optional}
        if all(s is not None for s in samples.values()):
            spec.warmup = samples
    return spec


# ---------------------------------------------------------------------------------------------
# Writing


def model_name(artifact: str | os.PathLike) -> str:
    """A Triton model name from a file name: the stem with characters other than [A-Za-z0-9_.-] as '_'."""
    stem = Path(artifact).stem
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in stem) or "model"


def write_model(spec: ModelSpec, repo: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``REPO/<name>/`` for ``spec`` into a temporary directory, then move it into place."""
    repo = Path(repo)
    target = repo / spec.name
    if target.exists() and not overwrite:
        raise BadInput(expected_got(f"model directory {target}", "a new model name (or --overwrite)",
                                    "an existing directory"))
    repo.mkdir(parents=True, exist_ok=True)
    # built in a hidden folder beside the target (umask permissions: servers may run as another user),
    # then swapped in whole: a kill leaves the old model directory or the new one (fileio.replace_dir)
    with stage_dir(target) as tmp:
        version = tmp / str(spec.options.version)
        version.mkdir()
        dst = version / spec.artifact_file
        shutil.copyfile(spec.artifact, dst)
        manifest = dict(spec.manifest)
        manifest["artifact"] = dict(manifest.get("artifact") or {}, file=dst.name)
        write_json_atomic(manifest_path(dst), manifest)
        if spec.backend in PYTHON_BACKENDS:
            (version / "model.py").write_text(PYTHON_MODEL)
        if spec.manifest["kind"] == "detector":
            (tmp / LABELS_FILE).write_text("".join(f"{n}\n" for n in spec.manifest.get("class_names") or []))
        if spec.warmup:
            (tmp / "warmup").mkdir()
            for name, sample in spec.warmup.items():
                (tmp / "warmup" / name).write_bytes(np.ascontiguousarray(sample).tobytes())
        (tmp / "config.pbtxt").write_text(dumps(spec.config()))
        fsync_tree(tmp)
        replace_dir(tmp, target)
    return target


def write_repository(artifacts: Sequence[str | os.PathLike], repo: str | os.PathLike, *,
                     names: Sequence[str] | None = None, options: RepositoryOptions = RepositoryOptions(),
                     overwrite: bool = False) -> list[Path]:
    """Write one model directory per artifact into ``repo``; returns the directories.

    ``names`` default to the artifacts' stems. Everything is checked before anything
    is written: unknown files, manifests, options and duplicate names raise BadInput.
    """
    if not artifacts:
        raise BadInput(expected_got("artifacts", "at least one .onnx or .plan file", "none"))
    names = list(names) if names else [model_name(a) for a in artifacts]
    if len(names) != len(artifacts):
        raise BadInput(expected_got("model names", f"one per artifact ({len(artifacts)})", len(names)))
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BadInput(expected_got("model names", "distinct names (one directory each; use --name)",
                                    f"duplicates {dup}"))
    specs = [model_spec(a, n, options) for a, n in zip(artifacts, names)]
    return [write_model(s, repo, overwrite=overwrite) for s in specs]
