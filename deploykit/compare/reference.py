"""The PyTorch side of every comparison, from the unmodified model.

- :func:`build_reference` rebuilds the model an artifact was exported from (its manifest);
- :func:`reference_prediction` / :func:`reference_detections` run torchvision's own forward on one image;
- :func:`reference_raw` / :func:`reference_box_head` / :func:`reference_mask_head` capture its intermediates
  (raw parity);
- :func:`calibrate_batchnorm` gives random-weight architectures realistic BatchNorm statistics.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadInput, expected_got

if TYPE_CHECKING:
    import torch


def reference_spec(manifest: dict[str, Any], artifact: str | os.PathLike) -> tuple[str, str | None, dict[str, Any]]:
    """``(model name, checkpoint, overrides)`` recorded in ``manifest``, checked against the registry.

    Raises :class:`BadInput` when the manifest names no registered model, has
    another kind than the model's family, or malformed overrides.
    """
    from .. import models

    kind = manifest.get("kind")
    info = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    name = info.get("name")
    if not name:
        raise BadInput(expected_got(f"manifest of {artifact} model.name", "a registered model name "
                                    "(see deploykit models)", repr(name)))
    entry = models.entry(name)
    if kind not in ("detector", "generator"):
        raise BadInput(expected_got(f"manifest of {artifact} kind", "'detector' or 'generator'", repr(kind)))
    if entry.family != kind:
        raise BadInput(expected_got(f"artifact {artifact}", f"a {entry.family} (model {name})", f"kind {kind!r}"))
    overrides = info.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise BadInput(expected_got(f"manifest of {artifact} model.overrides", "a mapping", type(overrides).__name__))
    return name, info.get("checkpoint"), overrides


def build_reference(manifest: dict[str, Any], artifact: str | os.PathLike):
    """The unmodified PyTorch model (eval mode) the artifact was exported from."""
    from .. import models

    name, checkpoint, overrides = reference_spec(manifest, artifact)
    return models.build(name, checkpoint, **overrides)


def reference_description(manifest: dict[str, Any], model) -> str:
    """Which PyTorch model a detector artifact is compared with, in one line.

    A dynamic-size export is compared with the model exactly as built (its own transform);
    a fixed-canvas export with the model configured to that canvas (min_size = max_size).
    """
    if manifest.get("kind") != "detector":
        return f"{(manifest.get('model') or {}).get('name')} (FP32 PyTorch)"
    t = model.transform
    min_size = t.min_size[-1] if isinstance(t.min_size, (tuple, list)) else t.min_size
    pre = manifest.get("preprocessing") or {}
    name = (manifest.get("model") or {}).get("name")
    where = "pixels in, pre/post-processing in the graph" if pre.get("in_graph") else "tensor input"
    if pre.get("mode") == "dynamic":
        return (f"{name} as built: torchvision transform min_size {min_size}, max_size {t.max_size} "
                f"(dynamic-size graph, {where})")
    size = pre.get("input_size") or ["?", "?"]
    return (f"{name} configured to the {size[0]}x{size[1]} canvas: min_size {min_size}, max_size {t.max_size} "
            f"(fixed-canvas graph, {where}; export without --input-size to compare with the model as built)")


def reference_prediction(model, image: np.ndarray) -> dict[str, np.ndarray]:
    """torchvision's own forward on one H×W×3 uint8 RGB image -> ``boxes``, ``scores``, ``labels`` and, for
    Mask R-CNN, ``masks`` float32 [N, H, W] (the pasted probabilities), as numpy."""
    import torch

    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0
    with torch.no_grad():
        out = model([tensor])[0]
    result = {k: out[k].numpy() for k in ("boxes", "scores", "labels")}
    if "masks" in out:
        result["masks"] = out["masks"][:, 0].numpy()
    return result


def reference_detections(model, image: np.ndarray):
    """torchvision's own forward on one H×W×3 uint8 RGB image -> (boxes, scores, labels) numpy."""
    ref = reference_prediction(model, image)
    return ref["boxes"], ref["scores"], ref["labels"]


def reference_raw(model, images: list[torch.Tensor]) -> dict[str, list[np.ndarray]]:
    """Run ``model(images)`` (torchvision's own forward) and capture, per image:

    ``rpn_objectness`` [A] logits and ``rpn_proposals`` [A,4] decoded for every anchor
    (torchvision's own head and BoxCoder), ``proposals`` [P,4] that reach the box head,
    ``class_logits`` [P,C] and ``box_regression`` [P,4C].
    """
    return _capture_raw(model, len(images), lambda: model(images))


def reference_raw_on(model, images: np.ndarray, image_sizes: np.ndarray) -> dict[str, list[np.ndarray]]:
    """:func:`reference_raw` on an already preprocessed batch: ``images`` [B, 3, H, W] (normalised, padded)
    and ``image_sizes`` [B, 2] (each resized size), e.g. a graph's own front-end output. torchvision's
    backbone, RPN and RoI heads run as ``GeneralizedRCNN.forward`` runs them after its transform."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    batch = ImageList(torch.as_tensor(images), [(int(h), int(w)) for h, w in np.asarray(image_sizes)])

    def run():
        features = model.backbone(batch.tensors)
        if isinstance(features, torch.Tensor):
            features = {"0": features}
        proposals, _ = model.rpn(batch, features)
        detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
        return detections

    return _capture_raw(model, len(batch.image_sizes), run)


def _capture_raw(model, n: int, run) -> dict[str, list[np.ndarray]]:
    """The raw tensors of :func:`reference_raw` while ``run()`` runs the model's parts."""
    import torch
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    got: dict = {}
    hooks = [
        model.rpn.head.register_forward_hook(lambda m, i, o: got.__setitem__("head", o)),
        model.rpn.anchor_generator.register_forward_hook(lambda m, i, o: got.__setitem__("anchors", o)),
        model.roi_heads.register_forward_pre_hook(lambda m, args: got.__setitem__("proposals", args[1])),
        model.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: got.__setitem__("pred", o)),
    ]
    try:
        with torch.no_grad():
            detections = run()
            objectness, deltas = concat_box_prediction_layers(*got["head"])
            decoded = model.rpn.box_coder.decode(deltas, got["anchors"]).reshape(n, -1, 4)
    finally:
        for h in hooks:
            h.remove()
    props = got["proposals"]
    counts = [len(p) for p in props]
    logits, regression = got["pred"]
    return {
        "rpn_objectness": list(objectness.reshape(n, -1).numpy()),
        "rpn_proposals": list(decoded.numpy()),
        "proposals": [p.numpy() for p in props],
        "class_logits": [x.numpy() for x in logits.split(counts)],
        "box_regression": [x.numpy() for x in regression.split(counts)],
        "detections": detections,
    }


def reference_box_head(model, image: torch.Tensor, proposals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """torchvision's own transform, backbone, MultiScaleRoIAlign, box head and predictor on given
    ``proposals`` [P,4] (resized-image pixels) -> (class_logits [P,C], box_regression [P,4C]).

    Lets the box head be compared on exactly the proposals the artifact produced, so a proposal
    swapped at an NMS or top-k boundary does not hide or fake a numerical difference.
    """
    import torch

    with torch.no_grad():
        images, _ = model.transform([image])
        features = model.backbone(images.tensors)
        if isinstance(features, torch.Tensor):  # as GeneralizedRCNN.forward does
            features = {"0": features}
        boxes = [torch.as_tensor(proposals, dtype=torch.float32)]
        pooled = model.roi_heads.box_roi_pool(features, boxes, images.image_sizes)
        logits, regression = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    return logits.numpy(), regression.numpy()


def reference_box_head_on(model, images: np.ndarray, image_sizes: np.ndarray, proposals: list[np.ndarray]
                          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`reference_box_head` on a preprocessed batch (``images`` [B, 3, H, W], ``image_sizes`` [B, 2]) and
    each image's ``proposals`` [P_i, 4] -> per image (class_logits [P_i, C], box_regression [P_i, 4C])."""
    import torch

    with torch.no_grad():
        features = model.backbone(torch.as_tensor(images))
        if isinstance(features, torch.Tensor):
            features = {"0": features}
        sizes = [(int(h), int(w)) for h, w in np.asarray(image_sizes)]
        boxes = [torch.as_tensor(p, dtype=torch.float32) for p in proposals]
        pooled = model.roi_heads.box_roi_pool(features, boxes, sizes)
        logits, regression = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    counts = [len(p) for p in proposals]
    return list(zip([x.numpy() for x in logits.split(counts)], [x.numpy() for x in regression.split(counts)]))


def reference_mask_head(model, images: np.ndarray, image_size: tuple[int, int], boxes: np.ndarray,
                        labels: np.ndarray) -> np.ndarray:
    """torchvision's own backbone, mask ``MultiScaleRoIAlign``, mask head and predictor on a preprocessed
    ``images`` tensor [1, 3, H, W] (resized ``image_size`` (h, w) inside it) and given final ``boxes`` [N, 4]
    (resized-image pixels) -> the logits of each box's ``labels`` class, [N, M, M].

    The Mask R-CNN twin of :func:`reference_box_head`: the mask branch compared on exactly the
    network input and the detections the artifact produced.
    """
    import torch

    with torch.no_grad():
        features = model.backbone(torch.as_tensor(images))
        if isinstance(features, torch.Tensor):
            features = {"0": features}
        heads = model.roi_heads
        size = [(int(image_size[0]), int(image_size[1]))]
        pooled = heads.mask_roi_pool(features, [torch.as_tensor(boxes, dtype=torch.float32)], size)
        logits = heads.mask_predictor(heads.mask_head(pooled))
        index = torch.arange(logits.shape[0])
        return logits[index, torch.as_tensor(labels, dtype=torch.int64)].numpy()


def calibrate_batchnorm(model, size: int, generator: torch.Generator, passes: int = 1) -> None:
    """Give a randomly initialised detector's backbone BatchNorm statistics measured on random
    ``size``×``size`` images (still random weights).

    With torchvision's random init the statistics (mean 0, var 1) let activations vanish
    (feature std ~1e-8): every score ties and NMS order among exact ties is arbitrary.
    """
    import torch

    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.backbone.train()
    with torch.no_grad():
        for _ in range(passes):
            model.backbone(torch.randn(2, 3, size, size, generator=generator))
    model.backbone.eval()
