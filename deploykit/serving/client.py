"""``deploykit.serving.Client``: a deploykit model on a Triton server, used like the local runtime.

``Client(url, model).predict(image)`` returns the :class:`~deploykit.runtime.Detections` the local
``Detector(artifact).predict(image)`` returns, and ``generate(label_map)`` the image
``Generator(artifact).generate(label_map)`` returns. The client learns what it talks to from the
model's config on the server (``deploykit triton`` stores the manifest facts there):

- pixels in (``backend python``, or a pixels-in graph on a native backend): the image is sent
  as it is, ``image`` uint8 ``[1, H, W, 3]``, and the boxes come back in its pixels;
- a tensor-input detector graph on a native backend: the client does the runtime's
  preprocessing (resize, normalise, pad to the canvas) and maps the boxes back, exactly as
  :class:`~deploykit.runtime.Detector` does;
- a generator: label maps are checked and cast here; a float image output becomes uint8 as
  :class:`~deploykit.runtime.Generator` does.

URLs: ``http://host:8000`` (the default scheme) or ``grpc://host:8001``. A Client may be shared by
threads: each thread gets its own connection (tritonclient's HTTP client lives on one thread's gevent hub).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Sequence
from urllib.parse import urlsplit

import numpy as np

from ..errors import BadInput, expected_got
from ..runtime.detector import Detections, rescale_boxes
from ..runtime.generator import GeneratorInputs, to_uint8_image
from ..runtime.masks import DEFAULT_MASK_THRESHOLD, paste_masks
from ..runtime.preprocess import Preprocessing, image_list_batch, preprocess_batch, to_rgb
from .repository import NUMPY_DTYPES
from .server import INSTALL_HINT, ServerError

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}


def parse_url(url: str) -> tuple[str, str]:
    """``"grpc://h:8001"`` -> ``("grpc", "h:8001")``; no scheme means http; no port means 8000 / 8001."""
    text = url if "://" in url else f"http://{url}"
    parts = urlsplit(text)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise BadInput(expected_got("server URL", "http://HOST[:PORT] or grpc://HOST[:PORT]", repr(url)))
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise BadInput(expected_got("server URL port", "1..65535", repr(url))) from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return parts.scheme, f"{host}:{port}"


class Client:
    """A model on a Triton server: ``predict`` (detector) or ``generate`` (generator).

    Args:
        url: ``http://HOST:PORT`` or ``grpc://HOST:PORT``.
        model: the model's name in the server's repository; version: its version ("" = latest).
        timeout: seconds for connecting and for each request (60); a dead server gives
            :class:`~deploykit.serving.ServerError` within it, never a hang.

    Raises ServerError when the server is unreachable or the model not ready, BadInput when the
    model was not written by ``deploykit triton`` or the server rejects a request (Triton's message).
    """

    def __init__(self, url: str, model: str, *, version: str = "", timeout: float = 60.0) -> None:
        self.protocol, self.address = parse_url(url)
        self.url, self.model, self.version, self.timeout = url, model, str(version), float(timeout)
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as tc
            else:
                import tritonclient.http as tc
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise BadInput(expected_got("tritonclient", f"installed ({INSTALL_HINT})", "not installed")) from None
        self._tc, self._error_type = tc, InferenceServerException
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()
        try:
            self._configure(self._call(self._model_config))
        except BaseException:
            self.close()
            raise

    # -- setup -------------------------------------------------------------------------------
    @property
    def _client(self) -> Any:
        """This thread's tritonclient InferenceServerClient (made on first use)."""
        client = getattr(self._local, "client", None)
        if client is None:
            if self._opened is None:
                raise BadInput(expected_got(f"client for {self.url}", "an open client", "closed"))
            if self.protocol == "grpc":
                client = self._tc.InferenceServerClient(self.address)
            else:
                client = self._tc.InferenceServerClient(self.address, connection_timeout=self.timeout,
                                                        network_timeout=self.timeout)
            self._local.client = client
            with self._lock:
                self._opened.append(client)
        return client

    def _model_config(self) -> dict[str, Any]:
        if self.protocol == "grpc":
            return self._client.get_model_config(self.model, self.version, as_json=True,
                                                 client_timeout=self.timeout)["config"]
        return self._client.get_model_config(self.model, self.version)

    def _configure(self, config: dict[str, Any]) -> None:
        where = f"model {self.model!r} on {self.url}"
        try:
            self._configure_from(config, where)
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:  # a config deploykit did not write
            raise BadInput(expected_got(f"{where} config", "a model config written by deploykit triton",
                                        f"{type(e).__name__}: {e}"[:200])) from None

    def _configure_from(self, config: dict[str, Any], where: str) -> None:
        raw = ((config.get("parameters") or {}).get("deploykit_manifest") or {}).get("string_value")
        if not raw:
            raise BadInput(expected_got(f"{where} config", "parameters.deploykit_manifest (a repository written "
                                        "by deploykit triton)", "none"))
        self.facts: dict[str, Any] = json.loads(raw)
        if not isinstance(self.facts, dict):
            raise BadInput(expected_got(f"{where} config parameters.deploykit_manifest", "a JSON object",
                                        type(self.facts).__name__))
        self.kind: str = self.facts.get("kind", "")
        self.class_names = [str(n) for n in self.facts.get("class_names") or []]
        self.max_batch_size = int(config.get("max_batch_size") or 0)
        self.inputs = {i["name"]: (NUMPY_DTYPES[i["data_type"].removeprefix("TYPE_")],
                                   [int(d) for d in i.get("dims") or []]) for i in config.get("input") or []}
        self.outputs = [o["name"] for o in config.get("output") or []]
        masks = (self.facts.get("postprocessing") or {}).get("masks")
        threshold = masks.get("threshold") if isinstance(masks, dict) else None
        self.mask_threshold = float(DEFAULT_MASK_THRESHOLD if not isinstance(threshold, (int, float)) else threshold)
        if self.kind == "detector":
            if "image" in self.inputs:
                self.mode = "pixels"
                if "image_hw" in self.inputs:
                    self.preprocessing = Preprocessing.from_manifest(self.facts.get("preprocessing"),
                                                                     where=f"{where} preprocessing")
            elif set(self.inputs) == {"images", "image_sizes"}:
                self.mode = "tensor"
                self.preprocessing = Preprocessing.from_manifest(self.facts.get("preprocessing"),
                                                                 where=f"{where} preprocessing")
            else:
                raise BadInput(expected_got(f"{where} inputs", "image, or images + image_sizes", sorted(self.inputs)))
        elif self.kind == "generator":
            self.mode = self.facts.get("interface", "graph")
            self.generator_inputs = GeneratorInputs(self.facts)  # the runtime's own checks and feed
        else:
            raise BadInput(expected_got(f"{where} kind", "detector or generator", repr(self.kind)))

    # -- transport ---------------------------------------------------------------------------
    def _call(self, fn, *args):
        """Run a tritonclient call; its errors become one-line ServerError (unreachable) / BadInput (rejected)."""
        try:
            return fn(*args)
        except self._error_type as e:
            status = str(e.status() or "")
            text = (e.message() or str(e)).strip().splitlines()
            text = text[0] if text else type(e).__name__
            if text.startswith("[request id:") and "] " in text:
                text = text.split("] ", 1)[1]
            where = f"model {self.model!r} on {self.url}"
            if status in ("400", "StatusCode.INVALID_ARGUMENT"):
                raise BadInput(f"{where}: the server rejected the request: {text}") from None
            if "unavailable" in status.lower() or "unavailable" in text.lower() or "failed to connect" in text.lower():
                raise ServerError(expected_got(f"Triton server {self.url}", "reachable", text)) from None
            raise ServerError(f"{where}: {text}" + (f" (status {status})" if status else "")) from None
        except BadInput:
            raise
        except Exception as e:  # noqa: BLE001 (HTTP transport: refused, reset, closed, timed out; never a traceback)
            text = f"{type(e).__name__}: {e}".strip().rstrip(":")
            raise ServerError(expected_got(f"Triton server {self.url}", f"an answer within {self.timeout:g} s",
                                           text.splitlines()[0] if text else type(e).__name__)) from None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request: ``{input name: array with the batch axis}`` -> ``{output name: array}``."""
        tc = self._tc
        inputs = []
        for name, array in feed.items():
            array = np.ascontiguousarray(array)
            tensor = tc.InferInput(name, list(array.shape), _triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [tc.InferRequestedOutput(name) for name in self.outputs]

        def run():
            if self.protocol == "grpc":
                return self._client.infer(self.model, inputs, model_version=self.version, outputs=outputs,
                                          client_timeout=self.timeout)
            return self._client.infer(self.model, inputs, model_version=self.version, outputs=outputs)

        result = self._call(run)
        return self._checked({name: result.as_numpy(name) for name in self.outputs})

    def _checked(self, out: dict[str, Any]) -> dict[str, np.ndarray]:
        """The response's outputs, each a numeric array with a batch axis; else a one-line ServerError."""
        where = f"model {self.model!r} on {self.url} response"
        for name, value in out.items():
            if not isinstance(value, np.ndarray):
                raise ServerError(expected_got(f"{where} output {name!r}", "an array", type(value).__name__))
            if value.ndim < 1 or value.dtype.kind not in "biuf":
                raise ServerError(expected_got(f"{where} output {name!r}", "a numeric array with a batch axis",
                                               f"{value.dtype} {list(value.shape)}"))
        return out

    # -- detector ------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Images per call of :meth:`predict` on a list (one request each)."""
        return max(self.max_batch_size, 1)

    def predict(self, images: np.ndarray | Sequence[np.ndarray],
                names: Sequence[str] | None = None) -> Detections | list[Detections]:
        """Detections for one uint8 ``[H, W, 3]`` RGB image (gray, RGBA converted), or a list of them.

        ``names`` (as for :meth:`Detector.predict`) is what error messages call each image
        (default ``image``, ``image 0``, ``image 1``...), e.g. the file names.
        """
        if self.kind != "detector":
            raise BadInput(expected_got(f"model {self.model!r}", "a detector for predict()", self.kind))
        if isinstance(images, np.ndarray):
            return self._predict_one(images, names[0] if names else "image")
        if not isinstance(images, (list, tuple)):
            raise BadInput(expected_got("images", "a uint8 [H, W, 3] array or a list of them", type(images).__name__))
        if names is not None and len(names) != len(images):
            raise BadInput(expected_got("names", f"one per image ({len(images)})", len(names)))
        return [self._predict_one(image, names[i] if names is not None else f"image {i}")
                for i, image in enumerate(images)]

    def _predict_one(self, image: np.ndarray, what: str) -> Detections:
        rgb = to_rgb(image, what)
        original = rgb.shape[:2]
        if self.mode == "pixels":
            fixed = self.inputs["image"][1][-3:-1]
            if all(d > 0 for d in fixed) and tuple(fixed) != tuple(original):
                raise BadInput(expected_got(f"{what} size (H, W)", f"{tuple(fixed)} (model {self.model!r} takes a "
                                            "fixed image size)", tuple(original)))
            if "image_hw" in self.inputs:  # an image-list graph's own interface: each request one image
                feed = image_list_batch([rgb], self.preprocessing, [what])
                out = self.infer({k: self._fill_batch(v, k) if k != "canvas" else v for k, v in feed.items()})
            else:
                out = self.infer({"image": self._fill_batch(rgb[None], "image")})
            resized = None
        else:
            tensor, sizes, resized_sizes = preprocess_batch([rgb], self.preprocessing, [what])
            out = self.infer({"images": self._fill_batch(tensor, "images"),
                              "image_sizes": self._fill_batch(sizes, "image_sizes")})
            resized = resized_sizes[0]
        _check_detections(out, f"model {self.model!r} on {self.url} response")
        capacity = out["scores"].shape[1]
        n = int(np.clip(np.asarray(out["num_detections"]).reshape(-1)[0], 0, capacity))
        boxes = np.asarray(out["boxes"][0, :n], dtype=np.float32)
        boxes = rescale_boxes(boxes, resized, original) if resized is not None else boxes.copy()
        masks = probs = None
        if "masks" in out:  # pasted masks (a python-backend pipeline sends only the detections' own)
            pasted = np.asarray(out["masks"])[0, :n]
            if pasted.dtype == np.uint8:
                masks = pasted.copy()
            else:
                probs = pasted.astype(np.float32)
        elif "mask_probs" in out and "mask_boxes" in out:  # a compact graph on a native backend
            probs = paste_masks(np.asarray(out["mask_probs"])[0, :n], np.asarray(out["mask_boxes"])[0, :n], original)
        if probs is not None:
            masks = (probs > np.float32(self.mask_threshold)).astype(np.uint8)
        return Detections(boxes, np.asarray(out["scores"][0, :n], dtype=np.float32).copy(),
                          np.asarray(out["labels"][0, :n]).astype(np.int64), self.class_names, masks, probs)

    def _fill_batch(self, array: np.ndarray, name: str) -> np.ndarray:
        """A model without Triton batching (``max_batch_size: 0``) takes its fixed batch: repeat the sample."""
        if self.max_batch_size:
            return array
        dims = self.inputs[name][1]
        return np.repeat(array, dims[0], axis=0) if dims and dims[0] > 1 else array

    # -- generator -----------------------------------------------------------------------------
    def generate(self, label_map: Any, instance_map: Any = None, *, z: Any = None, seed: int | None = None,
                 resize: bool = False) -> np.ndarray:
        """One image, uint8 ``[H, W, 3]``, as :meth:`deploykit.runtime.Generator.generate` makes it."""
        if self.kind != "generator":
            raise BadInput(expected_got(f"model {self.model!r}", "a generator for generate()", self.kind))
        feed = self.generator_inputs.feed(label_map, instance_map, z=z, seed=seed, resize=resize)
        if self.mode == "pipeline":  # the pipeline batches on the server: one sample per request
            feed = {k: v[:1] for k, v in feed.items()}
        image = self.infer(feed)["image"]
        h, w = self.generator_inputs.size
        want = (3, h, w) if image.dtype != np.uint8 else (h, w, 3)
        if image.ndim != 4 or image.shape[0] < 1 or tuple(image.shape[1:]) != want:
            raise ServerError(expected_got(f"model {self.model!r} on {self.url} response output 'image'",
                                           f"[B, {', '.join(map(str, want))}] {image.dtype}", list(image.shape)))
        image = image[0]
        return np.ascontiguousarray(image) if image.dtype == np.uint8 else to_uint8_image(image)

    # -- server facts --------------------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        """Triton's statistics for this model: ``inference_count``, ``execution_count`` and
        ``batches`` = ``{executed batch size: times}``."""
        if self.protocol == "grpc":
            raw = self._call(lambda: self._client.get_inference_statistics(self.model, self.version, as_json=True,
                                                                           client_timeout=self.timeout))
        else:
            raw = self._call(lambda: self._client.get_inference_statistics(self.model, self.version))
        stats = (raw.get("model_stats") or [{}])[0]
        batches = {int(b["batch_size"]): int((b.get("compute_infer") or {}).get("count", 0))
                   for b in stats.get("batch_stats") or []}
        return {"inference_count": int(stats.get("inference_count", 0)),
                "execution_count": int(stats.get("execution_count", 0)), "batches": batches}

    def close(self) -> None:
        """Close every thread's connection; the Client cannot be used afterwards."""
        with self._lock:
            opened, self._opened = self._opened or [], None
        for client in opened:
            try:
                client.close()
            except Exception:  # noqa: BLE001 (a dead connection, or another thread's gevent hub)
                pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_detections(out: dict[str, np.ndarray], where: str) -> None:
    """A detector's response: num_detections, boxes [B, K, 4], scores [B, K], labels [B, K] (masks [B, N, H, W])."""
    want = {"num_detections": None, "boxes": 3, "scores": 2, "labels": 2}
    for name, rank in want.items():
        a = out.get(name)
        if a is None or a.size == 0 or (rank is not None and a.ndim != rank):
            raise ServerError(expected_got(f"{where} output {name!r}", f"{rank or 'a'}-D array with a sample" if rank
                                           else "an array with a sample", "none" if a is None else list(a.shape)))
    k = out["scores"].shape[1]
    if out["boxes"].shape[1:] != (k, 4) or out["labels"].shape[1] != k:
        raise ServerError(expected_got(f"{where} outputs", f"boxes [B, {k}, 4] and labels [B, {k}] as scores",
                                       f"boxes {list(out['boxes'].shape)}, labels {list(out['labels'].shape)}"))
    masks = out.get("masks")
    if masks is not None and masks.ndim != 4:
        raise ServerError(expected_got(f"{where} output 'masks'", "[B, N, H, W]", list(masks.shape)))


def _triton_dtype(dtype: np.dtype) -> str:
    from .repository import TRITON_DTYPES

    name = TRITON_DTYPES.get(np.dtype(dtype).name)
    if name is None:
        raise BadInput(expected_got("tensor dtype", "a numeric dtype Triton has", str(dtype)))
    return name.removeprefix("TYPE_")
