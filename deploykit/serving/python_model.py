"""deploykit inside Triton's Python backend (the ``model.py`` that ``deploykit triton --backend python`` writes).

Triton calls ``TritonPythonModel.execute(requests)`` with the requests its dynamic batcher
grouped; each request carries its own tensors (the detector's ``image`` input allows ragged
batches, so images of different sizes are served together). A handler turns the requests'
feeds into outputs, one dict or one exception per request, so a bad request fails alone:

- ``pipeline`` detector: ``image`` uint8 ``[n, H, W, 3]`` (the requests of one execution may have
  different sizes: the input allows ragged batches; an image-list graph runs those sharing their own
  padded size as one call) → :class:`deploykit.runtime.Detector`
  → ``num_detections`` int32 ``[n, 1]``, ``boxes`` float32 ``[n, K, 4]`` (original pixels),
  ``scores`` ``[n, K]``, ``labels`` int32 ``[n, K]``, padded with box 0, score 0, label -1;
  Mask R-CNN adds ``masks`` uint8 ``[n, N, H, W]``: the binary masks of the request's detections
  in its own pixels (N the most detections of its images; only those travel, never K);
- ``pipeline`` generator: ``label_map`` ``[n, H, W]`` (+ ``instance_map``, ``z``) →
  :class:`deploykit.runtime.Generator` → ``image`` uint8 ``[n, H, W, 3]``;
- ``graph``: the graph's own inputs and outputs on deploykit's Session, requests concatenated
  along the batch axis (what Triton's ONNX Runtime backend would do).

The handlers need no Triton; only :class:`TritonPythonModel` imports
``triton_python_backend_utils``, which exists inside the Python backend's stub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import BadInput

Feed = dict[str, np.ndarray]


def _parameters(config: Mapping[str, Any]) -> dict[str, str]:
    return {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}


class Handler:
    """Runs one group of requests: ``run(feeds) -> [outputs dict or Exception per feed]``.

    Subclasses open their runtime object (Detector, Generator or Session) in :meth:`open`.
    """

    def __init__(self, artifact: Path, config: Mapping[str, Any], threads: int | None) -> None:
        self.artifact, self.config = artifact, config
        self.runner = self.open(artifact, threads)

    def open(self, artifact: Path, threads: int | None) -> Any:
        raise NotImplementedError

    def run(self, feeds: Sequence[Feed]) -> list[Feed | Exception]:
        """All feeds at once; if that fails on bad input, each feed alone so only the bad ones fail."""
        try:
            return list(self._run_all(feeds))
        except BadInput:
            if len(feeds) == 1:
                raise
        results: list[Feed | Exception] = []
        for feed in feeds:
            try:
                results.append(self._run_all([feed])[0])
            except Exception as e:  # noqa: BLE001 (the error goes back to that request's client)
                results.append(e)
        return results

    def _run_all(self, feeds: Sequence[Feed]) -> list[Feed]:
        raise NotImplementedError

    def close(self) -> None:
        self.runner.close()


def _split(out: Feed, counts: Sequence[int]) -> list[Feed]:
    """Batched outputs back to the requests, ``counts[i]`` samples each, in order."""
    results, start = [], 0
    for n in counts:
        results.append({k: v[start:start + n] for k, v in out.items()})
        start += n
    return results


class DetectorPipeline(Handler):
    def open(self, artifact: Path, threads: int | None) -> Any:
        from ..runtime.detector import Detector

        boxes = next(o for o in self.config["output"] if o["name"] == "boxes")
        self.k = int(boxes["dims"][0])
        self.masks = any(o["name"] == "masks" for o in self.config["output"])
        return Detector(artifact, threads=threads)

    def _run_all(self, feeds: Sequence[Feed]) -> list[Feed]:
        images = [np.ascontiguousarray(image) for f in feeds for image in f["image"]]
        # an image-list graph runs the requests Triton batched in calls of images sharing their own padded size:
        # each answer is the image's alone, whoever else sent a request at the same time
        dets = self.runner.predict(images, group="canvas" if self.runner.image_list else None)
        results, start = [], 0
        for f in feeds:  # one response per request: its images share a size, its masks that size
            results.append(self._pack(dets[start:start + len(f["image"])]))
            start += len(f["image"])
        return results

    def _pack(self, dets: list) -> Feed:
        n, k = len(dets), self.k
        out = {"num_detections": np.zeros((n, 1), np.int32), "boxes": np.zeros((n, k, 4), np.float32),
               "scores": np.zeros((n, k), np.float32), "labels": np.full((n, k), -1, np.int32)}
        for i, d in enumerate(dets):
            m = len(d)
            out["num_detections"][i, 0] = m
            out["boxes"][i, :m] = d.boxes
            out["scores"][i, :m] = d.scores
            out["labels"][i, :m] = d.labels
        if self.masks:
            height, width = dets[0].masks.shape[1:] if dets else (0, 0)
            out["masks"] = np.zeros((n, max((len(d) for d in dets), default=0), height, width), np.uint8)
            for i, d in enumerate(dets):
                out["masks"][i, :len(d)] = d.masks
        return out


class GeneratorPipeline(Handler):
    def open(self, artifact: Path, threads: int | None) -> Any:
        from ..runtime.generator import Generator

        return Generator(artifact, threads=threads)

    def _run_all(self, feeds: Sequence[Feed]) -> list[Feed]:
        results = []
        for f in feeds:
            images = []
            for i in range(len(f["label_map"])):
                inst = f["instance_map"][i] if "instance_map" in f else None
                z = f["z"][i] if "z" in f else None
                images.append(self.runner.generate(f["label_map"][i], inst, z=z))
            results.append({"image": np.stack(images)})
        return results


class GraphHandler(Handler):
    def open(self, artifact: Path, threads: int | None) -> Any:
        from ..runtime.backends import load

        self.batched = int(self.config.get("max_batch_size") or 0) > 0
        self.reshape = {o["name"]: [int(d) for d in o["dims"]] for o in self.config["output"] if o.get("reshape")}
        return load(artifact, threads=threads)

    def _run_all(self, feeds: Sequence[Feed]) -> list[Feed]:
        if not self.batched:
            return [self.runner.run(f) for f in feeds]
        names = [s.name for s in self.runner.inputs]
        missing = [n for n in names if any(n not in f for f in feeds)]
        if missing:
            raise BadInput(f"inputs {missing} missing from a request")
        if any(len({f[n].shape[1:] for f in feeds}) > 1 for n in names):  # sizes differ: each request alone
            return [self._run_all([f])[0] for f in feeds]
        feed = {n: np.concatenate([f[n] for f in feeds]) if len(feeds) > 1 else feeds[0][n] for n in names}
        counts = [len(f[names[0]]) for f in feeds]
        out = self.runner.run(feed)
        # outputs as Triton's config declares them (a [B] graph output is [B, 1] with `reshape`)
        out = {k: v.reshape(sum(counts), *self.reshape[k]) if k in self.reshape else v for k, v in out.items()}
        return _split(out, counts)


HANDLERS = {("pipeline", "detector"): DetectorPipeline, ("pipeline", "generator"): GeneratorPipeline,
            ("graph", "detector"): GraphHandler, ("graph", "generator"): GraphHandler}


def handler_for(config: Mapping[str, Any], model_dir: str | Path, version: str) -> Handler:
    """The handler a model config (Triton's JSON form) asks for, on the artifact in ``model_dir/version``."""
    params = _parameters(config)
    facts = json.loads(params.get("deploykit_manifest") or "{}")
    key = (params.get("deploykit_mode"), facts.get("kind"))
    if key not in HANDLERS:
        raise BadInput(f"model {config.get('name')!r}: parameters deploykit_mode/deploykit_manifest name no "
                       f"deploykit handler (got {key}); was config.pbtxt written by `deploykit triton`?")
    threads = int(params.get("deploykit_threads") or 0) or None
    return HANDLERS[key](Path(model_dir) / version / params["deploykit_artifact"], config, threads)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    return line if isinstance(error, BadInput) else f"{type(error).__name__}: {line}"


class _Exported:
    """``array`` for ``pb_utils.Tensor.from_dlpack``, keeping the DLPack capsule it hands out."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.capsule = array, None

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        self.capsule = self.array.__dlpack__(*args, **kwargs)
        return self.capsule

    def __dlpack_device__(self) -> Any:
        return self.array.__dlpack_device__()


def _output_tensor(pb: Any, name: str, array: np.ndarray) -> Any:
    """A Python-backend output tensor made through DLPack.

    ``pb_utils.Tensor(name, array)`` reads the dtype's item size from numpy's C struct, whose
    layout numpy 2 changed: with the stub bundled in nvidia-pytriton 0.7 (Triton 2.51) outputs
    then arrive empty. DLPack carries dtype and shape itself and works with numpy 1 and 2. The
    stub takes ownership of the capsule but marks it ``used_dlpack`` rather than DLPack's
    ``used_dltensor``, so numpy's capsule destructor would print a (harmless) traceback per
    tensor; renaming it as DLPack says tells numpy the consumer owns it.
    """
    exported = _Exported(array)
    tensor = pb.Tensor.from_dlpack(name, exported)
    _mark_consumed(exported.capsule)
    return tensor


_USED = b"used_dltensor"  # capsule names are borrowed: this constant outlives every capsule


def _mark_consumed(capsule: Any) -> None:
    import ctypes

    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_SetName.restype = ctypes.c_int
    api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
    if capsule is not None and api.PyCapsule_GetName(capsule) not in (b"dltensor", b"dltensor_versioned", None):
        api.PyCapsule_SetName(capsule, _USED)  # consumed under another name: numpy must not free it


class TritonPythonModel:
    """The Python backend's entry points: initialize, execute, finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self._pb = pb_utils
        self.config = json.loads(args["model_config"])
        self.inputs = [i["name"] for i in self.config["input"]]
        self.outputs = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in self.config["output"]}
        self.handler = handler_for(self.config, args["model_repository"], args["model_version"])

    def execute(self, requests: list) -> list:
        pb = self._pb
        feeds = []
        for request in requests:
            feed = {}
            for name in self.inputs:
                tensor = pb.get_input_tensor_by_name(request, name)
                if tensor is not None:  # optional inputs may be absent
                    feed[name] = np.from_dlpack(tensor)
            feeds.append(feed)
        try:
            results: list[Feed | Exception] = self.handler.run(feeds)
        except Exception as e:  # noqa: BLE001 (every request of the group gets the error)
            results = [e] * len(requests)
        responses = []
        for result in results:
            if isinstance(result, Exception):
                code = getattr(pb.TritonError, "INVALID_ARG" if isinstance(result, BadInput) else "INTERNAL", None)
                error = pb.TritonError(_one_line(result)) if code is None else pb.TritonError(_one_line(result), code)
                responses.append(pb.InferenceResponse(output_tensors=[], error=error))
            else:
                responses.append(pb.InferenceResponse(output_tensors=[
                    _output_tensor(pb, name, np.ascontiguousarray(result[name], dtype=dtype))
                    for name, dtype in self.outputs.items()]))
        return responses

    def finalize(self) -> None:
        self.handler.close()
