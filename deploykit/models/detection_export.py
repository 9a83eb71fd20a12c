"""Export-friendly Faster R-CNN: torchvision's modules and weights, a static graph around them.

``ExportableFasterRCNN(model, input_size)`` reuses the backbone, RPN head,
RoI pooling layout, box head and predictor of a torchvision ``FasterRCNN`` and
replaces everything data-dependent with fixed-shape tensor code:

* anchors for the fixed canvas are computed once by the model's own
  ``AnchorGenerator`` and stored as one constant buffer;
* filtering (small boxes, score thresholds, invalid proposals) becomes masking:
  a removed box gets score -1 and can never be selected;
* NMS is :func:`nms_keep_mask` — torchvision's NMS in eager mode, the standard
  ONNX ``NonMaxSuppression`` op in the exported graph (classes / levels on the
  NMS batch or class axis, never the coordinate-offset trick that overflows FP16);
* MultiScaleRoIAlign runs ``roi_align`` on every level and picks each RoI's level
  with ``where`` (no ``If`` nodes);
* outputs are padded to ``max_detections``;
* torchvision pads each image only to the next multiple of ``size_divisible`` (32),
  while the graph's canvas is fixed: :class:`PaddingEmulation` makes the canvas
  behave exactly like that smaller padded image (convolutions see zeros beyond it,
  global means count only it, anchors and their strides are those torchvision
  generates for it, RoIAlign clamps at its border), so results equal
  torchvision's ``model([image])`` for every image size, not only for full canvases.

Inputs: ``images`` float32 [B,3,H,W] (normalised, zero-padded bottom/right
after normalisation) and ``image_sizes`` float32 [B,2] (height, width of each
resized image before padding). Outputs: ``num_detections`` int32 [B],
``boxes`` float32 [B,K,4] (x1, y1, x2, y2 in network-input pixels), ``scores``
float32 [B,K], ``labels`` int32 [B,K]; sorted by score, padding rows have box 0,
score 0, label -1.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import onnx
import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList

PAD_LABEL = -1
INPUT_NAMES = ["images", "image_sizes"]
OUTPUT_NAMES = ["num_detections", "boxes", "scores", "labels"]
RAW_OUTPUT_NAMES = ["rpn_objectness", "rpn_proposals", "proposals", "proposal_valid", "class_logits",
                    "box_regression"]
_REMOVED = -1.0  # score given to masked-out boxes; real scores are probabilities in [0, 1]


# --------------------------------------------------------------------------------------------
# NMS as a keep-mask: eager = torchvision, export = ONNX NonMaxSuppression + ScatterND
# --------------------------------------------------------------------------------------------
@torch.library.custom_op("deploykit::nms_keep_mask", mutates_args=())
def nms_keep_mask(boxes: Tensor, scores: Tensor, iou_threshold: float, max_per_class: int) -> Tensor:
    """Greedy NMS returning a keep mask.

    Args:
        boxes (Tensor[N, M, 4]): (x1, y1, x2, y2), shared by every class of a batch entry.
        scores (Tensor[N, C, M]): a score < 0 means "removed", never kept.
        iou_threshold: boxes overlapping a kept box with IoU > threshold are suppressed.
        max_per_class: at most this many boxes kept per (batch, class), highest scores first.

    Returns:
        Tensor[N, C, M] float32: 1.0 where kept, else 0.0.
    """
    n, c, m = scores.shape
    out = torch.zeros_like(scores)
    for b in range(n):
        for k in range(c):
            s = scores[b, k]
            idx = torch.nonzero(s >= 0).squeeze(1)
            if idx.numel() == 0:
                continue
            keep = torchvision.ops.nms(boxes[b, idx], s[idx], iou_threshold)[:max_per_class]
            out[b, k, idx[keep]] = 1.0
    return out


@nms_keep_mask.register_fake
def _nms_keep_mask_fake(boxes, scores, iou_threshold, max_per_class):
    return torch.empty_like(scores)


def _nms_keep_mask_onnx(boxes, scores, iou_threshold: float, max_per_class: int):
    from onnxscript import opset18 as op

    selected = op.NonMaxSuppression(
        boxes, scores,
        op.Constant(value_ints=[max_per_class]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[_REMOVED / 2]),  # keeps every score >= 0, drops the removed ones
    )
    count = op.Shape(selected, start=0, end=1)
    ones = op.Expand(op.Constant(value_float=1.0), count)
    zeros = op.ConstantOfShape(op.Shape(scores),
                               value=onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0]))
    return op.ScatterND(zeros, selected, ones)


CUSTOM_TRANSLATIONS = {torch.ops.deploykit.nms_keep_mask.default: _nms_keep_mask_onnx}


# --------------------------------------------------------------------------------------------
# Box arithmetic, written to match torchvision's float operations
# --------------------------------------------------------------------------------------------
def decode_boxes(deltas: Tensor, ref: Tensor, weights: tuple[float, float, float, float], clip: float) -> Tensor:
    """torchvision ``BoxCoder.decode_single`` on trailing dims: deltas [..., 4], ref [..., 4] -> [..., 4]."""
    widths = ref[..., 2] - ref[..., 0]
    heights = ref[..., 3] - ref[..., 1]
    ctr_x = ref[..., 0] + 0.5 * widths
    ctr_y = ref[..., 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=clip)
    dh = torch.clamp(deltas[..., 3] / wh, max=clip)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = 0.5 * (torch.exp(dw) * widths)
    half_h = 0.5 * (torch.exp(dh) * heights)
    return torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=-1)


def clip_to_sizes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Clamp x to [0, width], y to [0, height]. boxes [B, ..., 4]; sizes [B, 2] = (height, width)."""
    shape = (sizes.shape[0],) + (1,) * (boxes.dim() - 2)
    h = sizes[:, 0].reshape(shape)
    w = sizes[:, 1].reshape(shape)
    zero = torch.zeros_like(h)
    x1 = torch.minimum(torch.maximum(boxes[..., 0], zero), w)
    y1 = torch.minimum(torch.maximum(boxes[..., 1], zero), h)
    x2 = torch.minimum(torch.maximum(boxes[..., 2], zero), w)
    y2 = torch.minimum(torch.maximum(boxes[..., 3], zero), h)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def big_enough(boxes: Tensor, min_size: float) -> Tensor:
    """torchvision ``remove_small_boxes`` as a mask: width and height >= min_size."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, N, D], idx [B, K] -> [B, K, D]."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# --------------------------------------------------------------------------------------------
# Emulating torchvision's per-image padding inside a fixed canvas
# --------------------------------------------------------------------------------------------
class _MaskedGlobalMean(nn.Module):
    """``AdaptiveAvgPool2d(1)`` over the valid (padded-to-32) region only."""

    def __init__(self, emulation: "PaddingEmulation"):
        super().__init__()
        self.emulation = [emulation]  # a list: not a registered submodule

    def forward(self, x: Tensor) -> Tensor:
        em = self.emulation[0]
        if em.valid is None:
            return x.mean(dim=(2, 3), keepdim=True)
        mask = em.mask(x)
        count = mask.sum(dim=(2, 3), keepdim=True)
        return (x * mask).sum(dim=(2, 3), keepdim=True) / count


class PaddingEmulation:
    """Make a fixed H×W canvas compute what torchvision computes on the image padded to a multiple of 32.

    ``valid`` holds, during a forward, the padded size (Hp, Wp) of each image [B, 2]. Every
    convolution or pooling with a kernel larger than 1 gets its input multiplied by the
    valid mask (torchvision's smaller tensor is zero-padded there); ``AdaptiveAvgPool2d(1)``
    becomes a masked mean. The hooks are no-ops when ``valid`` is None.
    """

    def __init__(self, canvas: tuple[int, int]):
        self.canvas = canvas
        self.valid: Tensor | None = None

    def mask(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        vh = self.valid[:, 0:1] * (h / self.canvas[0])  # [B, 1]; exact: h = H / 2**k
        vw = self.valid[:, 1:2] * (w / self.canvas[1])
        rows = torch.arange(h, dtype=x.dtype).unsqueeze(0) < vh  # [B, h]
        cols = torch.arange(w, dtype=x.dtype).unsqueeze(0) < vw  # [B, w]
        return (rows.unsqueeze(2) & cols.unsqueeze(1)).unsqueeze(1).to(x.dtype)  # [B, 1, h, w]

    def _pre_hook(self, module, args):
        if self.valid is None:
            return None
        x = args[0]
        return (x * self.mask(x),) + tuple(args[1:])

    def install(self, root: nn.Module) -> None:
        """Hook every spatial op under ``root``; raise on ops that cannot be emulated."""
        for name, mod in list(root.named_modules()):
            if isinstance(mod, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                k = mod.kernel_size if isinstance(mod.kernel_size, tuple) else (mod.kernel_size,) * 2
                if max(k) > 1:
                    mod.register_forward_pre_hook(self._pre_hook)
            elif isinstance(mod, nn.AdaptiveAvgPool2d):
                size = mod.output_size if isinstance(mod.output_size, tuple) else (mod.output_size,) * 2
                if tuple(size) != (1, 1):
                    raise ValueError(f"cannot emulate torchvision padding for {name} ({mod}); "
                                     "export with emulate_padding=False")
                parent, _, attr = name.rpartition(".")
                setattr(root.get_submodule(parent) if parent else root, attr, _MaskedGlobalMean(self))
            elif isinstance(mod, (nn.ConvTranspose2d, nn.AdaptiveMaxPool2d)):
                raise ValueError(f"cannot emulate torchvision padding for {name} ({type(mod).__name__}); "
                                 "export with emulate_padding=False")


def _mosaic(maps: list[Tensor]) -> tuple[Tensor, list[tuple[float, float]]]:
    """Lay level maps [B, C, h_l, w_l] out in one tensor: level 0 on the left, the others stacked
    in a column to its right (or in a row if the column would be taller). Every map gets one
    replicated row and column first. Returns the mosaic and each level's (x, y) offset."""
    padded = [torch.nn.functional.pad(f, (0, 1, 0, 1), mode="replicate") for f in maps]
    first, rest = padded[0], padded[1:]
    height = first.shape[-2]
    col_w = max(f.shape[-1] for f in rest)
    if sum(f.shape[-2] for f in rest) <= height:
        offsets, y = [(0.0, 0.0)], 0
        tiles = []
        for f in rest:
            offsets.append((float(first.shape[-1]), float(y)))
            tiles.append(torch.nn.functional.pad(f, (0, col_w - f.shape[-1], 0, 0)))
            y += f.shape[-2]
        if y < height:
            tiles.append(first.new_zeros(first.shape[0], first.shape[1], height - y, col_w))
        return torch.cat([first, torch.cat(tiles, dim=2)], dim=3), offsets
    offsets, x = [], 0
    tiles = []
    for f in padded:
        offsets.append((float(x), 0.0))
        tiles.append(torch.nn.functional.pad(f, (0, 0, 0, height - f.shape[-2])))
        x += f.shape[-1]
    return torch.cat(tiles, dim=3), offsets


def _corner_mosaic(maps: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Level maps [B, C, h_l, w_l] of any (dynamic) size in one tensor, and each level's (x, y) offset.

    Level 0, as it is, fills the bottom-right corner; the other levels, each edge-padded by one
    row/column, are stacked in a column to its left. RoiAlign then treats a sample of a level-0
    RoI beyond that map exactly as torchvision does (beyond the last row or column: 0; within its
    last cell: the clamped edge), since the map's edges are the mosaic's. That matters for RoIs
    thinner than one cell, which RoiAlign stretches to one cell: only level 0 gets those (the FPN
    rule sends a RoI to level 1 only from sqrt(area) >= 112 px, a height >= 8 px when max_size <= 1568).
    Inside the column the replicated row/column is what torchvision reads at a map's last pixel.
    Returns (mosaic, left [L], top [L]) with the offsets as float32.
    """
    first = maps[0]
    rest = [torch.nn.functional.pad(f, (0, 1, 0, 1), mode="replicate") for f in maps[1:]]
    col_w = rest[0].shape[-1]
    rest = [torch.nn.functional.pad(t, (0, col_w - t.shape[-1])) for t in rest]
    column = torch.cat(rest, dim=2)
    height = torch.sym_max(first.shape[-2], column.shape[-2])
    column = torch.nn.functional.pad(column, (0, 0, 0, height - column.shape[-2]))
    first = torch.nn.functional.pad(first, (0, 0, height - first.shape[-2], 0))
    mosaic = torch.cat([column, first], dim=3)
    heights = torch.stack([torch.full((), t.shape[-2], dtype=torch.float32) for t in rest])
    tops = torch.cat([torch.full((1,), height - maps[0].shape[-2], dtype=torch.float32), torch.zeros(1),
                      torch.cumsum(heights, 0)[:-1]])
    lefts = torch.cat([torch.full((1,), col_w, dtype=torch.float32), torch.zeros(len(rest))])
    return mosaic, lefts, tops


def _replicate_border(f: Tensor, valid_h: Tensor, valid_w: Tensor) -> Tensor:
    """Copy row ``valid_h-1`` into row ``valid_h`` (and the same for columns), per image.

    torchvision's roi_align clamps samples in the last pixel to that pixel of its smaller
    feature map; on the canvas the bilinear neighbour would be the next row/column.
    The copied row/column is gathered (small) and written with one ``where`` pass.
    """
    b, c, h, w = f.shape
    iy = torch.clamp(valid_h - 1, min=0).to(torch.int64).reshape(b, 1, 1, 1).expand(b, c, 1, w)
    at_row = torch.arange(h, dtype=f.dtype).unsqueeze(0) == valid_h.unsqueeze(1)  # [B, h]
    f = torch.where(at_row[:, None, :, None], torch.gather(f, 2, iy), f)
    ix = torch.clamp(valid_w - 1, min=0).to(torch.int64).reshape(b, 1, 1, 1).expand(b, c, h, 1)
    at_col = torch.arange(w, dtype=f.dtype).unsqueeze(0) == valid_w.unsqueeze(1)  # [B, w]
    return torch.where(at_col[:, None, None, :], torch.gather(f, 3, ix), f)


# --------------------------------------------------------------------------------------------
# The export-friendly detector
# --------------------------------------------------------------------------------------------
class ExportableFasterRCNN(nn.Module):
    """Static-shape Faster R-CNN for a fixed (H, W) canvas, sharing ``model``'s modules and weights.

    Args:
        model: a torchvision ``FasterRCNN`` (any backbone); not modified.
        input_size: (H, W) of the canvas the graph accepts.
        max_detections: K, rows of the padded outputs (default: ``model.roi_heads.detections_per_img``).
        score_threshold: final score threshold (default: ``model.roi_heads.score_thresh``).
        nms_iou: final per-class NMS IoU (default: ``model.roi_heads.nms_thresh``).
        raw: output the pre-NMS tensors (``RAW_OUTPUT_NAMES``) instead of detections, for parity checks.
        emulate_padding: compute exactly what torchvision computes on each image padded to a
            multiple of ``size_divisible`` (see :class:`PaddingEmulation`). With False, the
            canvas padding is seen by the network as computed features (cheaper, not exact
            near the padded border). The backbone and RPN head are copied, never hooked in
            ``model`` itself.
    """

    def __init__(self, model: FasterRCNN, input_size: tuple[int, int] | None, *, max_detections: int | None = None,
                 score_threshold: float | None = None, nms_iou: float | None = None, raw: bool = False,
                 emulate_padding: bool = True, rescale_boxes: bool = False):
        super().__init__()
        if not isinstance(model, FasterRCNN):
            raise TypeError(f"model should be a torchvision FasterRCNN instead of {type(model).__name__}")
        model = model.eval()
        self.raw = raw
        self.dynamic = input_size is None
        self.rescale_boxes = rescale_boxes
        self.input_size = None if self.dynamic else (int(input_size[0]), int(input_size[1]))
        self.box_head = model.roi_heads.box_head
        self.box_predictor = model.roi_heads.box_predictor
        self.size_divisible = int(getattr(model.transform, "size_divisible", 32))
        self.emulation: PaddingEmulation | None = None
        d = self.size_divisible
        if self.dynamic:  # the padding is torchvision's own: nothing to emulate
            h = w = 8 * d  # a probe for the feature layout and the RoI scales of a normal-size image
        else:
            h, w = self.input_size
        if emulate_padding and not self.dynamic:
            if h % d or w % d:
                raise ValueError(f"input_size should be a multiple of size_divisible={d}, got {h}x{w}")
            self.emulation = PaddingEmulation((h, w))
            self.backbone = copy.deepcopy(model.backbone)
            self.rpn_head = copy.deepcopy(model.rpn.head)
            self.emulation.install(self.backbone)
            self.emulation.install(self.rpn_head)
        else:
            self.backbone = model.backbone
            self.rpn_head = model.rpn.head

        rpn, heads = model.rpn, model.roi_heads
        with torch.no_grad():
            feats = self._features(torch.zeros(1, 3, h, w))
            feature_list = list(feats.values())
            anchors = rpn.anchor_generator(ImageList(torch.zeros(1, 3, h, w), [(h, w)]), feature_list)[0]
        a = self.rpn_head.cls_logits.out_channels
        self.anchors_per_cell = a
        self.num_levels = len(feature_list)
        self.anchors_per_level = [a * f.shape[-2] * f.shape[-1] for f in feature_list]
        if sum(self.anchors_per_level) != anchors.shape[0]:
            raise ValueError(f"anchor count {anchors.shape[0]} does not match the RPN head's "
                             f"{sum(self.anchors_per_level)} predictions")
        cells = rpn.anchor_generator.cell_anchors
        if len(cells) != self.num_levels or any(c.shape[0] != a for c in cells):
            raise ValueError(f"the anchor generator has {[c.shape[0] for c in cells]} anchors per cell on "
                             f"{len(cells)} levels; the RPN head predicts {a} per cell on {self.num_levels}")
        for lvl, cell in enumerate(cells):
            self.register_buffer(f"cell_anchors_{lvl}", cell.to(torch.float32).clone(), persistent=False)
        pre_nms = int(rpn._pre_nms_top_n["testing"])
        if self.dynamic:
            # every level gives exactly pre_nms candidates: a level with fewer anchors is padded
            # with candidates that can never be selected (torchvision takes min(pre_nms, n))
            self.register_buffer("anchors", torch.zeros(0, 4), persistent=False)
            self.rpn_pre_nms = [pre_nms] * self.num_levels
        else:
            self.register_buffer("anchors", anchors.detach().clone(), persistent=False)
            if self.emulation is not None:
                self._anchor_tables(rpn.anchor_generator, feature_list, a)
            self.rpn_pre_nms = [min(pre_nms, n) for n in self.anchors_per_level]
        self.rpn_post_nms = min(rpn._post_nms_top_n["testing"], sum(self.rpn_pre_nms))
        self.rpn_nms_thresh = float(rpn.nms_thresh)
        self.rpn_min_size = float(rpn.min_size)
        self.rpn_score_thresh = float(rpn.score_thresh)
        self.rpn_weights = tuple(float(x) for x in rpn.box_coder.weights)
        self.rpn_clip = float(rpn.box_coder.bbox_xform_clip)
        levels = torch.cat([torch.full((n,), i) for i, n in enumerate(self.rpn_pre_nms)])
        level_onehot = levels[None, :] == torch.arange(len(self.rpn_pre_nms))[:, None]  # [L, N]
        self.register_buffer("level_onehot", level_onehot, persistent=False)

        # RoI pooling layout, as MultiScaleRoIAlign infers it (for the canvas; per input when dynamic)
        pool = heads.box_roi_pool
        # MultiScaleRoIAlign keeps the backbone's levels whose names it lists, in the backbone's order
        names = [k for k in feats if k in pool.featmap_names]
        self.pool_names = names
        pooled = [feats[n] for n in names]
        self.pool_scales = [2.0 ** round(math.log2(f.shape[-2] / h)) for f in pooled]
        self.pool_k_min = int(-math.log2(self.pool_scales[0]))
        self.pool_k_max = int(-math.log2(self.pool_scales[-1]))
        self.pool_output = tuple(pool.output_size)
        self.pool_sampling = int(pool.sampling_ratio)
        self.canonical_scale = float(getattr(pool, "canonical_scale", 224))
        self.canonical_level = float(getattr(pool, "canonical_level", 4))

        self.box_weights = tuple(float(x) for x in heads.box_coder.weights)
        self.box_clip = float(heads.box_coder.bbox_xform_clip)
        self.score_threshold = float(heads.score_thresh if score_threshold is None else score_threshold)
        self.nms_iou = float(heads.nms_thresh if nms_iou is None else nms_iou)
        self.num_classes = int(self.box_predictor.cls_score.out_features)
        total = (self.num_classes - 1) * self.rpn_post_nms
        self.max_detections = min(int(heads.detections_per_img if max_detections is None else max_detections), total)
        if not 1 <= self.max_detections <= 3840:
            raise ValueError(f"max_detections should be in [1, 3840] (TensorRT TopK limit), got {self.max_detections}")

    def _features(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        """The backbone's feature maps; a single tensor becomes level '0' (as GeneralizedRCNN does)."""
        feats = self.backbone(images)
        return OrderedDict([("0", feats)]) if isinstance(feats, Tensor) else feats

    def _anchor_tables(self, generator, feature_list: list[Tensor], a: int) -> None:
        """Grid sizes and strides torchvision uses for each padded size (Hp, Wp), per level.

        For every level whose stride does not depend on the padded size (all levels with a
        stride dividing ``size_divisible``) the baked canvas anchors are used as they are;
        levels such as FPN's max-pooled 'pool' level, whose stride is Hp // ceil(Hp/64), get
        their anchors from small constant stride tables.
        """
        h, w = self.input_size
        d = self.size_divisible
        heights = [self._features(torch.zeros(1, 3, hp, d)) for hp in range(d, h + 1, d)]
        widths = [self._features(torch.zeros(1, 3, d, wp)) for wp in range(d, w + 1, d)]
        self.levels_varying: list[bool] = []
        for lvl, f in enumerate(feature_list):
            gh = torch.tensor([list(o.values())[lvl].shape[-2] for o in heights])
            gw = torch.tensor([list(o.values())[lvl].shape[-1] for o in widths])
            sh = torch.arange(d, h + 1, d) // gh
            sw = torch.arange(d, w + 1, d) // gw
            big_h, big_w = f.shape[-2], f.shape[-1]
            iy = torch.arange(big_h).repeat_interleave(big_w * a)
            ix = torch.arange(big_w).repeat_interleave(a).repeat(big_h)
            base = generator.cell_anchors[lvl].to(torch.float32).repeat(big_h * big_w, 1)
            self.register_buffer(f"grid_h_{lvl}", gh.to(torch.float32), persistent=False)
            self.register_buffer(f"grid_w_{lvl}", gw.to(torch.float32), persistent=False)
            self.register_buffer(f"stride_h_{lvl}", sh.to(torch.float32), persistent=False)
            self.register_buffer(f"stride_w_{lvl}", sw.to(torch.float32), persistent=False)
            self.register_buffer(f"anchor_iy_{lvl}", iy.to(torch.float32), persistent=False)
            self.register_buffer(f"anchor_ix_{lvl}", ix.to(torch.float32), persistent=False)
            self.register_buffer(f"anchor_base_{lvl}", base, persistent=False)
            self.levels_varying.append(bool((sh != sh[-1]).any() or (sw != sw[-1]).any()))

    def _level_anchors(self, lvl: int, offset: int, n: int, padded: Tensor):
        """Anchors [B, n, 4] or [n, 4] of level ``lvl`` and their validity [B, n] (None without emulation)."""
        if self.emulation is None:
            return self.anchors[offset:offset + n], None
        d = float(self.size_divisible)
        hi = (padded[:, 0] / d - 1).to(torch.int64)
        wi = (padded[:, 1] / d - 1).to(torch.int64)
        iy, ix = getattr(self, f"anchor_iy_{lvl}"), getattr(self, f"anchor_ix_{lvl}")
        valid = (iy.unsqueeze(0) < getattr(self, f"grid_h_{lvl}")[hi].unsqueeze(1)) & (
            ix.unsqueeze(0) < getattr(self, f"grid_w_{lvl}")[wi].unsqueeze(1))
        if not self.levels_varying[lvl]:
            return self.anchors[offset:offset + n], valid
        sx = ix.unsqueeze(0) * getattr(self, f"stride_w_{lvl}")[wi].unsqueeze(1)  # [B, n]
        sy = iy.unsqueeze(0) * getattr(self, f"stride_h_{lvl}")[hi].unsqueeze(1)
        return torch.stack((sx, sy, sx, sy), dim=-1) + getattr(self, f"anchor_base_{lvl}").unsqueeze(0), valid

    # ---- RPN ---------------------------------------------------------------------------------
    def _grid_anchors(self, lvl: int, feature: Tensor, images: Tensor, idx: Tensor | None = None) -> Tensor:
        """Anchors of level ``lvl`` from the shapes, as torchvision's ``AnchorGenerator.grid_anchors``.

        The stride is ``padded image size // feature size`` per axis; anchor ``i`` of the
        level's (y, x, a) layout is ``cell_anchors[a] + (x·sw, y·sh, x·sw, y·sh)``. With
        ``idx`` [B, k] only those anchors are made ([B, k, 4]); without it every anchor ([n, 4]).
        """
        fh, fw = feature.shape[-2], feature.shape[-1]
        stride_h = images.shape[-2] // fh
        stride_w = images.shape[-1] // fw
        a = self.anchors_per_cell
        if idx is None:
            idx = torch.arange(fh * fw * a, device=feature.device)
        cell = torch.div(idx, a, rounding_mode="floor")
        which = idx - cell * a
        y = torch.div(cell, fw, rounding_mode="floor")
        x = cell - y * fw
        sx = (x * stride_w).to(torch.float32)
        sy = (y * stride_h).to(torch.float32)
        return torch.stack((sx, sy, sx, sy), dim=-1) + getattr(self, f"cell_anchors_{lvl}")[which]

    def _rpn(self, features: list[Tensor], sizes: Tensor, padded: Tensor | None, images: Tensor):
        objectness, deltas = self.rpn_head(features)
        b = features[0].shape[0]
        obj_levels, delta_levels = [], []
        for o, d in zip(objectness, deltas):
            a, hh, ww = o.shape[1], o.shape[2], o.shape[3]
            obj_levels.append(o.permute(0, 2, 3, 1).reshape(b, hh * ww * a))
            delta_levels.append(d.reshape(b, a, 4, hh, ww).permute(0, 3, 4, 1, 2).reshape(b, hh * ww * a, 4))
        if self.raw:
            all_obj = torch.cat(obj_levels, 1)
            all_anchors = (torch.cat([self._grid_anchors(lvl, f, images) for lvl, f in enumerate(features)])
                           if self.dynamic else self.anchors)
            all_props = decode_boxes(torch.cat(delta_levels, 1), all_anchors.unsqueeze(0), self.rpn_weights,
                                     self.rpn_clip)
        else:
            all_obj = all_props = None

        # per-level top-k on the logits, then decode only the selected anchors
        top_obj, top_deltas, top_anchors, top_valid = [], [], [], []
        offset = 0
        for lvl, (o, d, n, k) in enumerate(zip(obj_levels, delta_levels, self.anchors_per_level, self.rpn_pre_nms)):
            if self.dynamic:
                # torchvision takes the top min(k, n); a constant-K TopK over the level padded with k
                # candidates that lose to every real one gives the same set, plus unselectable rows
                count = o.shape[1]
                lowest = torch.finfo(o.dtype).min
                vals, idx = torch.cat([o, o.new_full((b, k), lowest)], dim=1).topk(k, dim=1)
                real = idx < count
                idx = torch.where(real, idx, torch.zeros_like(idx))
                top_obj.append(vals)
                top_deltas.append(_gather_rows(d, idx))
                top_anchors.append(self._grid_anchors(lvl, features[lvl], images, idx))
                top_valid.append(real)
                continue
            anchors, anchor_valid = self._level_anchors(lvl, offset, n, padded)
            if anchor_valid is not None:  # anchors torchvision does not have for this image never win
                o = torch.where(anchor_valid, o, torch.full_like(o, -1e30))
            vals, idx = o.topk(k, dim=1)
            top_obj.append(vals)
            top_deltas.append(_gather_rows(d, idx))
            top_anchors.append(anchors[idx] if anchors.dim() == 2 else _gather_rows(anchors, idx))
            if anchor_valid is not None:
                top_valid.append(torch.gather(anchor_valid, 1, idx))
            offset += n
        obj = torch.cat(top_obj, 1)
        boxes = decode_boxes(torch.cat(top_deltas, 1), torch.cat(top_anchors, 1), self.rpn_weights, self.rpn_clip)
        boxes = clip_to_sizes(boxes, sizes)
        prob = torch.sigmoid(obj)
        valid = big_enough(boxes, self.rpn_min_size) & (prob >= self.rpn_score_thresh)
        if top_valid:
            valid = valid & torch.cat(top_valid, 1)
        score = torch.where(valid, prob, torch.full_like(prob, _REMOVED))
        # NMS independently per level: levels on the NMS class axis
        per_level = torch.where(self.level_onehot.unsqueeze(0), score.unsqueeze(1), torch.full_like(score, _REMOVED)
                                .unsqueeze(1))
        keep = nms_keep_mask(boxes, per_level, self.rpn_nms_thresh, self.rpn_post_nms).amax(dim=1)
        score = torch.where(keep > 0, score, torch.full_like(score, _REMOVED))
        top_score, idx = score.topk(self.rpn_post_nms, dim=1)
        proposals = _gather_rows(boxes, idx)
        return proposals, top_score >= 0, all_obj, all_props

    # ---- RoI heads ---------------------------------------------------------------------------
    def _roi_align(self, feats: "OrderedDict[str, Tensor]", proposals: Tensor, padded: Tensor | None) -> Tensor:
        """MultiScaleRoIAlign as one ONNX RoiAlign over a mosaic of the FPN levels.

        Each level map is edge-padded by one row/column (what torchvision's sampling reads
        at a map's last pixel) and placed in one mosaic tensor; each RoI is mapped into its
        level's tile (scale, then offset), so RoiAlign runs once per RoI instead of once per
        RoI and level. Level choice is the FPN rule torchvision's LevelMapper uses.

        Fixed canvas: the tiles sit side by side at offsets known at export time. Dynamic
        size: the layout follows the shapes (:func:`_corner_mosaic`: level 0 on top, each
        map edge-padded by one row/column and zero-padded to level 0's width). Scales and
        the level range are those torchvision infers for a normal-size image
        (``2 ** round(log2(feature_h / image_h))`` = 1/stride).

        torchvision's ``MultiScaleRoIAlign`` infers its scales on the first batch it sees and
        keeps them (``self.scales`` is cached), so a model in use pools with the scales of its
        first image: 1/stride unless that image was resized to under ~75 pixels high.
        """
        b, p = proposals.shape[0], proposals.shape[1]
        maps = [feats[name] for name in self.pool_names]
        if padded is not None:  # the fixed canvas's padding emulation (never in dynamic graphs)
            h, w = self.input_size
            maps = [_replicate_border(f, padded[:, 0] * (f.shape[-2] / h), padded[:, 1] * (f.shape[-1] / w))
                    for f in maps]
        flat = proposals.reshape(b * p, 4)
        batch_idx = torch.arange(b, dtype=flat.dtype).repeat_interleave(p).unsqueeze(1)
        if len(maps) == 1 or self.pool_k_min == self.pool_k_max:  # one level receives every RoI
            rois = torch.cat([batch_idx, flat], dim=1)
            return torchvision.ops.roi_align(maps[0], rois, self.pool_output, spatial_scale=self.pool_scales[0],
                                             sampling_ratio=self.pool_sampling, aligned=False)
        area = (flat[:, 2] - flat[:, 0]) * (flat[:, 3] - flat[:, 1])
        lvl = torch.floor(self.canonical_level + torch.log2(torch.sqrt(area) / self.canonical_scale) + 1e-6)
        lvl = (torch.clamp(lvl, min=self.pool_k_min, max=self.pool_k_max) - self.pool_k_min).to(torch.int64)
        scale = torch.tensor(self.pool_scales, dtype=flat.dtype)[lvl].unsqueeze(1)  # [R, 1]
        if self.dynamic:
            mosaic, left, top = _corner_mosaic(maps)
            x0, y0 = left[lvl].unsqueeze(1), top[lvl].unsqueeze(1)
        else:
            mosaic, offsets = _mosaic(maps)
            off = torch.tensor(offsets, dtype=flat.dtype)[lvl]  # [R, 2] = (x, y)
            x0, y0 = off[:, :1], off[:, 1:]
        rois = torch.cat([batch_idx, flat * scale + torch.cat([x0, y0, x0, y0], dim=1)], dim=1)
        return torchvision.ops.roi_align(mosaic, rois, self.pool_output, spatial_scale=1.0,
                                         sampling_ratio=self.pool_sampling, aligned=False)

    def _detections(self, class_logits: Tensor, box_regression: Tensor, proposals: Tensor,
                    proposal_valid: Tensor, sizes: Tensor):
        b, p = proposals.shape[0], proposals.shape[1]
        c = self.num_classes
        deltas = box_regression.reshape(b, p, c, 4)
        boxes = decode_boxes(deltas, proposals.unsqueeze(2), self.box_weights, self.box_clip)
        boxes = clip_to_sizes(boxes, sizes)[:, :, 1:]  # [B, P, C-1, 4], background dropped
        scores = torch.softmax(class_logits.reshape(b, p, c), dim=-1)[:, :, 1:]
        valid = (scores > self.score_threshold) & big_enough(boxes, 1e-2) & proposal_valid.unsqueeze(-1)
        scores = torch.where(valid, scores, torch.full_like(scores, _REMOVED))
        # per-class NMS with (image, class) as the NMS batch axis: no offsets, no cross-class work
        nms_boxes = boxes.permute(0, 2, 1, 3).reshape(b * (c - 1), p, 4)
        nms_scores = scores.permute(0, 2, 1).reshape(b * (c - 1), 1, p)
        keep = nms_keep_mask(nms_boxes, nms_scores, self.nms_iou, self.max_detections)
        final = torch.where(keep > 0, nms_scores, torch.full_like(nms_scores, _REMOVED)).reshape(b, (c - 1) * p)
        top, idx = final.topk(self.max_detections, dim=1)
        found = top >= 0
        out_boxes = _gather_rows(nms_boxes.reshape(b, (c - 1) * p, 4), idx)
        out_boxes = torch.where(found.unsqueeze(-1), out_boxes, torch.zeros_like(out_boxes))
        out_scores = torch.where(found, top, torch.zeros_like(top))
        labels = torch.div(idx, p, rounding_mode="floor") + 1
        out_labels = torch.where(found, labels, torch.full_like(labels, PAD_LABEL)).to(torch.int32)
        num = found.to(torch.int32).sum(dim=1, dtype=torch.int32)
        return num, out_boxes, out_scores, out_labels

    def forward(self, images: Tensor, image_sizes: Tensor, original_sizes: Tensor | None = None):
        padded = None
        if self.emulation is not None:
            d = float(self.size_divisible)
            padded = torch.clamp(torch.ceil(image_sizes / d), min=1.0) * d
            self.emulation.valid = padded
        try:
            feats = self._features(images)
            proposals, proposal_valid, all_obj, all_props = self._rpn(list(feats.values()), image_sizes, padded,
                                                                      images)
        finally:
            if self.emulation is not None:
                self.emulation.valid = None
        pooled = self._roi_align(feats, proposals, padded)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))
        b, p = proposals.shape[0], proposals.shape[1]
        if self.raw:
            return (all_obj, all_props, proposals, proposal_valid.to(torch.int32),
                    class_logits.reshape(b, p, -1), box_regression.reshape(b, p, -1))
        num, boxes, scores, labels = self._detections(class_logits, box_regression, proposals, proposal_valid,
                                                      image_sizes)
        if self.rescale_boxes:
            boxes = rescale_to_original(boxes, image_sizes, original_sizes)
        return num, boxes, scores, labels


def rescale_to_original(boxes: Tensor, resized: Tensor, original: Tensor) -> Tensor:
    """torchvision's ``transform.postprocess``: boxes [B, K, 4] from resized to original pixels.

    x is multiplied by ``original_w / resized_w`` and y by ``original_h / resized_h`` (float32,
    as ``resize_boxes``), then clamped to the original image (the scaled clip of torchvision
    can exceed it by a rounding ulp). ``resized``, ``original``: [B, 2] = (height, width).
    """
    ratio = original / resized  # [B, 2] (h, w)
    rh, rw = ratio[:, 0:1], ratio[:, 1:2]
    scaled = torch.stack((boxes[..., 0] * rw, boxes[..., 1] * rh, boxes[..., 2] * rw, boxes[..., 3] * rh), dim=-1)
    return clip_to_sizes(scaled, original)
