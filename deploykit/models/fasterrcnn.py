"""Faster R-CNN and Mask R-CNN reference models: torchvision's architectures and the paper's VGG-16 setting.

Every builder returns an unmodified ``torchvision.models.detection.FasterRCNN`` (or its subclass
``MaskRCNN``: the same transform, backbone, RPN and box head plus a mask head), with torchvision's
own forward, so it is the reference parity is measured against.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import vgg16
from torchvision.models.detection import (
    FasterRCNN,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

COCO_NUM_CLASSES = 91


class VGG16Features(nn.Module):
    """VGG-16 conv1_1..conv5_3 (stride 16, 512 channels): the paper's shared feature map."""

    out_channels = 512

    def __init__(self) -> None:
        super().__init__()
        # features[:-1] drops the last max-pool, leaving conv5_3 + ReLU at stride 16.
        self.body = vgg16(weights=None).features[:-1]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict([("0", self.body(x))])


def fasterrcnn_vgg16(num_classes: int = 21, representation_size: int = 4096, **kwargs) -> FasterRCNN:
    """Ren et al.'s setting on torchvision's FasterRCNN.

    One conv5_3 feature map (stride 16, 512-d); RPN with a 3×3 conv (512-d) and
    k = 9 anchors (sizes 128, 256, 512 × aspect ratios 0.5, 1, 2); RoIAlign 7×7;
    fc6/fc7 of ``representation_size`` (4096 as VGG-16's classifier); shorter side
    600 / longer side at most 1000 as in the paper. ``num_classes`` includes
    background (21 = PASCAL VOC).
    """
    backbone = VGG16Features()
    anchors = AnchorGenerator(sizes=((128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    head = TwoMLPHead(backbone.out_channels * 7 * 7, representation_size)
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

    kwargs.setdefault("min_size", 600)
    kwargs.setdefault("max_size", 1000)
    return FasterRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        **kwargs,
    )


def _torchvision(fn):
    def build(num_classes: int = COCO_NUM_CLASSES, **kwargs) -> FasterRCNN:
        return fn(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)

    build.__doc__ = f"torchvision ``{fn.__name__}`` architecture with random weights (load a checkpoint for real ones)."
    return build


build_fasterrcnn_resnet50_fpn = _torchvision(fasterrcnn_resnet50_fpn)
build_fasterrcnn_resnet50_fpn_v2 = _torchvision(fasterrcnn_resnet50_fpn_v2)
build_fasterrcnn_mobilenet_v3_large_fpn = _torchvision(fasterrcnn_mobilenet_v3_large_fpn)
build_fasterrcnn_mobilenet_v3_large_320_fpn = _torchvision(fasterrcnn_mobilenet_v3_large_320_fpn)
build_fasterrcnn_vgg16 = fasterrcnn_vgg16
build_maskrcnn_resnet50_fpn = _torchvision(maskrcnn_resnet50_fpn)
build_maskrcnn_resnet50_fpn_v2 = _torchvision(maskrcnn_resnet50_fpn_v2)


def num_classes_in(state_dict: dict) -> int | None:
    """Number of classes (background included) a Faster R-CNN / Mask R-CNN state dict was trained for."""
    w = state_dict.get("roi_heads.box_predictor.cls_score.weight")
    return None if w is None else int(w.shape[0])
