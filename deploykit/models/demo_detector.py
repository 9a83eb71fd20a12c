"""The demo detectors: torchvision ``FasterRCNN`` / ``MaskRCNN`` with a small CNN + FPN backbone.

Same graph structure as torchvision's FPN detectors (``BackboneWithFPN``
feature dict with keys ``'0'..'3', 'pool'``, five anchor levels × three
aspect ratios, ``MultiScaleRoIAlign`` over ``'0'..'3'``, ``TwoMLPHead`` +
``FastRCNNPredictor``), but small enough to train from scratch on a CPU on
the synthetic shapes dataset (:mod:`deploykit.data.shapes`). ``maskrcnn_demo`` adds torchvision's
mask head (``MultiScaleRoIAlign`` 14×14 over '0'..'3', four 3×3 convs, a 2× transposed conv and
per-class 28×28 mask logits) at the FPN's width.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..data.shapes import CLASS_NAMES

STAGE_CHANNELS = (32, 64, 128, 192)  # strides 4, 8, 16, 32
FPN_CHANNELS = 64
ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
REPRESENTATION_SIZE = 256


def _cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallBody(nn.Module):
    """Plain conv-BN-ReLU stages; returns features at strides 4, 8, 16, 32."""

    def __init__(self, channels=STAGE_CHANNELS):
        super().__init__()
        c1, c2, c3, c4 = channels
        self.stem = nn.Sequential(_cbr(3, 16, 2), _cbr(16, c1, 2), _cbr(c1, c1))  # /4
        self.layer2 = nn.Sequential(_cbr(c1, c2, 2), _cbr(c2, c2))  # /8
        self.layer3 = nn.Sequential(_cbr(c2, c3, 2), _cbr(c3, c3), _cbr(c3, c3))  # /16
        self.layer4 = nn.Sequential(_cbr(c3, c4, 2), _cbr(c4, c4), _cbr(c4, c4))  # /32

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        x = self.stem(x)
        out["0"] = x
        x = self.layer2(x)
        out["1"] = x
        x = self.layer3(x)
        out["2"] = x
        x = self.layer4(x)
        out["3"] = x
        return out


class SmallBackboneWithFPN(nn.Module):
    """``body`` + ``fpn`` exactly like torchvision's ``BackboneWithFPN``."""

    def __init__(self, channels=STAGE_CHANNELS, out_channels: int = FPN_CHANNELS):
        super().__init__()
        self.body = SmallBody(channels)
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=list(channels),
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body(x))


def build_demo_detector(num_classes: int = len(CLASS_NAMES), min_size: int = 320,
                        max_size: int = 320, **kwargs) -> FasterRCNN:
    """Build the (untrained) demo Faster R-CNN.

    ``kwargs`` go to :class:`torchvision.models.detection.FasterRCNN`
    (e.g. ``box_score_thresh``, ``size_divisible``, ``rpn_batch_size_per_image``);
    all thresholds default to torchvision's.
    """
    backbone = SmallBackboneWithFPN()
    anchor_generator = AnchorGenerator(sizes=ANCHOR_SIZES,
                                       aspect_ratios=(ASPECT_RATIOS,) * len(ANCHOR_SIZES))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, REPRESENTATION_SIZE)
    kwargs.setdefault("rpn_anchor_generator", anchor_generator)
    kwargs.setdefault("box_roi_pool", roi_pool)
    kwargs.setdefault("box_head", box_head)
    if kwargs.get("box_predictor") is None:
        kwargs["box_predictor"] = FastRCNNPredictor(REPRESENTATION_SIZE, num_classes)
        num_classes = None  # FasterRCNN requires num_classes=None with a box_predictor
    return FasterRCNN(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size, **kwargs)


MASK_HEAD_LAYERS = (64, 64, 64, 64)


def build_demo_maskrcnn(num_classes: int = len(CLASS_NAMES), min_size: int = 320,
                        max_size: int = 320, **kwargs) -> MaskRCNN:
    """Build the (untrained) demo Mask R-CNN: the demo Faster R-CNN's parts (same names, so its
    weights load into them) plus torchvision's mask head. ``kwargs`` go to ``MaskRCNN``."""
    backbone = SmallBackboneWithFPN()
    kwargs.setdefault("rpn_anchor_generator", AnchorGenerator(sizes=ANCHOR_SIZES,
                                                              aspect_ratios=(ASPECT_RATIOS,) * len(ANCHOR_SIZES)))
    kwargs.setdefault("box_roi_pool", MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7,
                                                         sampling_ratio=2))
    kwargs.setdefault("box_head", TwoMLPHead(backbone.out_channels * 7 * 7, REPRESENTATION_SIZE))
    kwargs.setdefault("mask_roi_pool", MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=14,
                                                          sampling_ratio=2))
    kwargs.setdefault("mask_head", MaskRCNNHeads(backbone.out_channels, MASK_HEAD_LAYERS, dilation=1))
    if kwargs.get("box_predictor") is None:
        kwargs["box_predictor"] = FastRCNNPredictor(REPRESENTATION_SIZE, num_classes)
    if kwargs.get("mask_predictor") is None:
        kwargs["mask_predictor"] = MaskRCNNPredictor(MASK_HEAD_LAYERS[-1], MASK_HEAD_LAYERS[-1], num_classes)
    return MaskRCNN(backbone, num_classes=None, min_size=min_size, max_size=max_size, **kwargs)
