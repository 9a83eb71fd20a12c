"""Detector pipeline: image(s) -> exported detector graph -> boxes in original pixels.

A **pixels-in** graph (``deploykit export --input image``) takes ``image`` uint8
``[B, h, w, 3]`` RGB and does torchvision's resize, normalisation, padding and the
rescale of the boxes to the original image itself: :class:`Detector` only checks and
stacks the images.

A **tensor-input** graph takes

- ``images`` float32 ``[B, 3, H, W]``: RGB / 255, normalised, resized (to fit the
  canvas ``H x W``, or by the model's min_size/max_size rule in dynamic mode),
  zero-padded bottom/right after normalisation;
- ``image_sizes`` float32 ``[B, 2]``: (height, width) of each resized image
  before padding (the graph clips boxes to it);

and boxes come back in network-input pixels; :class:`Detector` adds torchvision's
pre- and post-processing around it, in numpy.

Both return ``num_detections`` int32 ``[B]``, ``boxes`` float32 ``[B, K, 4]``
(x1, y1, x2, y2), ``scores`` float32 ``[B, K]`` and ``labels`` int32 ``[B, K]``,
sorted by score, padded with box 0, score 0, label -1.

A Mask R-CNN graph (pixels-in) adds its masks (manifest ``postprocessing.masks``): pasted
``masks`` [B, N, h, w] (N ≤ K: one per detection of the batch's fullest image) the runtime only slices, or compact ``mask_probs`` + ``mask_boxes`` it
pastes with the shared rule of :mod:`deploykit.runtime.masks`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import BadInput, expected_got
from ..manifest import manifest_path
from .backends import load
from .masks import DEFAULT_MASK_THRESHOLD, paste_masks, rle_encode
from .preprocess import Preprocessing, image_list_batch, padded_batch_size, pixel_batch, preprocess_batch, to_rgb
from .session import OwnsSession, Session

INPUTS = ("images", "image_sizes")
PIXEL_INPUTS = ("image",)
LIST_INPUTS = ("image", "image_hw", "canvas")  # image-list graphs: images of different sizes in one call
OUTPUTS = ("num_detections", "boxes", "scores", "labels")
PASTED_MASKS = "masks"
COMPACT_MASKS = ("mask_probs", "mask_boxes")


@dataclass
class Detections:
    """Detections for one image.

    Attributes:
        boxes: float32 ``[N, 4]``, (x1, y1, x2, y2) in the original image's pixels.
        scores: float32 ``[N]``, descending.
        labels: int64 ``[N]``, indices into ``class_names`` (0 is background).
        class_names: the model's class names (may be empty).
        masks: Mask R-CNN: uint8 ``[N, H, W]`` in the original image's pixels, 1 where the mask
            probability exceeds the manifest's threshold (0.5); None for a box-only detector.
        mask_probs: float32 ``[N, H, W]`` mask probabilities when the graph gives them (compact
            masks, pasted by the runtime, or pasted masks exported without a threshold), else None.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)
    masks: np.ndarray | None = None
    mask_probs: np.ndarray | None = None

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
        pick = (lambda a: None if a is None else a[keep])  # noqa: E731
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], self.class_names,
                          pick(self.masks), pick(self.mask_probs))

    def to_json(self) -> list[dict[str, Any]]:
        """``[{"box": [x1, y1, x2, y2], "score": s, "label": i, "label_name": name}, ...]``; with masks,
        each entry also has ``"segmentation"``: the mask as COCO uncompressed RLE (column-major runs,
        zeros first; :func:`deploykit.runtime.masks.rle_decode` or pycocotools' ``frPyObjects`` read it)."""
        out = [
            {"box": [float(v) for v in box], "score": float(score), "label": int(label),
             "label_name": self.label_name(int(label))}
            for box, score, label in zip(self.boxes, self.scores, self.labels)
        ]
        if self.masks is not None:
            for entry, mask in zip(out, self.masks):
                entry["segmentation"] = rle_encode(mask)
        return out


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
        pre = self.preprocessing
        self.image_list = pre.in_graph and (manifest.get("preprocessing") or {}).get("input") == "image-list"
        expected = LIST_INPUTS if self.image_list else PIXEL_INPUTS if pre.in_graph else INPUTS
        if sorted(inputs) != sorted(expected):
            hint = " (manifest preprocessing says " + ("image-list" if self.image_list else "pixels-in" if pre.in_graph
                                                        else "tensor-input") + ")"
            raise BadInput(expected_got(f"{where} inputs", list(expected), f"{sorted(inputs)}{hint}"))
        missing = [name for name in OUTPUTS if name not in outputs]
        if missing:
            raise BadInput(expected_got(f"{where} outputs", list(OUTPUTS), f"missing {missing}"))
        self.mask_form = ("pasted" if PASTED_MASKS in outputs else
                          "compact" if all(n in outputs for n in COMPACT_MASKS) else None)
        section = (manifest.get("postprocessing") or {}).get("masks")
        threshold = section.get("threshold") if isinstance(section, dict) else None
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise BadInput(expected_got(f"{where} manifest postprocessing.masks.threshold", "a number or null",
                                        repr(threshold)))
        self.mask_threshold = float(DEFAULT_MASK_THRESHOLD if threshold is None else threshold)
        if self.mask_form is not None and not pre.in_graph:
            raise BadInput(expected_got(f"{where} masks", "a pixels-in graph (masks are in the original image's "
                                        "pixels)", "a tensor-input graph"))
        if pre.in_graph:
            first = inputs["image"]
            if len(first.shape) != 4 or first.shape[3] != 3:
                raise BadInput(expected_got(f"{where} input 'image'", "[batch, height, width, 3] uint8",
                                            "[" + ", ".join(map(str, first.shape)) + "]"))
        else:
            first = inputs["images"]
            canvas = pre.input_size
            if len(first.shape) != 4 or first.shape[1] != 3 or (canvas is not None and any(
                    isinstance(d, int) and d != c for d, c in zip(first.shape[2:], canvas))):
                want = f"[batch, 3, {canvas[0]}, {canvas[1]}] (manifest input_size)" if canvas else "[batch, 3, H, W]"
                raise BadInput(expected_got(f"{where} input 'images'", want,
                                            "[" + ", ".join(map(str, first.shape)) + "]"))
        batch = first.shape[0]
        if isinstance(batch, int):
            self.batch_range = (batch, batch)
        else:
            section = manifest.get("batch") or {}
            low, high = section.get("min", 1), section.get("max")
            if not isinstance(low, int) or not isinstance(high, int) or not 1 <= low <= high:
                raise BadInput(expected_got(f"{where} manifest batch", "{min, max} ints with 1 <= min <= max",
                                            repr(section)))
            self.batch_range = (low, high)

    @property
    def pixels_in(self) -> bool:
        """True for a graph that takes uint8 pixels and does all pre/post-processing itself."""
        return self.preprocessing.in_graph

    # -- public API -------------------------------------------------------
    def predict(self, images: np.ndarray | Sequence[np.ndarray], names: Sequence[str] | None = None, *,
                group: str | None = None) -> Detections | list[Detections]:
        """Detect objects.

        Args:
            images: one uint8 ``[H, W, 3]`` RGB array (``[H, W]`` gray and
                ``[H, W, 4]`` RGBA are converted), or a list of them.
            names: what to call each image in error messages (default ``image``,
                ``image 0``, ``image 1``...), e.g. the file names.
            group: image-list graphs only. ``None`` (default): torchvision's list semantics
                (below). ``"canvas"``: images whose own padded network size (torchvision's, for the
                image alone) is the same run together, so each result equals the image's alone
                (``model([a])``) whatever else is in the list, and no image is padded beyond its
                own size; fewer images per call.

        Returns:
            :class:`Detections` for one array, a list of them for a list, ``result[i]`` for
            ``images[i]``, each in its own image's pixels. Lists run in chunks of up to the
            model's batch size, in order. An image-list graph (``--input image-list``) runs a
            chunk of any sizes as **one** call, as torchvision's ``model([a, b, c])`` does: each
            image resized from its own size, all padded to the chunk's largest (so results equal
            ``model(chunk)``'s, which can differ slightly from ``model([a])``: the padding
            differs). A pixels-in graph runs consecutive images of one size per call. A fixed
            batch's last chunk is filled with copies whose results are dropped.
        """
        if isinstance(images, np.ndarray):
            return self._predict_batch([images], names=names)[0]
        if not isinstance(images, (list, tuple)):
            raise BadInput(expected_got("images", "a uint8 [H, W, 3] array or a list of them",
                                        type(images).__name__))
        if group is not None:
            if group != "canvas" or not self.image_list:
                raise BadInput(expected_got("group", "None, or 'canvas' for an image-list graph",
                                            f"{group!r} for a {'image-list' if self.image_list else 'one-size'} graph"))
            return self._predict_grouped(images, names)
        results: list[Detections] = []
        step = self.batch_range[1]
        start = 0
        while start < len(images):
            stop = min(start + step, len(images))
            if self.pixels_in and not self.image_list:  # a run of one size
                first = np.shape(images[start])[:2]
                stop = next((i for i in range(start + 1, stop) if np.shape(images[i])[:2] != first), stop)
            results.extend(self._predict_batch(images[start:stop], offset=start,
                                               names=None if names is None else names[start:stop]))
            start = stop
        return results

    def _predict_grouped(self, images: Sequence[np.ndarray], names: Sequence[str] | None) -> list[Detections]:
        """``predict(group="canvas")``: one call per chunk of images sharing their own padded size."""
        pre = self.preprocessing
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            h, w = to_rgb(image, names[i]).shape[:2]
            groups.setdefault(padded_batch_size(pre, [pre.resized_size(h, w)]), []).append(i)
        results: list[Detections | None] = [None] * len(images)
        step = self.batch_range[1]
        for members in groups.values():
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                found = self._predict_batch([images[i] for i in chunk], names=[names[i] for i in chunk])
                for i, dets in zip(chunk, found):
                    results[i] = dets
        return results  # type: ignore[return-value]

    @property
    def batch_size(self) -> int:
        """Largest batch one run takes."""
        return self.batch_range[1]

    def feed(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None,
             ) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
        """The graph's feed for ``images`` (at most ``batch_size``), and each image's resized size.

        Pixels-in graphs get the uint8 images (resized sizes are then computed by the graph;
        the returned ones are what torchvision computes, for reference); image-list graphs get them
        in slots of the largest size with their sizes and the batch's canvas
        (:func:`~deploykit.runtime.preprocess.image_list_batch`); tensor-input graphs get the numpy
        preprocessing. A fixed batch larger than ``len(images)`` is filled (blank images for a
        tensor graph, copies of the last image for a pixels-in graph; :meth:`predict` drops their
        results).
        """
        if names is None:
            names = [f"image {i}" for i in range(len(images))] if len(images) > 1 else ["image"]
        rgb = [to_rgb(image, name) for image, name in zip(images, names)]
        sizes = [self.preprocessing.resized_size(*image.shape[:2]) for image in rgb]
        fill = self.batch_range[0] - len(rgb)
        if self.image_list:
            if fill > 0:
                rgb, names = rgb + [rgb[-1]] * fill, list(names) + [names[-1]] * fill
            return image_list_batch(rgb, self.preprocessing, names), sizes
        if self.pixels_in:
            pixels = pixel_batch(rgb, self.preprocessing, names)
            if fill > 0:
                pixels = np.concatenate([pixels, np.repeat(pixels[-1:], fill, axis=0)])
            return {"image": pixels}, sizes
        tensor, image_sizes, sizes = preprocess_batch(rgb, self.preprocessing, names)
        if fill > 0:  # blank images filling the whole tensor
            height, width = tensor.shape[2:]
            tensor = np.concatenate([tensor, np.zeros((fill, 3, height, width), np.float32)])
            image_sizes = np.concatenate([image_sizes, np.tile(np.float32([height, width]), (fill, 1))])
        return {"images": tensor, "image_sizes": image_sizes}, sizes

    # -- pipeline ---------------------------------------------------------
    def _predict_batch(self, images: Sequence[np.ndarray], offset: int = 0,
                       names: Sequence[str] | None = None) -> list[Detections]:
        if names is None:
            names = [f"image {offset + i}" if len(images) > 1 or offset else "image" for i in range(len(images))]
        rgb = [to_rgb(image, name) for image, name in zip(images, names)]
        feed, sizes = self.feed(rgb, names)
        out = self.session.run(feed)
        return [self._detections(out, i, sizes[i], rgb[i].shape[:2]) for i in range(len(rgb))]

    def _detections(self, out: dict[str, np.ndarray], i: int, resized: tuple[int, int],
                    original: tuple[int, int]) -> Detections:
        capacity = out["scores"].shape[1]
        n = int(np.clip(out["num_detections"][i], 0, capacity))
        boxes = np.asarray(out["boxes"][i, :n], dtype=np.float32).copy()
        if not self.pixels_in:  # the graph's boxes are in network-input pixels
            boxes = rescale_boxes(boxes, resized, original)
        scores = np.asarray(out["scores"][i, :n], dtype=np.float32).copy()
        labels = np.asarray(out["labels"][i, :n]).astype(np.int64)
        masks, probs = self._masks(out, i, n, original)
        return Detections(boxes, scores, labels, self.class_names, masks, probs)

    def _masks(self, out: dict[str, np.ndarray], i: int, n: int, original: tuple[int, int]
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Image ``i``'s ``n`` masks in its own pixels: the graph's pasted ones, or the compact ones pasted here."""
        if self.mask_form is None:
            return None, None
        if self.mask_form == "pasted":  # an image-list batch pastes into slots of the largest size: crop
            pasted = out[PASTED_MASKS][i, :n, :original[0], :original[1]]
            if pasted.dtype == np.uint8:  # binary, thresholded in the graph
                return pasted.copy(), None
            probs = np.asarray(pasted, dtype=np.float32).copy()
        else:
            probs = paste_masks(out["mask_probs"][i, :n], out["mask_boxes"][i, :n], original)
        return (probs > np.float32(self.mask_threshold)).astype(np.uint8), probs
