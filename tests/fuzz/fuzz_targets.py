"""Python fuzz targets: each takes the fuzzer's bytes and drives one parser of untrusted input.

The contract every target checks: the code under test either succeeds or raises
:class:`deploykit.errors.BadInput` (the client also ``ServerError``) with a one-line, non-empty
message. Anything else — another exception type, a multi-line message, a hang, a crash — is a
finding: :func:`expect_clean` re-raises it as :class:`Finding` so atheris stops and saves the input.

Targets (``TARGETS``):

- ``manifest``: the bytes are a manifest beside a tiny real artifact (``"@SHA@"`` becomes the
  artifact's sha256, so mutants get past the hash check); the manifest reader, then ``load`` and
  ``Detector`` / ``Generator`` on it and one predict / generate;
- ``images``: the bytes are an image file: ``load_image`` (infer, calibration) and ``read_map``
  (SPADE label maps);
- ``calibration``: the bytes are split into up to three files of a calibration folder, read for
  the toy detector (pixels-in) or generator manifest (``calibration_feeds``);
- ``trt_check``: the bytes are an ONNX file: ``deploykit check``'s ``check_file`` and, for a valid
  model, the export rules (``graph_violations``);
- ``triton_request``: the bytes describe Triton requests (tensor names, dtypes, shapes, data) for
  the Python-backend model (``python_model.TritonPythonModel.execute``) on the toy detector and
  generator, with a stand-in for ``triton_python_backend_utils``;
- ``client_response``: the bytes describe a model config and a response as a server would send
  them; ``Client`` configures itself from the config and parses the response
  (``predict`` / ``generate``), with a stand-in transport.

The same functions replay the kept corpora and regression inputs in pytest
(``test_fuzz_regressions.py``); atheris runs them through ``run_atheris.py``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from toys import GEN_SIZE, toy_artifacts  # noqa: E402

from deploykit.errors import BadInput  # noqa: E402


class Finding(AssertionError):
    """The code under test misbehaved on this input."""


def expect_clean(fn: Callable[[], Any], allowed: tuple[type[BaseException], ...] = (BadInput,)) -> Any:
    """Run ``fn``; success or an allowed error with a one-line message is fine, anything else a Finding."""
    try:
        return fn()
    except allowed as e:
        text = str(e)
        if not text.strip() or "\n" in text or "\r" in text:
            raise Finding(f"{type(e).__name__} without a one-line message: {text!r}") from e
        return None
    except Finding:
        raise
    except RecursionError as e:
        raise Finding(f"RecursionError: {e}") from e
    except Exception as e:  # noqa: BLE001 - every other exception is what the fuzzer looks for
        raise Finding(f"{type(e).__name__}: {e}"[:500]) from e


class Reader:
    """Deterministic structure from bytes (the replay in pytest needs no atheris)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def u8(self) -> int:
        b = self.take(1)
        return b[0] if b else 0

    def u16(self) -> int:
        b = self.take(2)
        return int.from_bytes(b.ljust(2, b"\0"), "little")

    def choice(self, items):
        return items[self.u8() % len(items)]

    def rest(self) -> bytes:
        return self.take(len(self.data))


_WORK: dict[str, Any] = {}


def workdir() -> Path:
    """A per-process folder with the toy artifacts (made on first use)."""
    if "dir" not in _WORK:
        import atexit
        import shutil

        d = Path(tempfile.mkdtemp(prefix="deploykit-fuzz-"))
        atexit.register(shutil.rmtree, d, True)
        _WORK["dir"] = d
        _WORK["toys"] = toy_artifacts(d / "toys")
    return _WORK["dir"]


def toys() -> dict[str, Path]:
    workdir()
    return _WORK["toys"]


def _fresh(name: str) -> Path:
    d = workdir() / name
    if d.exists():
        import shutil

        shutil.rmtree(d)
    d.mkdir()
    return d


# -- manifest ----------------------------------------------------------------------------------

def fuzz_manifest(data: bytes) -> None:
    from deploykit.fileio import sha256_file
    from deploykit.manifest import read_manifest
    from deploykit.runtime import Detector, Generator

    kind = "generator" if b'"generator"' in data else "detector"
    src = toys()[kind]
    d = _fresh("manifest")
    art = d / src.name
    art.write_bytes(src.read_bytes())
    (d / src.with_suffix(".json").name).write_bytes(data.replace(b"@SHA@", sha256_file(art).encode()))
    manifest = expect_clean(lambda: read_manifest(art))
    if manifest is None:
        return
    if kind == "detector":
        det = expect_clean(lambda: Detector(art, threads=1))
        if det is not None:
            expect_clean(lambda: det.predict(np.full((9, 13, 3), 77, np.uint8)))
            det.close()
    else:
        gen = expect_clean(lambda: Generator(art, threads=1))
        if gen is not None:
            h, w = GEN_SIZE
            expect_clean(lambda: gen.generate(np.ones((h, w), np.uint8)))
            expect_clean(lambda: gen.generate(np.ones((3, 5), np.uint8), resize=True))
            gen.close()


# -- images and label maps -------------------------------------------------------------------

def fuzz_images(data: bytes) -> None:
    from PIL import Image

    from deploykit.runtime.generator import read_map
    from deploykit.runtime.images import load_image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1 << 22  # as a server would: the fuzzer must not spend its memory on bombs
    try:
        d = _fresh("images")
        path = d / "input.img"
        path.write_bytes(data)
        image = expect_clean(lambda: load_image(path))
        if image is not None and (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3):
            raise Finding(f"load_image gave {image.dtype} {image.shape}")
        label = expect_clean(lambda: read_map(path, "label map"))
        if label is not None and (label.ndim != 2 or not np.issubdtype(label.dtype, np.integer)):
            raise Finding(f"read_map gave {label.dtype} {label.shape}")
    finally:
        Image.MAX_IMAGE_PIXELS = old


# -- calibration folders -----------------------------------------------------------------------

CALIB_SUFFIXES = (".png", ".jpg", ".bmp", ".tif", ".webp", ".txt")


def fuzz_calibration(data: bytes) -> None:
    from PIL import Image

    from deploykit.data.calibration import calibration_feeds
    from deploykit.manifest import read_manifest

    r = Reader(data)
    kind = r.choice(["detector", "generator"])
    manifest = read_manifest(toys()[kind])
    d = _fresh("calibration")
    parts = r.rest().split(b"--FILE--")[:3]
    for i, part in enumerate(parts):
        p = Reader(part)
        suffix = p.choice(CALIB_SUFFIXES)
        sub = p.u8() % 4 == 0 and kind == "generator"
        name = f"f{i}{suffix}"
        target = (d / "instances" / name) if sub else (d / name)
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(p.rest())
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1 << 22
    try:
        expect_clean(lambda: calibration_feeds(manifest, d, samples=3, seed=0, progress=False))
    finally:
        Image.MAX_IMAGE_PIXELS = old


# -- deploykit check on ONNX protos -----------------------------------------------------------

_ATTRS = ("axis", "to", "sorted", "largest", "mode", "coordinate_transformation_mode", "nearest_mode",
          "output_height", "output_width", "sampling_ratio", "keepdims", "fmod", "ceil_mode", "auto_pad", "perm",
          "kernel_shape", "strides", "pads", "center_point_box", "saturate", "block_size", "value")
_WORDS = (b"nearest", b"linear", b"cubic", b"half_pixel", b"asymmetric", b"floor", b"round_prefer_ceil",
          b"output_half_pixel", b"NOTSET", b"SAME_UPPER", b"avg", b"max", b"\xff\xfe", b"")


def _structured_model(r: Reader):
    """One of the seed graphs with a few mutations the ONNX parser keeps (ops, attributes, element types,
    dims, wiring), so the rules of deploykit check see graphs that parse, not mostly broken bytes."""
    import onnx
    from onnx import TensorProto, helper

    from deploykit.export.trt_support import OPS

    seeds = _WORK.get("onnx_seeds")
    if seeds is None:
        seeds = [p.read_bytes()[1:] for p in sorted((HERE / "corpus" / "trt_check").glob("seed-*.onnx"))]
        if not seeds:  # a clone without them (e.g. a .gitignore eating *.onnx) must say so, not divide by 0
            raise RuntimeError(f"no seed-*.onnx in {HERE / 'corpus' / 'trt_check'}: run tests/fuzz/make_seeds.py")
        _WORK["onnx_seeds"] = seeds
    model = onnx.load_from_string(seeds[r.u8() % len(seeds)])
    g = model.graph
    ops = sorted(OPS) + ["Loop", "Custom", "NonZero", "Unique"]
    types = list(TensorProto.DataType.values()) + [0, 99]
    for _ in range(r.u8() % 8):
        what = r.u8() % 7
        nodes = list(g.node)
        tensors = [v for v in list(g.input) + list(g.output) + list(g.value_info)]
        names = [o for n in nodes for o in n.output] + [i.name for i in g.input] + [t.name for t in g.initializer]
        if what == 0 and nodes:
            r.choice(nodes).op_type = r.choice(ops)
        elif what == 1 and nodes:
            node, name = r.choice(nodes), r.choice(_ATTRS)
            kind = r.u8() % 4
            value = ([r.u8() - 128 for _ in range(1 + r.u8() % 4)] if kind == 0 else r.choice(_WORDS) if kind == 1
                     else (r.u16() - 32768) / 7.0 if kind == 2 else r.u8() - 8)
            del_at = [i for i, a in enumerate(node.attribute) if a.name == name]
            for i in reversed(del_at):
                del node.attribute[i]
            node.attribute.append(helper.make_attribute(name, value))
        elif what == 2 and tensors:
            r.choice(tensors).type.tensor_type.elem_type = r.choice(types)
        elif what == 3 and tensors:
            dims = r.choice(tensors).type.tensor_type.shape.dim
            if len(dims):
                d = dims[r.u8() % len(dims)]
                if r.u8() % 2:
                    d.dim_value = r.u16()
                else:
                    d.dim_param = r.choice(["batch", "height", "width", "n", "a\nb", ""])
        elif what == 4 and nodes and names:
            node = r.choice(nodes)
            if len(node.input):
                node.input[r.u8() % len(node.input)] = r.choice(names)
        elif what == 5 and names:
            op = r.choice(["Cast", "Shape", "TopK", "Resize", "NonMaxSuppression", "QuantizeLinear", "Range", "Mod"])
            node = g.node.add()
            node.op_type, node.name = op, f"fuzz{len(nodes)}"
            node.input.extend(r.choice(names) for _ in range(1 + r.u8() % 3))
            node.output.append(f"fuzz_out{len(nodes)}")
            if op == "Cast":
                node.attribute.append(helper.make_attribute("to", r.choice(types)))
        elif what == 6 and g.initializer:
            t = r.choice(list(g.initializer))
            t.data_type = r.choice(types)
    return model.SerializeToString()


def fuzz_trt_check(data: bytes) -> None:
    """First byte even: the rest is an ONNX file as it is; odd: mutations of a seed graph (_structured_model)."""
    import onnx

    from deploykit.export.rules import graph_violations
    from deploykit.export.trt_support import check_file, report_text

    if data[:1] and data[0] % 2:
        data = _structured_model(Reader(data[1:]))
    elif data[:1]:
        data = data[1:]
    d = _fresh("trt_check")
    path = d / "model.onnx"
    path.write_bytes(data)
    readiness = expect_clean(lambda: check_file(path))
    if readiness is None:
        return
    expect_clean(lambda: report_text(readiness, "model.onnx"))
    expect_clean(lambda: json.dumps(readiness.to_json()))
    model = onnx.load_from_string(data)
    problems = expect_clean(lambda: graph_violations(model))
    for line in problems or []:
        if "\n" in line:
            raise Finding(f"multi-line violation: {line!r}")


# -- Triton Python backend: request decoding --------------------------------------------------

class _PbTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def __dlpack__(self, *args, **kwargs):
        return self.array.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()

    @classmethod
    def from_dlpack(cls, name: str, exported: Any) -> "_PbTensor":
        exported.__dlpack__()  # the stub takes the capsule (and so model.py's _Exported sees it handed out)
        return cls(name, np.array(exported.array))


class _PbError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self.message, self.code = message, code


class _PbResponse:
    def __init__(self, output_tensors: list, error: Any = None) -> None:
        self.output_tensors, self.error = output_tensors, error


class _Pb:
    """What deploykit's model.py uses of ``triton_python_backend_utils``."""

    Tensor, TritonError, InferenceResponse = _PbTensor, _PbError, _PbResponse

    @staticmethod
    def get_input_tensor_by_name(request: dict, name: str):
        return request.get(name)

    @staticmethod
    def triton_string_to_numpy(name: str):
        return np.dtype({"TYPE_FP32": "float32", "TYPE_INT32": "int32", "TYPE_UINT8": "uint8",
                         "TYPE_INT64": "int64", "TYPE_FP16": "float16"}[name])




def _models() -> dict[tuple[str, str], Any]:
    """One TritonPythonModel per (kind, mode) on the toy artifacts, made as Triton would."""
    if "models" in _WORK:
        return _WORK["models"]
    from deploykit.serving import python_model
    from deploykit.serving.repository import RepositoryOptions, model_spec, write_model

    models = {}
    repo = workdir() / "repo"
    for kind in ("detector", "generator"):
        for backend in ("python", "python-graph"):
            spec = model_spec(toys()[kind], f"{kind}_{backend}".replace("-", "_"),
                              RepositoryOptions(backend=backend, threads=1))
            model_dir = write_model(spec, repo, overwrite=True)
            config = _config_json(spec.config())
            model = python_model.TritonPythonModel()
            model._pb = _Pb
            model.config = config
            model.inputs = [i["name"] for i in config["input"]]
            model.outputs = {o["name"]: _Pb.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
            model.handler = python_model.handler_for(config, str(model_dir), str(spec.options.version))
            models[(kind, backend)] = model
    _WORK["models"] = models
    return models


def _config_json(config: dict[str, Any]) -> dict[str, Any]:
    """Triton hands model.py its config as JSON: parameters as {key: {string_value}}."""
    out = json.loads(json.dumps(config))
    params = out.get("parameters")
    if isinstance(params, list):
        out["parameters"] = {p["key"]: {"string_value": p["value"]["string_value"]} for p in params}
    return out


def fuzz_triton_request(data: bytes) -> None:
    """Requests as Triton hands them to model.py: Triton has already checked names, dtypes and the
    dims the config fixes (-1: any size, the batch axis up to max_batch_size); sizes and contents
    are the fuzzer's. Triton's dynamic batcher groups up to three requests into one execute()."""
    r = Reader(data)
    models = _models()
    key = r.choice(sorted(models))
    model = models[key]
    config = model.config
    max_batch = int(config.get("max_batch_size") or 0)
    requests = []
    for _ in range(1 + r.u8() % 3):
        request = {}
        for spec in config["input"]:
            if spec.get("optional") and r.u8() % 2:
                continue
            dtype = _Pb.triton_string_to_numpy(spec["data_type"])
            dims = [r.u8() % 24 if d == -1 else int(d) for d in spec["dims"]]
            shape = ([1 + r.u8() % max_batch] if max_batch > 0 else []) + dims
            size = int(np.prod(shape)) if shape else 1
            if size > 1 << 16:
                return
            raw = r.take(size * dtype.itemsize)
            array = np.frombuffer(raw.ljust(size * dtype.itemsize, b"\x07"), dtype).reshape(shape).copy()
            request[spec["name"]] = _PbTensor(spec["name"], array)
        requests.append(request)
    responses = expect_clean(lambda: model.execute(requests))
    if responses is None or len(responses) != len(requests):
        raise Finding(f"execute answered {None if responses is None else len(responses)} of {len(requests)} requests")
    for resp in responses:
        if resp.error is not None:
            text = resp.error.message
            if not text.strip() or "\n" in text:
                raise Finding(f"error response without a one-line message: {text!r}")
            if resp.error.code != "INVALID_ARG":
                raise Finding(f"bad request answered as an internal error: {text}")
        elif sorted(t.name for t in resp.output_tensors) != sorted(model.outputs):
            raise Finding(f"response tensors {[t.name for t in resp.output_tensors]}")


# -- serving Client: parsing configs and responses ---------------------------------------------

def _client_base(kind: str) -> dict[str, Any]:
    """The config a server reports for the toy artifact (python backend), from the repository writer."""
    cache = _WORK.setdefault("client_configs", {})
    if kind not in cache:
        from deploykit.serving.repository import RepositoryOptions, model_spec

        spec = model_spec(toys()[kind], kind, RepositoryOptions(backend="python", threads=1))
        cache[kind] = _config_json(spec.config())
    return json.loads(json.dumps(cache[kind]))


def _array_from(r: Reader) -> np.ndarray:
    dtype = np.dtype(r.choice(["float32", "int32", "uint8", "int64", "float64", "bool"]))
    shape = [r.u8() % 17 for _ in range(r.u8() % 5)]
    size = int(np.prod(shape)) if shape else 1
    if size > 4096:  # keep the fuzzer fast: large responses are no different to parse
        shape, size = [0], 0
    raw = r.take(size * dtype.itemsize).ljust(size * dtype.itemsize, b"\x01")
    return np.frombuffer(raw, dtype).reshape(shape).copy()


def fuzz_client_response(data: bytes) -> None:
    from deploykit.serving.client import Client
    from deploykit.serving.server import ServerError

    r = Reader(data)
    kind = r.choice(["detector", "generator"])
    config = _client_base(kind)
    how = r.u8() % 4
    if how == 1:  # the config itself from the fuzzer (JSON), else the real one with a mutated manifest
        try:
            config = json.loads(r.take(r.u16() % 2048).decode("utf-8", "replace"))
        except (ValueError, RecursionError):
            return
    elif how == 2:
        facts = r.take(r.u16() % 2048).decode("utf-8", "replace")
        config.setdefault("parameters", {})["deploykit_manifest"] = {"string_value": facts}
    client = Client.__new__(Client)
    client.url, client.model, client.version, client.timeout = "http://fuzz:8000", kind, "", 1.0
    client.protocol, client.address = "http", "fuzz:8000"
    client._opened = []
    responses = []
    for _ in range(8):
        out = {}
        for name in ("num_detections", "boxes", "scores", "labels", "image", "masks"):
            if r.u8() % 4:
                out[name] = _array_from(r)
        responses.append(out)
    def infer(feed):  # the transport: result.as_numpy gives None for an output the server did not send
        out = responses.pop(0) if responses else {}
        return client._checked({name: out.get(name) for name in client.outputs})  # what Client.infer does next

    client.infer = infer
    ok = expect_clean(lambda: client._configure(config), (BadInput, ServerError))
    if ok is None and not hasattr(client, "mode"):
        return
    allowed = (BadInput, ServerError)
    if getattr(client, "kind", "") == "detector":
        expect_clean(lambda: client.predict(np.full((10, 14, 3), 99, np.uint8)), allowed)
    elif getattr(client, "kind", "") == "generator":
        h, w = GEN_SIZE
        expect_clean(lambda: client.generate(np.ones((h, w), np.uint8)), allowed)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "manifest": fuzz_manifest,
    "images": fuzz_images,
    "calibration": fuzz_calibration,
    "trt_check": fuzz_trt_check,
    "triton_request": fuzz_triton_request,
    "client_response": fuzz_client_response,
}

