"""Detector pipeline: image(s) -> preprocessing -> exported detector graph -> boxes in original pixels.

The exported detector graph (see docs/runtime.md) takes

- ``images`` float32 ``[B, 3, H, W]``: RGB / 255, normalised, resized to fit
  ``H x W``, zero-padded bottom/right after normalisation;
- ``image_sizes`` float32 ``[B, 2]``: (height, width) of each resized image
  before padding (the graph clips boxes to it);

and returns ``num_detections`` int32 ``[B]``, ``boxes`` float32 ``[B, K, 4]``
(x1, y1, x2, y2 in network-input pixels), ``scores`` float32 ``[B, K]`` and
``labels`` int32 ``[B, K]``, sorted by score, padded with box 0, score 0,
label -1. :class:`Detector` adds torchvision's pre- and post-processing around
it, in numpy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import BadInput, expected_got
from ..manifest import manifest_path
from .preprocess import Preprocessing, preprocess_batch, to_rgb
from .session import OwnsSession, Session, load

INPUTS = ("images", "image_sizes")
OUTPUTS = ("num_detections", "boxes", "scores", "labels")


@dataclass
class Detections:
    """Detections for one image.

    Attributes:
        boxes: float32 ``[N, 4]``, (x1, y1, x2, y2) in the original image's pixels.
        scores: float32 ``[N]``, descending.
        labels: int64 ``[N]``, indices into ``class_names`` (0 is background).
        class_names: the model's class names (may be empty).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def label_name(self, label: int) -> str:
        """Class name of ``label``, or ``"class_<label>"`` when the manifest has none."""
        return self.class_names[label] if 0 <= label < len(self.class_names) else f"class_{label}"

    @property
    def label_names(self) -> list[str]:
        return [self.label_name(int(label)) for label in self.labels]

    def above(self, min_score: float) -> "Detections":
        """Only the detections with ``score >= min_score``."""
        keep = self.scores >= min_score
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], self.class_names)

    def to_json(self) -> list[dict[str, Any]]:
        """``[{"box": [x1, y1, x2, y2], "score": s, "label": i, "label_name": name}, ...]``."""
        return [
            {"box": [float(v) for v in box], "score": float(score), "label": int(label),
             "label_name": self.label_name(int(label))}
            for box, score, label in zip(self.boxes, self.scores, self.labels)
        ]


def rescale_boxes(boxes: np.ndarray, resized: tuple[int, int], original: tuple[int, int]) -> np.ndarray:
    """Boxes from resized-image pixels to original-image pixels, as torchvision's ``resize_boxes``.

    ``ratio = float32(original) / float32(resized)`` per axis; x scaled by the
    width ratio, y by the height ratio, in float32. No clipping (torchvision
    clips in network-input pixels, which the graph does).
    """
    ratio_h = np.float32(original[0]) / np.float32(resized[0])
    ratio_w = np.float32(original[1]) / np.float32(resized[1])
    out = np.asarray(boxes, dtype=np.float32).copy()
    out[:, 0::2] *= ratio_w
    out[:, 1::2] *= ratio_h
    return out


class Detector(OwnsSession):
    """An exported detector with its manifest: ``predict(image) -> Detections``.

    Args:
        path: the detector artifact (``.onnx``); its manifest ``.json`` must sit
            beside it (``kind: "detector"``, ``preprocessing``, ``batch``,
            ``class_names``).
        threads, providers: passed to :func:`deploykit.runtime.load`.

    Thread-safe: one Detector may serve several threads.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
                 providers: list[str] | None = None, cuda_graph: bool = False) -> None:
        self.session: Session = load(path, threads=threads, providers=providers, cuda_graph=cuda_graph)
        try:
            self._configure()
        except BaseException:
            self.session.close()
            raise

    @classmethod
    def from_session(cls, session: Session) -> "Detector":
        """A Detector on an already open Session (e.g. one given a manifest explicitly).

        The Detector owns the session from then on: ``close()`` closes it.
        """
        det = cls.__new__(cls)
        det.session = session
        try:
            det._configure()
        except BaseException:
            session.close()
            raise
        return det

    def _configure(self) -> None:
        session, where = self.session, f"detector {self.session.path}"
        manifest = session.manifest
        if manifest is None:
            raise BadInput(expected_got(where, f"a manifest {manifest_path(session.path, legacy=False).name} beside it",
                                        "no manifest"))
        if manifest.get("kind") != "detector":
            raise BadInput(expected_got(f"{where} manifest kind", "'detector'", repr(manifest.get("kind"))))
        self.manifest = manifest
        self.preprocessing = Preprocessing.from_manifest(manifest.get("preprocessing"),
                                                         where=f"{where} manifest preprocessing")
        self.class_names: list[str] = [str(n) for n in manifest.get("class_names") or []]
        inputs = {s.name: s for s in session.inputs}
        outputs = {s.name for s in session.outputs}
        if sorted(inputs) != sorted(INPUTS):
            raise BadInput(expected_got(f"{where} inputs", list(INPUTS), sorted(inputs)))
        missing = [name for name in OUTPUTS if name not in outputs]
        if missing:
            raise BadInput(expected_got(f"{where} outputs", list(OUTPUTS), f"missing {missing}"))
        images = inputs["images"]
        canvas = self.preprocessing.input_size
        if len(images.shape) != 4 or images.shape[1] != 3 or any(
                isinstance(d, int) and d != c for d, c in zip(images.shape[2:], canvas)):
            raise BadInput(expected_got(f"{where} input 'images'",
                                        f"[batch, 3, {canvas[0]}, {canvas[1]}] (manifest input_size)",
                                        "[" + ", ".join(map(str, images.shape)) + "]"))
        batch = images.shape[0]
        if isinstance(batch, int):
            self.batch_range = (batch, batch)
        else:
            section = manifest.get("batch") or {}
            low, high = section.get("min", 1), section.get("max")
            if not isinstance(low, int) or not isinstance(high, int) or not 1 <= low <= high:
                raise BadInput(expected_got(f"{where} manifest batch", "{min, max} ints with 1 <= min <= max",
                                            repr(section)))
            self.batch_range = (low, high)

    # -- public API -------------------------------------------------------
    def predict(self, images: np.ndarray | Sequence[np.ndarray]) -> Detections | list[Detections]:
        """Detect objects.

        Args:
            images: one uint8 ``[H, W, 3]`` RGB array (``[H, W]`` gray and
                ``[H, W, 4]`` RGBA are converted), or a list of them.

        Returns:
            :class:`Detections` for one array, a list of them for a list. Lists
            run in batches of up to the model's batch size; a fixed batch's
            last chunk is filled with blank images whose results are dropped.
        """
        if isinstance(images, np.ndarray):
            return self._predict_batch([images])[0]
        if not isinstance(images, (list, tuple)):
            raise BadInput(expected_got("images", "a uint8 [H, W, 3] array or a list of them",
                                        type(images).__name__))
        results: list[Detections] = []
        step = self.batch_range[1]
        for start in range(0, len(images), step):
            results.extend(self._predict_batch(images[start:start + step], offset=start))
        return results

    @property
    def batch_size(self) -> int:
        """Largest batch one run takes."""
        return self.batch_range[1]

    # -- pipeline ---------------------------------------------------------
    def _predict_batch(self, images: Sequence[np.ndarray], offset: int = 0) -> list[Detections]:
        names = [f"image {offset + i}" if len(images) > 1 or offset else "image" for i in range(len(images))]
        rgb = [to_rgb(image, name) for image, name in zip(images, names)]
        tensor, image_sizes, sizes = preprocess_batch(rgb, self.preprocessing, names)
        count = len(rgb)
        fill = self.batch_range[0] - count
        if fill > 0:  # blank images at the canvas size; their results are dropped
            height, width = self.preprocessing.input_size
            tensor = np.concatenate([tensor, np.zeros((fill, 3, height, width), np.float32)])
            image_sizes = np.concatenate([image_sizes, np.tile(np.float32([height, width]), (fill, 1))])
        out = self.session.run({"images": tensor, "image_sizes": image_sizes})
        return [self._detections(out, i, sizes[i], rgb[i].shape[:2]) for i in range(count)]

    def _detections(self, out: dict[str, np.ndarray], i: int, resized: tuple[int, int],
                    original: tuple[int, int]) -> Detections:
        capacity = out["scores"].shape[1]
        n = int(np.clip(out["num_detections"][i], 0, capacity))
        boxes = rescale_boxes(out["boxes"][i, :n], resized, original)
        scores = np.asarray(out["scores"][i, :n], dtype=np.float32).copy()
        labels = np.asarray(out["labels"][i, :n]).astype(np.int64)
        return Detections(boxes, scores, labels, self.class_names)
