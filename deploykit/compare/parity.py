"""``deploykit parity ARTIFACT``: rebuild the PyTorch reference from the manifest, run both, compare.

``run_parity`` returns a JSON-able report with per-output error statistics
(:func:`deploykit.metrics.tensor_stats`) and the model-aware verdict
(``report["ok"]``):

* detectors — every detection scoring >= 0.3 has a partner on the other side
  (same label, IoU >= 0.99, |Δscore| <= 1e-3), both ways, per image and in total;
  the box/score statistics are over those matched pairs; Mask R-CNN: each pair's
  0.5-thresholded masks overlap with IoU >= 0.99 (max |Δ| of the probabilities reported);
* generators — max |Δ| <= 1e-4 on the float output ([-1, 1]) and the PSNR of the
  uint8 images (a uint8-output artifact: max |Δ| <= 1 level).

Bad input (missing/empty/unreadable directories, a manifest without a model
name, an artifact of another kind, raw-mode detectors) raises :class:`BadInput`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..data.folders import list_files
from ..errors import BadInput, expected_got
from ..metrics import DetectionMatch, box_iou, match_detections, tensor_stats
from ..metrics import psnr as image_psnr
from ..runtime import Detector
from .reference import reference_description, reference_prediction, reference_spec

DETECTOR_DEFAULT_IMAGES = 20
GENERATOR_DEFAULT_MAPS = 8
MIN_SCORE, IOU, SCORE_TOL = 0.3, 0.99, 1e-3
MASK_IOU = 0.99  # of the 0.5-thresholded masks of each matched detection (Mask R-CNN)
FLOAT_TOL = 1e-4
UINT8_TOL = 1.0


# -- inputs -------------------------------------------------------------------

def _stats_over(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float] | None:
    if not pairs:
        return None
    ref = np.concatenate([np.asarray(r, np.float64).reshape(-1) for r, _ in pairs])
    got = np.concatenate([np.asarray(g, np.float64).reshape(-1) for _, g in pairs])
    return {**tensor_stats(ref, got), "elements": int(ref.size)}


# -- detectors ----------------------------------------------------------------

def _matched_pairs(ref, got, min_score=MIN_SCORE, iou_thr=IOU, score_tol=SCORE_TOL):
    """Indices (i_ref, i_got) of reference detections >= min_score and their best partner."""
    rb, rs, rl = ref
    gb, gs, gl = got
    pairs = []
    if len(rb) == 0 or len(gb) == 0:
        return pairs
    iou = box_iou(rb, gb)
    for i in np.flatnonzero(rs >= min_score):
        ok = (gl == rl[i]) & (iou[i] >= iou_thr) & (np.abs(gs - rs[i]) <= score_tol) & (gs >= min_score - score_tol)
        if ok.any():
            cand = np.flatnonzero(ok)
            pairs.append((int(i), int(cand[np.argmax(iou[i, cand])])))
    return pairs


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def compare_detections(det: Detector, model, images: Sequence[tuple[str, np.ndarray]], *,
                       min_score: float = MIN_SCORE, iou: float = IOU, score_tol: float = SCORE_TOL,
                       mask_iou: float = MASK_IOU, progress: Callable[[int, int], None] | None = None
                       ) -> dict[str, Any]:
    """Every image through ``det.predict`` and torchvision's own forward, detections matched both ways.

    Mask R-CNN: each matched pair's masks (the reference's probabilities > 0.5 against the
    artifact's binary masks) must overlap with IoU >= ``mask_iou``; where the artifact gives
    probabilities too, their max |Δ| is reported. Returns ``outputs`` (statistics over matched
    pairs), ``verdict``, ``per_image`` and ``ok``.
    """
    total = DetectionMatch()
    per_image, box_pairs, score_pairs, count_pairs, prob_pairs = [], [], [], [], []
    masks_checked, min_mask_iou, max_prob_diff = 0, 1.0, 0.0
    for n, (name, img) in enumerate(images):
        ref = reference_prediction(model, img)
        d = det.predict(img)
        got = (np.asarray(d.boxes), np.asarray(d.scores), np.asarray(d.labels))
        ref3 = (ref["boxes"], ref["scores"], ref["labels"])
        m = match_detections(ref3, got, min_score=min_score, iou=iou, score_tol=score_tol)
        total = total.merge(m)
        image_mask_iou, bad_masks = 1.0, []
        for i, j in _matched_pairs(ref3, got, min_score, iou, score_tol):
            box_pairs.append((ref3[0][i], got[0][j]))
            score_pairs.append((ref3[1][i:i + 1], got[1][j:j + 1]))
            if "masks" in ref and d.masks is not None:
                v = _mask_iou(ref["masks"][i] > 0.5, d.masks[j].astype(bool))
                masks_checked += 1
                image_mask_iou = min(image_mask_iou, v)
                if v < mask_iou:
                    bad_masks.append({"reference": i, "artifact": j, "mask_iou": v})
                if d.mask_probs is not None:
                    prob_pairs.append((ref["masks"][i], d.mask_probs[j]))
                    max_prob_diff = max(max_prob_diff, float(np.abs(ref["masks"][i] - d.mask_probs[j]).max()))
        min_mask_iou = min(min_mask_iou, image_mask_iou)
        count_pairs.append((np.array([(ref3[1] >= min_score).sum()]), np.array([(got[1] >= min_score).sum()])))
        entry = {"image": name, "size": list(img.shape[:2]), "ok": m.ok and not bad_masks, "matched": m.matched,
                 "reference_detections": int((ref3[1] >= min_score).sum()),
                 "artifact_detections": int((got[1] >= min_score).sum()),
                 "unmatched_reference": m.unmatched_ref, "unmatched_artifact": m.unmatched_got,
                 "min_iou": m.min_iou, "max_score_diff": m.max_score_diff}
        if "masks" in ref:
            entry.update({"min_mask_iou": image_mask_iou, "masks_below_iou": bad_masks})
        per_image.append(entry)
        if progress:
            progress(n + 1, len(images))
    failed = [p["image"] for p in per_image if not p["ok"]]
    outputs = {"boxes (matched)": _stats_over(box_pairs), "scores (matched)": _stats_over(score_pairs),
               f"detections >= {min_score}": _stats_over(count_pairs)}
    verdict = {"kind": "detection matching", "images": len(images), "images_failed": failed,
               "matched": total.matched, "unmatched_reference": len(total.unmatched_ref),
               "unmatched_artifact": len(total.unmatched_got), "min_iou": total.min_iou,
               "max_score_diff": total.max_score_diff,
               "tolerances": {"min_score": min_score, "iou": iou, "score_tol": score_tol}}
    if det.mask_form is not None:
        outputs["mask probabilities (matched)"] = _stats_over(prob_pairs)
        verdict.update({"masks_compared": masks_checked, "min_mask_iou": min_mask_iou,
                        "max_mask_prob_diff": max_prob_diff if prob_pairs else None})
        verdict["tolerances"]["mask_iou"] = mask_iou
    return {"outputs": outputs, "verdict": verdict, "per_image": per_image, "ok": not failed}


def _detector_inputs(images_dir) -> tuple[str, list[tuple[str, np.ndarray]]]:
    if images_dir is None:
        from ..data.splits import held_out_photos

        imgs = held_out_photos(DETECTOR_DEFAULT_IMAGES)
        return (f"{len(imgs)} held-out synthetic images, 200..2000 px, aspect 1:3..3:1",
                [(f"held-out {i} ({im.shape[1]}x{im.shape[0]})", im) for i, im in enumerate(imgs)])
    from ..runtime.images import load_image

    files = list_files(images_dir, "--images directory")
    return str(images_dir), [(p.name, load_image(p)) for p in files]


# -- generators ---------------------------------------------------------------

def _generator_inputs(gen, manifest: dict, label_maps_dir, instances_dir):
    """[(name, label_map, instance_map or None)] and a description of the source."""
    from ..models.spade import spade_config
    from ..runtime.generator import read_map

    if instances_dir is not None and not gen.use_instance:
        raise BadInput(expected_got("--instances", "no instance maps (this generator uses no instance edges)",
                                    str(instances_dir)))
    if label_maps_dir is None:
        if instances_dir is not None:
            raise BadInput(expected_got("--instances", "to come with --label-maps DIR", "--instances alone"))
        demo = tuple(spade_config("demo").image_size)
        h, w = gen.size
        if gen.size != demo or h != w:
            raise BadInput(expected_got("--label-maps", f"a directory of label map PNGs for this {h}x{w} generator "
                                        f"(held-out demo label maps are {demo[0]}x{demo[1]})", "none"))
        from ..data.spade_scenes import make_sample

        items = []
        for i in range(GENERATOR_DEFAULT_MAPS):
            s = make_sample(i, size=w, split="heldout")
            items.append((f"held-out {i}", s.label, s.instance if gen.use_instance else None))
        return f"{len(items)} held-out demo label maps", items
    files = list_files(label_maps_dir, "--label-maps directory", (".png",))
    inst_files: dict[str, Path] = {}
    if gen.use_instance:
        if instances_dir is None:
            raise BadInput(expected_got("--instances", "a directory of instance PNGs (this generator uses "
                                        "instance edges)", "none"))
        inst_files = {p.stem: p for p in list_files(instances_dir, "--instances directory", (".png",))}
    items = []
    for p in files:
        inst = None
        if gen.use_instance:
            if p.stem not in inst_files:
                raise BadInput(expected_got(f"instance map for {p.name}", f"{p.stem}.png in {instances_dir}",
                                            "no such file"))
            inst = read_map(inst_files[p.stem], "instance map")
        items.append((p.name, read_map(p, "label map"), inst))
    return str(label_maps_dir), items


def _generator_parity(artifact: Path, manifest: dict, model, label_maps_dir, instances_dir,
                      threads: int | None, progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    import torch

    from ..models.spade import preprocess_upstream
    from ..runtime.generator import Generator, to_uint8_image

    gen = Generator(artifact, threads=threads)
    try:
        if gen.use_vae:
            raise BadInput(expected_got(f"generator {artifact}", "a generator without a VAE encoder (z input)",
                                        "use_vae true (not supported by deploykit parity)"))
        source, items = _generator_inputs(gen, manifest, label_maps_dir, instances_dir)
        uint8_out = gen.output_kind == "uint8"
        pairs, u8_pairs, per_image = [], [], []
        for n, (name, lab, inst) in enumerate(items):
            try:
                feed = gen.feed(lab, inst)
            except BadInput as e:
                raise BadInput(f"{name}: {e}") from None
            got = gen.session.run(feed)["image"][0]
            ref_lab = lab if lab.dtype == np.uint8 else lab.astype(np.int64)
            ref_inst = None if inst is None else np.asarray(inst).astype(np.int64)
            with torch.no_grad():
                ref = model(preprocess_upstream(ref_lab, ref_inst, model.cfg))[0].numpy()
            ref8 = to_uint8_image(ref)
            got8 = np.ascontiguousarray(got) if uint8_out else to_uint8_image(got)
            if uint8_out:
                pairs.append((ref8, got8))
                worst = float(np.abs(ref8.astype(np.int16) - got8.astype(np.int16)).max())
            else:
                pairs.append((ref, got))
                worst = float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max())
            u8_pairs.append((ref8, got8))
            tol = UINT8_TOL if uint8_out else FLOAT_TOL
            psnr = image_psnr(ref8, got8, peak=255.0, cap=None)  # None when the uint8 images are identical (infinite PSNR)
            per_image.append({"image": name, "max_abs": worst, "psnr_db": None if psnr == float("inf") else psnr,
                              "ok": worst <= tol})
            if progress:
                progress(n + 1, len(items))
    finally:
        gen.session.close()
    tol = UINT8_TOL if uint8_out else FLOAT_TOL
    stats = _stats_over(pairs)
    ok = all(p["ok"] for p in per_image)
    out_name = "image (uint8)" if uint8_out else "image"
    return {
        "source": source,
        "outputs": {out_name: stats, "image as uint8": _stats_over(u8_pairs)},
        "verdict": {"kind": "image error and PSNR", "images": len(items),
                    "images_failed": [p["image"] for p in per_image if not p["ok"]],
                    "max_abs": stats["max_abs"], "tolerance": tol,
                    "min_psnr_db": min((p["psnr_db"] for p in per_image if p["psnr_db"] is not None), default=None)},
        "per_image": per_image,
        "ok": ok,
    }


# -- the demo's parity check ----------------------------------------------------

@dataclass
class DetectorParity:
    """The demo's view of :func:`compare_detections`: ``ok``, ``summary()`` and ``per_image``."""

    report: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.report.get("ok"))

    @property
    def per_image(self) -> list[dict]:
        return self.report.get("per_image", [])

    def summary(self) -> dict:
        v = self.report["verdict"]
        out = {"images": v["images"], "matched": v["matched"], "ok": self.ok,
               "unmatched_reference": v["unmatched_reference"], "unmatched_artifact": v["unmatched_artifact"],
               "min_iou": v["min_iou"], "max_score_diff": v["max_score_diff"]}
        for key in ("masks_compared", "min_mask_iou", "max_mask_prob_diff"):
            if key in v:
                out[key] = v[key]
        return out


def detector_parity(artifact, model, images: Sequence[np.ndarray], *, min_score: float = MIN_SCORE,
                    iou: float = IOU, score_tol: float = SCORE_TOL, threads: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> DetectorParity:
    """Compare every image's detections (and masks) both ways (label, IoU >= ``iou``, |Δscore| <= ``score_tol``)."""
    named = [(f"image {i} ({img.shape[1]}x{img.shape[0]})", img) for i, img in enumerate(images)]
    with Detector(artifact, threads=threads) as det:
        return DetectorParity(compare_detections(det, model, named, min_score=min_score, iou=iou,
                                                 score_tol=score_tol, progress=progress))


# -- entry point --------------------------------------------------------------

def require_onnx_file(artifact, expected: str = "an .onnx file") -> Path:
    """``artifact`` as a Path, or BadInput when it is not an existing ``.onnx`` file."""
    artifact = Path(artifact)
    if artifact.suffix.lower() != ".onnx":
        raise BadInput(expected_got(f"artifact {artifact}", expected, repr(artifact.suffix or "no suffix")))
    if not artifact.is_file():
        raise BadInput(expected_got(f"artifact {artifact}", "an existing file", "no such file"))
    return artifact


def run_parity(artifact: str | os.PathLike, images_dir: str | os.PathLike | None = None,
               label_maps_dir: str | os.PathLike | None = None, instances_dir: str | os.PathLike | None = None,
               threads: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Compare ``artifact`` (an exported .onnx with its manifest) with its rebuilt PyTorch reference.

    Returns the report; ``report["ok"]`` is the verdict. Raises :class:`BadInput` on bad input.
    """
    from .. import models
    from ..manifest import read_manifest

    artifact = require_onnx_file(artifact, "an .onnx file (TensorRT plans: not yet supported)")
    if images_dir is not None and label_maps_dir is not None:
        raise BadInput(expected_got("inputs", "--images (detectors) or --label-maps (generators)", "both"))
    manifest = read_manifest(artifact)
    name, checkpoint, overrides = reference_spec(manifest, artifact)
    kind = manifest["kind"]
    if kind == "detector" and label_maps_dir is not None:
        raise BadInput(expected_got("--label-maps", "--images DIR for a detector artifact", str(label_maps_dir)))
    if kind == "detector" and instances_dir is not None:
        raise BadInput(expected_got("--instances", "no instance maps for a detector artifact", str(instances_dir)))
    if kind == "generator" and images_dir is not None:
        raise BadInput(expected_got("--images", "--label-maps DIR for a generator artifact", str(images_dir)))
    if kind == "detector" and (manifest.get("postprocessing") or {}).get("raw"):
        raise BadInput(expected_got(f"artifact {artifact}", "a detector with post-processing (boxes, scores, "
                                    "labels)", "a raw-mode export (postprocessing.raw true), not supported by parity"))

    if kind == "detector":  # inputs first: a bad directory fails before the model is built
        source, images = _detector_inputs(images_dir)
    else:
        source, images = None, None
    model = models.build(name, checkpoint, **overrides)

    import torch

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if kind == "detector":
            with Detector(artifact, threads=threads) as det:
                body = compare_detections(det, model, images, progress=progress)
        else:
            body = _generator_parity(artifact, manifest, model, label_maps_dir, instances_dir, threads, progress)
            source = body.pop("source")
    finally:
        torch.set_num_threads(old_threads)
    return {"artifact": str(artifact), "kind": kind, "model": name, "checkpoint": checkpoint,
            "overrides": overrides, "reference": reference_description(manifest, model), "inputs": source, **body}
