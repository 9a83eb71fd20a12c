"""Tiny artifacts for the fuzz targets: a pixels-in detector and a SPADE-like generator made with
onnx.helper (kilobytes, load in milliseconds), with manifests written by deploykit's own writer.

``toy_artifacts(folder)`` writes ``det.onnx`` + ``det.json`` and ``gen.onnx`` + ``gen.json`` once and
returns their paths; ``DETECTOR_MANIFEST`` / ``GENERATOR_MANIFEST`` are the manifests (without the
artifact section, which the writer fills in).
"""

from __future__ import annotations

import json
from pathlib import Path

K = 3
GEN_SIZE = (8, 12)  # (H, W)

DETECTOR_MANIFEST = {
    "kind": "detector",
    "artifact": {"format": "onnx"},
    "model": {"name": "toy_detector", "checkpoint": None},
    "inputs": [{"name": "image", "dtype": "uint8", "shape": ["batch", "height", "width", 3]}],
    "outputs": [{"name": "num_detections", "dtype": "int32", "shape": ["batch"]},
                {"name": "boxes", "dtype": "float32", "shape": ["batch", K, 4]},
                {"name": "scores", "dtype": "float32", "shape": ["batch", K]},
                {"name": "labels", "dtype": "int32", "shape": ["batch", K]}],
    "batch": {"dynamic": True, "min": 1, "opt": 1, "max": 4},
    "preprocessing": {"in_graph": True, "input": "image", "layout": "NHWC", "color": "RGB", "input_dtype": "uint8",
                      "mode": "dynamic", "min_size": 32, "max_size": 64, "size_divisible": 32,
                      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": "torchvision",
                      "interpolation": "bilinear",
                      "image_size_range": {"min": [1, 1], "opt": [16, 16], "max": [256, 256]}},
    "postprocessing": {"score_threshold": 0.05, "box_format": "xyxy", "box_coordinates": "original-image pixels",
                       "padding": {"boxes": 0.0, "scores": 0.0, "labels": -1}},
    "class_names": ["__background__", "a", "b"],
    "precision": {"mode": "fp32"},
    "versions": {"opset": 18},
}

GENERATOR_MANIFEST = {
    "kind": "generator",
    "artifact": {"format": "onnx"},
    "model": {"name": "toy_generator", "checkpoint": None},
    "inputs": [{"name": "label_map", "dtype": "uint8", "shape": [1, GEN_SIZE[0], GEN_SIZE[1]]}],
    "outputs": [{"name": "image", "dtype": "float32", "shape": [1, 3, GEN_SIZE[0], GEN_SIZE[1]]}],
    "batch": {"dynamic": False, "min": 1, "opt": 1, "max": 1},
    "preprocessing": {"type": "spade-label-map", "label_nc": 10, "contain_dontcare_label": True,
                      "dontcare_values": [255], "label_minus_one": False, "label_range": [0, 9],
                      "use_instance": False, "input_size": list(GEN_SIZE), "resize": "nearest",
                      "input_dtypes": {"label_map": "uint8"}, "use_vae": False, "z_dim": None, "semantic_nc": 11},
    "postprocessing": {"output": "float", "layout": "NCHW", "range": [-1.0, 1.0]},
    "precision": {"mode": "fp32"},
    "versions": {"opset": 18},
}


def _detector_model():
    from onnx import TensorProto, helper

    n = helper.make_node
    init = [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
            helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("ax12", TensorProto.INT64, [2], [1, 2]),
            helper.make_tensor("box_base", TensorProto.FLOAT, [1, K, 4], [1.0, 1.0, 4.0, 4.0] * K),
            helper.make_tensor("score_base", TensorProto.FLOAT, [1, K], [1 / 255, 0.5 / 255, 0.25 / 255]),
            helper.make_tensor("label_base", TensorProto.FLOAT, [1, K], [1.0, 2.0, 1.0]),
            helper.make_tensor("minus1", TensorProto.FLOAT, [], [-1.0]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    nodes = [n("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             n("ReduceMean", ["x", "axes"], ["m"], keepdims=0),                       # [B]
             n("Greater", ["m", "minus1"], ["pos"]), n("Cast", ["pos"], ["num_detections"], to=TensorProto.INT32),
             n("Unsqueeze", ["m", "ax12"], ["m3"]), n("Mul", ["m3", "zero"], ["z3"]),
             n("Add", ["z3", "box_base"], ["boxes"]),                                  # [B, K, 4]
             n("Unsqueeze", ["m", "ax1"], ["m2"]), n("Mul", ["m2", "score_base"], ["scores"]),
             n("Mul", ["m2", "zero"], ["z2"]), n("Add", ["z2", "label_base"], ["lf"]),
             n("Cast", ["lf"], ["labels"], to=TensorProto.INT32)]
    graph = helper.make_graph(
        nodes, "toy_detector",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", "height", "width", 3])],
        [helper.make_tensor_value_info("num_detections", TensorProto.INT32, ["batch"]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", K, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", K]),
         helper.make_tensor_value_info("labels", TensorProto.INT32, ["batch", K])],
        initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _generator_model():
    from onnx import TensorProto, helper

    h, w = GEN_SIZE
    n = helper.make_node
    init = [helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("rep", TensorProto.INT64, [4], [1, 3, 1, 1]),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 127.5]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    nodes = [n("Cast", ["label_map"], ["x"], to=TensorProto.FLOAT),
             n("Unsqueeze", ["x", "ax1"], ["x4"]), n("Tile", ["x4", "rep"], ["x3"]),
             n("Mul", ["x3", "scale"], ["s"]), n("Sub", ["s", "one"], ["image"])]
    graph = helper.make_graph(
        nodes, "toy_generator", [helper.make_tensor_value_info("label_map", TensorProto.UINT8, [1, h, w])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, h, w])], initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def toy_artifacts(folder: str | Path) -> dict[str, Path]:
    """``{"detector": det.onnx, "generator": gen.onnx}`` in ``folder``, each with its manifest (made once)."""
    import onnx

    from deploykit.manifest import write_artifact

    folder = Path(folder)
    out = {"detector": folder / "det.onnx", "generator": folder / "gen.onnx"}
    made = {"detector": (_detector_model, DETECTOR_MANIFEST), "generator": (_generator_model, GENERATOR_MANIFEST)}
    for kind, path in out.items():
        if not path.is_file() or not path.with_suffix(".json").is_file():
            model_fn, manifest = made[kind]
            model = model_fn()
            write_artifact(path, lambda p, model=model: onnx.save(model, str(p)), json.loads(json.dumps(manifest)))
    return out


if __name__ == "__main__":  # the C++ fuzz target's artifacts: python tests/fuzz/toys.py OUT_DIR
    import sys

    for kind, path in toy_artifacts(sys.argv[1]).items():
        print(f"{kind}: {path}")
