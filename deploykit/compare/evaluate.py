"""``deploykit eval ARTIFACT``: task accuracy of an artifact next to its FP32 PyTorch reference.

Detectors: COCO mAP@[.5:.95] and mAP@.5 (pycocotools; Mask R-CNN: also the masks' segm mAP,
``mask_map``/``mask_map50``, masks binarised at 0.5) of the artifact, run through
:class:`deploykit.runtime.Detector`, and of the PyTorch reference rebuilt from the
manifest, on the same images in the same run; ``drop`` is reference − artifact in
points (×100). Data: a COCO directory (``annotations.json`` + the images it names),
default the demo detector's held-out synthetic set (``sample_for_index(1000, i)``,
100 images).

Generators (SPADE): the artifact's output against the FP32 PyTorch generator's
output on the same label maps: PSNR (mean, min) and SSIM (mean, min). Both images
are mapped from [-1, 1] to [0, 1] by ``(y + 1) / 2`` (uint8 outputs: ``/ 255``)
and PSNR uses peak 1.0, capped at 100 dB (identical images). SSIM: Gaussian window
11, σ 1.5, ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²`` with ``L = 1``, over the valid
region, averaged over the three channels. Data: a folder of label-map PNGs (as
``deploykit.data.calibration`` reads them), default 16 held-out spade_demo scenes.

For a search over many candidate graphs, :class:`DetectorEval` and
:class:`GeneratorEval` load the data and run PyTorch once (cached); each candidate
then costs one pass of ONNX Runtime over the data. A candidate without its own
manifest borrows the reference artifact's (same inputs, outputs and preprocessing).

Eval reports, it does not judge: the CLI exits 0 whatever the numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data.coco import load_coco_dir
from ..data.splits import HELD_OUT_SEED
from ..errors import BadInput, expected_got
from ..metrics import PSNR_CAP_DB, coco_metrics, psnr, segm_results, ssim
from ..progressbar import progress_bar

DETECTOR_DEFAULT_SAMPLES = 100
GENERATOR_DEFAULT_SAMPLES = 16

__all__ = ["evaluate_artifact", "DetectorEval", "GeneratorEval"]


def _unit_range(image: np.ndarray) -> np.ndarray:
    """One output image → float64 ``[3, H, W]`` in [0, 1]: float [-1, 1] CHW, or uint8 HWC."""
    if image.dtype == np.uint8:
        return image.transpose(2, 0, 1).astype(np.float64) / 255.0
    return np.clip((image.astype(np.float64) + 1.0) / 2.0, 0.0, 1.0)


# -- shared -----------------------------------------------------------------------

def _session_for(path: str | os.PathLike, manifest: dict[str, Any], threads: int | None):
    """A runtime Session on ``path``; it carries its own manifest when one sits beside it, else ``manifest``."""
    from ..manifest import manifest_path
    from ..runtime.backends import load

    path = Path(path)
    if manifest_path(path).is_file() or path.suffix.lower() != ".onnx" or not path.is_file():
        return load(path, threads=threads)
    from ..runtime.onnxruntime import OnnxRuntimeSession

    return OnnxRuntimeSession(path, threads=threads, manifest=manifest)


def _torch_threads(threads: int | None):
    import contextlib

    import torch

    @contextlib.contextmanager
    def scope():
        old = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(old)

    return scope()


def _check_samples(samples: int | None) -> None:
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, (int, np.integer))
                                or samples < 1):
        raise BadInput(expected_got("--samples", "an integer >= 1", repr(samples)))


def _precision(manifest: dict[str, Any]) -> Any:
    p = manifest.get("precision")
    if isinstance(p, dict):
        return p.get("mode", "fp32") if set(p) <= {"mode"} else p
    return p or "fp32"


# -- detectors --------------------------------------------------------------------

class DetectorEval:
    """COCO mAP of candidate detector graphs against one cached PyTorch reference.

    Args:
        manifest: the FP32 artifact's manifest (dict). Candidates without a manifest
            of their own use this one.
        data: COCO directory, or None for the held-out synthetic set.
        samples: first N images of the data (default 100 synthetic, all of a directory).
        artifact: the artifact the manifest belongs to (for messages).
        threads: ONNX Runtime intra-op threads and torch threads.
        progress: rich progress bars on stderr.
    """

    def __init__(self, manifest: dict[str, Any], data: str | os.PathLike | None = None,
                 samples: int | None = None, *, artifact: str | os.PathLike | None = None,
                 threads: int | None = None, progress: bool = True) -> None:
        _check_samples(samples)
        if manifest.get("kind") != "detector":
            raise BadInput(expected_got("manifest kind", "'detector'", repr(manifest.get("kind"))))
        if (manifest.get("postprocessing") or {}).get("raw"):
            raise BadInput(expected_got(f"artifact {artifact or ''}".strip(), "a detector with post-processing",
                                        "a raw-mode export (postprocessing.raw true), not supported by eval"))
        self.manifest, self.artifact = manifest, artifact
        self.threads, self.progress = threads, progress
        if data is None:
            from ..data.shapes import coco_dict, sample_for_index

            n = samples or DETECTOR_DEFAULT_SAMPLES
            pairs = [sample_for_index(HELD_OUT_SEED, i) for i in range(n)]
            self.images = [img for img, _ in pairs]
            self.gt = coco_dict(pairs)
            self.image_ids = list(range(1, n + 1))
            self.source = f"synthetic:synthetic_shapes seed={HELD_OUT_SEED} (held-out)"
        else:
            self.images, self.gt, self.image_ids = load_coco_dir(data, samples)
            self.source = str(data)
        self._reference: dict[str, float] | None = None
        self.reference_model: str | None = None

    def _metrics(self, detections: list[tuple]) -> dict[str, float]:
        """mAP of ``(boxes, scores, labels, masks or None)`` per image; with masks also ``mask_map``/``mask_map50``
        (COCO segm; binary masks as compressed RLE, converted per image as they come)."""
        dets, segm = [], []
        for image_id, (boxes, scores, labels, masks) in zip(self.image_ids, detections):
            for b, s, lab in zip(np.asarray(boxes, np.float64), scores, labels):
                dets.append({"image_id": image_id, "category_id": int(lab), "score": float(s),
                             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
            if masks is not None:
                segm.extend(masks)
        m = {k: float(v) for k, v in coco_metrics(self.gt, dets).items()}
        if any(d[3] is not None for d in detections):
            mask = coco_metrics(self.gt, segm, iou_type="segm")
            m.update({f"mask_{k}": float(mask[k]) for k in ("map", "map50", "map75")})
        return m

    def _entry(self, image_id: int, boxes, scores, labels, masks) -> tuple:
        """One image's detections for :meth:`_metrics`, masks already turned into COCO results."""
        return boxes, scores, labels, None if masks is None else segm_results(image_id, masks, scores, labels)

    def reference_metrics(self) -> dict[str, float]:
        """mAP numbers of the PyTorch reference (rebuilt from the manifest once, then cached)."""
        if self._reference is None:
            from .reference import build_reference, reference_description, reference_prediction

            with _torch_threads(self.threads):
                model = build_reference(self.manifest, self.artifact or "artifact")
                self.reference_model = reference_description(self.manifest, model)
                dets = []
                with progress_bar(len(self.images), "PyTorch reference", self.progress) as advance:
                    for image_id, img in zip(self.image_ids, self.images):
                        ref = reference_prediction(model, img)
                        masks = None if "masks" not in ref else (ref["masks"] > 0.5).astype(np.uint8)
                        dets.append(self._entry(image_id, ref["boxes"], ref["scores"], ref["labels"], masks))
                        advance()
            self._reference = self._metrics(dets)
        return dict(self._reference)

    def artifact_metrics(self, onnx_path: str | os.PathLike) -> dict[str, float]:
        """mAP numbers of one candidate graph, run through :class:`deploykit.runtime.Detector`."""
        from ..runtime.detector import Detector

        with Detector.from_session(_session_for(onnx_path, self.manifest, self.threads)) as det:
            dets = []
            with progress_bar(len(self.images), f"artifact {Path(onnx_path).name}", self.progress) as advance:
                for image_id, img in zip(self.image_ids, self.images):
                    d = det.predict(img)
                    dets.append(self._entry(image_id, d.boxes, d.scores, d.labels, d.masks))
                    advance()
        return self._metrics(dets)

    def compare(self, onnx_path: str | os.PathLike) -> dict[str, Any]:
        """The eval report of one candidate: artifact and reference metrics, drop in points."""
        art = self.artifact_metrics(onnx_path)
        ref = self.reference_metrics()
        manifest = _session_manifest(onnx_path) or self.manifest
        return {"kind": "detector", "path": str(onnx_path), "data": self.source, "images": len(self.images),
                "precision": _precision(manifest), "artifact": art, "reference": ref,
                "reference_model": self.reference_model,
                "drop": {k: 100 * (ref[k] - art[k]) for k in ("map", "map50", "mask_map", "mask_map50") if k in art}}


def _session_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    from ..manifest import manifest_path, read_manifest

    return read_manifest(path, verify=False) if manifest_path(path).is_file() else None


# -- generators -------------------------------------------------------------------

class GeneratorEval:
    """PSNR/SSIM of candidate SPADE graphs against one cached FP32 PyTorch output set.

    Args:
        manifest: the FP32 artifact's manifest (dict); candidates without a manifest use it.
        data: folder of label-map PNGs (instance maps from ``instances/<stem>.png`` or
            ``<stem>_instance.png``, else the label map), or None for held-out spade_demo scenes.
        samples: number of label maps (default 16 synthetic; a folder: all files, or a seeded subset of N).
        artifact, threads, progress: as :class:`DetectorEval`.
    """

    def __init__(self, manifest: dict[str, Any], data: str | os.PathLike | None = None,
                 samples: int | None = None, *, artifact: str | os.PathLike | None = None,
                 threads: int | None = None, progress: bool = True) -> None:
        from ..data.calibration import label_map_feeds

        _check_samples(samples)
        if manifest.get("kind") != "generator":
            raise BadInput(expected_got("manifest kind", "'generator'", repr(manifest.get("kind"))))
        pre = manifest.get("preprocessing") or {}
        if pre.get("use_vae"):
            raise BadInput(expected_got(f"generator {artifact or ''}".strip(), "a generator without a VAE "
                                        "encoder (z input)", "use_vae true (not supported by eval)"))
        self.manifest, self.artifact = manifest, artifact
        self.threads, self.progress = threads, progress
        if data is None:
            n = samples or GENERATOR_DEFAULT_SAMPLES
            self.feeds, desc = label_map_feeds(manifest, None, samples=n, synthetic_seed=0, split="heldout",
                                               progress=False)
            self.source = desc["source"] + " (held-out)"
        else:
            n = samples or 1_000_000  # every file
            self.feeds, desc = label_map_feeds(manifest, data, samples=n, what="--data label-map directory",
                                               progress=False)
            self.source = str(data)
        self.count = int(self.feeds["label_map"].shape[0])
        self._reference: np.ndarray | None = None

    def reference_outputs(self) -> np.ndarray:
        """FP32 PyTorch outputs, float32 ``[N, 3, H, W]`` in [-1, 1] (computed once, then cached)."""
        if self._reference is None:
            import torch

            from ..models.spade import preprocess_upstream
            from .reference import build_reference

            outs = []
            with _torch_threads(self.threads), torch.no_grad():
                model = build_reference(self.manifest, self.artifact or "artifact")
                inst = self.feeds.get("instance_map")
                with progress_bar(self.count, "PyTorch reference", self.progress) as advance:
                    for i in range(self.count):
                        lab = self.feeds["label_map"][i].astype(np.int64)
                        seg = preprocess_upstream(lab, None if inst is None else inst[i].astype(np.int64),
                                                  model.cfg)
                        outs.append(model(seg)[0].numpy().astype(np.float32))
                        advance()
            self._reference = np.stack(outs)
        return self._reference

    def artifact_outputs(self, onnx_path: str | os.PathLike) -> np.ndarray:
        """One candidate's outputs: ``[N, 3, H, W]`` float (or ``[N, H, W, 3]`` uint8 for uint8 graphs)."""
        session = _session_for(onnx_path, self.manifest, self.threads)
        with session:
            spec = {s.name: s for s in session.inputs}
            missing = sorted(set(spec) ^ set(self.feeds))
            if missing:
                raise BadInput(expected_got(f"generator {onnx_path} inputs", sorted(self.feeds), sorted(spec)))
            batch = spec["label_map"].shape[0]
            step = batch if isinstance(batch, int) else int((session.manifest or {}).get("batch", {}).get("max", 1))
            outs = []
            with progress_bar(self.count, f"artifact {Path(onnx_path).name}", self.progress) as advance:
                for start in range(0, self.count, step):
                    chunk = {k: v[start:start + step] for k, v in self.feeds.items()}
                    n = next(iter(chunk.values())).shape[0]
                    if isinstance(batch, int) and n < batch:  # static batch: pad by repeating the last row
                        chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch - n, axis=0)]) for k, v in chunk.items()}
                    out = session.run(chunk)["image"][:n]
                    outs.append(out)
                    advance(n)
        return np.concatenate(outs)

    def psnr_ssim(self, onnx_path: str | os.PathLike) -> dict[str, Any]:
        """PSNR (dB, peak 1 on [0, 1] images) and SSIM of a candidate against the FP32 reference."""
        return self.metrics(self.artifact_outputs(onnx_path))

    def metrics(self, got: np.ndarray) -> dict[str, Any]:
        """PSNR and SSIM of outputs ``got`` (as :meth:`artifact_outputs` returns them) against the reference."""
        ref = self.reference_outputs()
        per_p, per_s = [], []
        for r, g in zip(ref, got):
            r1, g1 = _unit_range(r), _unit_range(g)
            per_p.append(psnr(r1, g1))
            per_s.append(ssim(r1, g1))
        return {"psnr_mean": float(np.mean(per_p)), "psnr_min": float(np.min(per_p)),
                "ssim_mean": float(np.mean(per_s)), "ssim_min": float(np.min(per_s)),
                "per_image": [{"index": i, "psnr": p, "ssim": s} for i, (p, s) in enumerate(zip(per_p, per_s))]}

    def compare(self, onnx_path: str | os.PathLike) -> dict[str, Any]:
        """The eval report of one candidate."""
        metrics = self.psnr_ssim(onnx_path)
        per_image = metrics.pop("per_image")
        manifest = _session_manifest(onnx_path) or self.manifest
        name = (self.manifest.get("model") or {}).get("name")
        return {"kind": "generator", "path": str(onnx_path), "data": self.source, "images": self.count,
                "precision": _precision(manifest), "artifact": metrics,
                "reference": {"model": name, "output": "FP32 PyTorch"},
                "conventions": {"range": "(y + 1) / 2 in [0, 1]", "psnr_peak": 1.0, "psnr_cap_db": PSNR_CAP_DB,
                                "ssim": "gaussian 11, sigma 1.5, K1 0.01, K2 0.03, valid region, channel mean"},
                "per_image": per_image}


# -- entry point ------------------------------------------------------------------

def evaluate_artifact(path: str | os.PathLike, data: str | os.PathLike | None = None, samples: int | None = None,
                      threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate one exported artifact (``.onnx`` with its manifest) against its PyTorch reference.

    Returns the report (see the module doc). Raises :class:`BadInput` for a
    missing or corrupt artifact or manifest and for bad data directories.
    """
    from ..manifest import read_manifest

    path = Path(path)
    if not path.is_file():
        got = "a directory" if path.is_dir() else "no such file"
        raise BadInput(expected_got(f"artifact {path}", "an exported .onnx file with its manifest", got))
    if path.suffix.lower() != ".onnx":
        raise BadInput(expected_got(f"artifact {path}", "an .onnx file (TensorRT plans: not yet supported)",
                                    repr(path.suffix or "no suffix")))
    manifest = read_manifest(path)
    kind = manifest.get("kind")
    if kind == "detector":
        ev: DetectorEval | GeneratorEval = DetectorEval(manifest, data, samples, artifact=path, threads=threads,
                                                        progress=progress)
    elif kind == "generator":
        ev = GeneratorEval(manifest, data, samples, artifact=path, threads=threads, progress=progress)
    else:
        raise BadInput(expected_got(f"manifest of {path} kind", "'detector' or 'generator'", repr(kind)))
    report = ev.compare(path)
    report["model"] = (manifest.get("model") or {}).get("name")
    return report
