"""Capture torchvision Faster R-CNN intermediates (pre-NMS tensors) from the unmodified model."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models.detection.rpn import concat_box_prediction_layers


def reference_raw(model, images: list[torch.Tensor]) -> dict[str, list[np.ndarray]]:
    """Run ``model(images)`` (torchvision's own forward) and capture, per image:

    ``rpn_objectness`` [A] logits and ``rpn_proposals`` [A,4] decoded for every anchor
    (torchvision's own head and BoxCoder), ``proposals`` [P,4] that reach the box head,
    ``class_logits`` [P,C] and ``box_regression`` [P,4C].
    """
    got: dict = {}
    hooks = [
        model.rpn.head.register_forward_hook(lambda m, i, o: got.__setitem__("head", o)),
        model.rpn.anchor_generator.register_forward_hook(lambda m, i, o: got.__setitem__("anchors", o)),
        model.roi_heads.register_forward_pre_hook(lambda m, args: got.__setitem__("proposals", args[1])),
        model.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: got.__setitem__("pred", o)),
    ]
    try:
        with torch.no_grad():
            detections = model(images)
            objectness, deltas = concat_box_prediction_layers(*got["head"])
            n = len(images)
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
    with torch.no_grad():
        images, _ = model.transform([image])
        features = model.backbone(images.tensors)
        if isinstance(features, torch.Tensor):  # as GeneralizedRCNN.forward does
            features = {"0": features}
        boxes = [torch.as_tensor(proposals, dtype=torch.float32)]
        pooled = model.roi_heads.box_roi_pool(features, boxes, images.image_sizes)
        logits, regression = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
    return logits.numpy(), regression.numpy()


def calibrate_batchnorm(model, size: int, generator: torch.Generator, passes: int = 1) -> None:
    """Give a randomly initialised detector's backbone BatchNorm statistics measured on random
    ``size``×``size`` images (still random weights).

    With torchvision's random init the statistics (mean 0, var 1) let activations vanish
    (feature std ~1e-8): every score ties and NMS order among exact ties is arbitrary.
    """
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
