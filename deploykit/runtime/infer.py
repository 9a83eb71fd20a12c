"""``deploykit infer`` for detectors: images in, detections JSON and drawn PNGs out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import BadInput, expected_got
from ..fileio import atomic_path, write_json_atomic
from .detector import Detector
from .draw import draw_detections
from .images import load_image


def _check_outputs(image_paths: list[Path], out_dir: Path) -> None:
    """Refuse before running anything: no images, two images with one stem, or an output overwriting an input."""
    if not image_paths:
        raise BadInput(expected_got("images", "at least one image path", "none"))
    seen: dict[str, Path] = {}
    for path in image_paths:
        other = seen.setdefault(path.stem, path)
        if other != path:
            raise BadInput(expected_got(f"image {path}", f"a file stem unique among the inputs (outputs are "
                                        f"<stem>.json and <stem>.png in {out_dir})", f"same stem as {other}"))
    inputs = {p.resolve() for p in image_paths}
    for path in image_paths:
        for suffix in (".json", ".png"):
            target = (out_dir / f"{path.stem}{suffix}").resolve()
            if target in inputs:
                raise BadInput(expected_got(f"output {target}", "a path that is not one of the input images",
                                            "an input image (choose another output directory)"))


#: The score below which ``deploykit infer`` and the C++ ``deploykit-detect`` drop detections
#: (``--min-score``, the same default in both).
DEFAULT_MIN_SCORE = 0.3


def infer_detector(model_path: str | os.PathLike, image_paths: Iterable[str | os.PathLike],
                   out_dir: str | os.PathLike, *, min_score: float = DEFAULT_MIN_SCORE, threads: int | None = None,
                   progress: bool = True, detector: Detector | None = None) -> list[Path]:
    """Run a detector on image files; write ``<stem>.json`` and ``<stem>.png`` per image into ``out_dir``.

    The JSON holds ``{"image", "width", "height", "model", "min_score",
    "detections": [{"box": [x1, y1, x2, y2], "score", "label", "label_name"}]}``
    with boxes in the image's pixels (Mask R-CNN: each detection also has its mask as
    ``"segmentation"``, COCO uncompressed RLE); the PNG is the image with the detections
    (score >= ``min_score``) drawn, masks blended in. Each file is written atomically. Images
    are read a batch at a time; an unreadable image raises BadInput before
    anything is written for it (outputs of earlier images stay, complete).

    Returns the written paths, ``[a.json, a.png, b.json, b.png, ...]``. ``detector``: an
    already open predictor to use instead (e.g. a ``deploykit.serving.Client``); it is closed after.
    """
    paths = [Path(p) for p in image_paths]
    out_dir = Path(out_dir)
    _check_outputs(paths, out_dir)
    written: list[Path] = []
    detector = detector if detector is not None else Detector(model_path, threads=threads)
    with detector, _progress(progress, len(paths)) as advance:
        step = detector.batch_size
        for start in range(0, len(paths), step):
            chunk = paths[start:start + step]
            images = [load_image(p) for p in chunk]
            for path, image, dets in zip(chunk, images, detector.predict(images, names=[f"image {p}" for p in chunk])):
                dets = dets.above(min_score)
                png_path, json_path = out_dir / f"{path.stem}.png", out_dir / f"{path.stem}.json"
                drawn = draw_detections(image, dets, min_score=min_score)
                with atomic_path(png_path) as tmp:
                    drawn.save(tmp, format="PNG")
                write_json_atomic(json_path, {
                    "image": str(path), "width": int(image.shape[1]), "height": int(image.shape[0]),
                    "model": str(model_path), "min_score": float(min_score), "detections": dets.to_json(),
                })
                written += [json_path, png_path]
                advance()
    return written


class _progress:
    """Context manager yielding an ``advance()`` callable; a rich progress bar on stderr when enabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self._bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import Progress

        self._bar = Progress(console=Console(stderr=True), transient=True)
        self._bar.__enter__()
        task = self._bar.add_task("detecting", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
