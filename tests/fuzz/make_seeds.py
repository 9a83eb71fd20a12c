"""Write the seed corpora of the Python fuzz targets (tests/fuzz/corpus/<target>/seed-*).

    python tests/fuzz/make_seeds.py

Seeds are small real inputs: the toy artifacts' manifests (sha256 as ``@SHA@``), tiny images in
every mode and format PIL writes, calibration folders, small ONNX graphs with the ops
``deploykit check`` has rules for, well-formed Triton requests and server responses. Findings are
kept separately (corpus/<target>/crash-*), as the fuzzer saved them.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from toys import DETECTOR_MANIFEST, GEN_SIZE, GENERATOR_MANIFEST, K  # noqa: E402

CORPUS = HERE / "corpus"


def _write(target: str, name: str, data: bytes) -> None:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data)


def _manifest_text(manifest: dict, file: str) -> bytes:
    m = json.loads(json.dumps(manifest))
    m["format"] = "deploykit-manifest/1"
    m["artifact"] = {"file": file, "format": "onnx", "sha256": "@SHA@"}
    return (json.dumps(m, indent=1) + "\n").encode()


def manifests() -> None:
    _write("manifest", "detector.json", _manifest_text(DETECTOR_MANIFEST, "det.onnx"))
    _write("manifest", "generator.json", _manifest_text(GENERATOR_MANIFEST, "gen.onnx"))
    fixed = json.loads(json.dumps(DETECTOR_MANIFEST))
    fixed["preprocessing"].update(mode="fixed", input_size=[32, 32])
    fixed["batch"] = {"dynamic": False, "min": 2, "opt": 2, "max": 2}
    _write("manifest", "detector-fixed.json", _manifest_text(fixed, "det.onnx"))


def _image(mode: str, fmt: str, size=(5, 4)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    if mode in ("I", "I;16"):
        a = rng.integers(0, 300, size[::-1]).astype(np.int32 if mode == "I" else np.uint16)
        im = Image.fromarray(a)
    else:
        im = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


IMAGES = [("RGB", "PNG"), ("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("1", "PNG"), ("I;16", "PNG"), ("I", "TIFF"),
          ("RGB", "JPEG"), ("L", "JPEG"), ("RGB", "BMP"), ("P", "GIF"), ("RGB", "TIFF"), ("RGB", "WEBP"),
          ("CMYK", "JPEG"), ("RGB", "PPM"), ("LA", "PNG")]


def images() -> None:
    for mode, fmt in IMAGES:
        _write("images", f"{mode.replace(';', '_')}.{fmt.lower()}", _image(mode, fmt))


def calibration() -> None:
    sep = b"--FILE--"
    det = [bytes([0, 0]) + _image("RGB", "PNG"), bytes([1, 1]) + _image("L", "JPEG")]
    _write("calibration", "detector", b"\x00" + sep.join(det))
    h, w = GEN_SIZE
    lab = np.arange(h * w, dtype=np.uint8).reshape(h, w) % 10
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(lab).save(buf, format="PNG")
    gen = [bytes([0, 1]) + buf.getvalue(), bytes([0, 0]) + _image("P", "PNG", (w, h))]
    _write("calibration", "generator", b"\x01" + sep.join(gen))


def onnx_graphs() -> None:
    import onnx
    from onnx import TensorProto, helper
    from toys import _detector_model, _generator_model

    _write("trt_check", "detector.onnx", b"\x00" + _detector_model().SerializeToString())
    _write("trt_check", "generator.onnx", b"\x00" + _generator_model().SerializeToString())
    n = helper.make_node
    f = TensorProto.FLOAT
    cases = {
        "topk": ([n("TopK", ["x", "k"], ["v", "i"], axis=1, sorted=1)], [("x", f, [1, 5000])],
                 [("v", f, [1, 4000]), ("i", TensorProto.INT64, [1, 4000])],
                 [helper.make_tensor("k", TensorProto.INT64, [1], [4000])]),
        "resize": ([n("Resize", ["x", "", "scales"], ["y"], mode="nearest", nearest_mode="round_prefer_ceil")],
                   [("x", f, [1, 1, 4, 4])], [("y", f, [1, 1, 8, 8])],
                   [helper.make_tensor("scales", f, [4], [1, 1, 2, 2])]),
        "nms": ([n("NonMaxSuppression", ["b", "s", "m"], ["sel"])], [("b", f, [1, 10, 4]), ("s", f, [1, 1, 10])],
                [("sel", TensorProto.INT64, ["n", 3])], [helper.make_tensor("m", TensorProto.INT64, [1], [5])]),
        "cast_uint8": ([n("Cast", ["x"], ["c"], to=TensorProto.UINT8), n("Shape", ["c"], ["y"])],
                       [("x", f, [2, 3])], [("y", TensorProto.INT64, [2])], []),
        "qdq": ([n("QuantizeLinear", ["x", "sc", "zp"], ["q"]), n("DequantizeLinear", ["q", "sc", "zp"], ["y"])],
                [("x", f, [2, 3])], [("y", f, [2, 3])],
                [helper.make_tensor("sc", f, [], [0.1]), helper.make_tensor("zp", TensorProto.INT8, [], [0])]),
        "roialign": ([n("RoiAlign", ["x", "r", "bi"], ["y"], output_height=2, output_width=2,
                        coordinate_transformation_mode="half_pixel")],
                     [("x", f, [1, 1, 4, 4]), ("r", f, [3, 4]), ("bi", TensorProto.INT64, [3])],
                     [("y", f, [3, 1, 2, 2])], []),
        "if": ([n("If", ["c"], ["y"], then_branch=helper.make_graph([], "t", [], [helper.make_tensor_value_info(
            "c", TensorProto.BOOL, [])]), else_branch=helper.make_graph([], "e", [], [helper.make_tensor_value_info(
                "c", TensorProto.BOOL, [])]))], [("c", TensorProto.BOOL, [])], [("y", TensorProto.BOOL, [])], []),
    }
    # structured mode (first byte odd): seed graph index, number of mutations, then each mutation's bytes
    for i, recipe in enumerate((b"\x00\x03\x00\x05\x01\x02\x07\x01", b"\x02\x04\x05\x00\x02\x01\x03\x00\x01\x09",
                                b"\x05\x02\x01\x00\x05\x01\x01\x02\x06\x00\x03")):
        _write("trt_check", f"structured-{i}", b"\x01" + recipe)
    for name, (nodes, ins, outs, inits) in cases.items():
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(*i) for i in ins],
                                  [helper.make_tensor_value_info(*o) for o in outs], initializer=inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        _write("trt_check", f"{name}.onnx", b"\x00" + model.SerializeToString())
    del onnx


def triton_requests() -> None:
    # layout (fuzz_triton_request): model index, request count, then per input (optional: present?),
    # -1 dims, batch size, data
    keys = sorted([("detector", "python"), ("detector", "python-graph"), ("generator", "python"),
                   ("generator", "python-graph")])
    h, w = GEN_SIZE
    for i, key in enumerate(keys):
        if key[0] == "detector":  # image [n, -1, -1, 3] (python: [-1, -1, 3] with max_batch_size 8)
            body = bytes([6, 5, 0]) + bytes(range(90))
        elif key[1] == "python":  # label_map [n, H, W] (+ optional instance_map / z absent)
            body = bytes([0]) + bytes(x % 10 for x in range(h * w))
        else:
            body = bytes(x % 10 for x in range(h * w))
        _write("triton_request", f"{key[0]}-{key[1]}", bytes([i, 0]) + body)


def _array(dtype: str, shape: list[int], values) -> bytes:
    names = ["float32", "int32", "uint8", "int64", "float64", "bool"]
    data = np.asarray(values, dtype).reshape(shape).tobytes()
    return bytes([names.index(dtype), len(shape), *shape]) + data


def client_responses() -> None:
    # layout (fuzz_client_response): kind, how (0 = the real config), then 8 responses of 6 optional arrays
    det = (b"\x01" + _array("int32", [1, 1], [2]) + b"\x01" + _array("float32", [1, K, 4], np.arange(K * 4))
           + b"\x01" + _array("float32", [1, K], [0.9, 0.5, 0.1]) + b"\x01" + _array("int32", [1, K], [1, 2, 1])
           + b"\x00\x00")
    _write("client_response", "detector", b"\x00\x00" + det * 2)
    h, w = GEN_SIZE
    gen = b"\x00" * 4 + b"\x01" + _array("float32", [1, 3, h, w], np.zeros(3 * h * w)) + b"\x00"
    _write("client_response", "generator", b"\x01\x00" + gen * 2)


def main() -> None:
    manifests()
    images()
    calibration()
    onnx_graphs()
    triton_requests()
    client_responses()
    cpp_seeds()
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    print(f"seeds written to {CORPUS} ({total} bytes in the corpus folder)")


# -- the C++ targets' seeds (cpp/fuzz/corpus/<target>/) -----------------------------------------

CPP_CORPUS = HERE.parents[1] / "cpp" / "fuzz" / "corpus"


def _cpp(target: str, name: str, data: bytes) -> None:
    folder = CPP_CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data)


def cpp_seeds() -> None:
    from toys import _detector_model

    det = _manifest_text(DETECTOR_MANIFEST, "m.onnx")
    gen = _manifest_text(GENERATOR_MANIFEST, "m.onnx")
    for name, text in (("detector", det), ("generator", gen)):
        _cpp("fuzz_manifest", f"{name}.json", text.replace(b"@SHA@", b"a" * 64))
    # fuzz_c_api: mode 0 (create) + kind + manifest [+ "\n--ONNX--\n" + model]
    _cpp("fuzz_c_api", "create-session", b"\x00\x00" + det)
    _cpp("fuzz_c_api", "create-detector", b"\x00\x01" + det)
    _cpp("fuzz_c_api", "create-generator", b"\x00\x02" + gen)
    _cpp("fuzz_c_api", "create-detector-onnx", b"\x00\x01" + det + b"\n--ONNX--\n" + _detector_model().SerializeToString())
    # mode 1 (predict): count, then per image w, w-flag, h, channels, stride, format (2), NULL-flag, pixels; NULL-array flag
    w, h = 13, 9
    image = bytes([w, 1, h, 3, 1, 0, 0, 1]) + bytes((i * 7) % 256 for i in range(w * h * 3 + 1))
    _cpp("fuzz_c_api", "predict", b"\x01\x01" + image + b"\x01")
    _cpp("fuzz_c_api", "predict-two", b"\x01\x02" + image + image + b"\x01")
    # mode 2 (generate): dtype, w, w-flag, h, stride, map bytes, NULL-flag; instances?, z count, z NULL, resize, map NULL
    gh, gw = GEN_SIZE
    _cpp("fuzz_c_api", "generate", b"\x02" + bytes([8, gw, 1, gh, 1]) + bytes(i % 10 for i in range(gw * gh + 8))
         + bytes([1, 1, 0, 1, 0, 1]))
    # mode 3 (run): count, name pick, dtype, rank, rank x (dim, flag), shape NULL-flag, data, data NULL-flag; array flag
    dims = [1, 8, 8, 3]
    _cpp("fuzz_c_api", "run", b"\x03\x01" + bytes([0, 8, 4, 1]) + b"".join(bytes([d, 1]) for d in dims) + b"\x01"
         + bytes(192 * 8 + 1) + b"\x01\x01")
    for mode, fmt in (("RGB", "PNG"), ("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("RGB", "JPEG"), ("L", "JPEG"),
                      ("RGB", "BMP"), ("P", "GIF"), ("RGB", "TGA"), ("RGB", "PPM"), ("L", "PPM")):
        _cpp("fuzz_stb", f"{mode}.{fmt.lower()}", _image(mode, fmt))


if __name__ == "__main__":
    main()
