"""Export-friendly Faster R-CNN: torchvision's modules and weights, a static graph around them.

``ExportableFasterRCNN(model, input_size)`` reuses the backbone, RPN head,
RoI pooling layout, box head and predictor of a torchvision ``FasterRCNN`` and
replaces everything data-dependent with fixed-shape tensor code:

* anchors for the fixed canvas are computed once by the model's own
  ``AnchorGenerator`` and stored as one constant buffer;
* filtering (small boxes, score thresholds, invalid proposals) becomes masking:
  a removed box gets score -1 and can never be selected;
* NMS is :func:`~deploykit.export.detection.nms.nms_keep_mask` — torchvision's NMS in eager
  mode, the standard ONNX ``NonMaxSuppression`` op in the exported graph (classes / levels on
  the NMS batch or class axis, never the coordinate-offset trick that overflows FP16);
* MultiScaleRoIAlign is one ``RoiAlign`` over a mosaic of the levels, each RoI's level picked
  with tensor arithmetic (no ``If`` nodes): :mod:`deploykit.export.detection.roi_align`;
* outputs are padded to ``max_detections``;
* torchvision pads each image only to the next multiple of ``size_divisible`` (32),
  while the graph's canvas is fixed: :class:`~deploykit.export.detection.padding.PaddingEmulation`
  makes the canvas
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
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.image_list import ImageList

from .boxes import big_enough, clip_to_sizes, decode_boxes, gather_rows, rescale_to_original
from .nms import REMOVED, nms_keep_mask
from .padding import PaddingEmulation
from .roi_align import LevelRoIAlign

PAD_LABEL = -1
INPUT_NAMES = ["images", "image_sizes"]
OUTPUT_NAMES = ["num_detections", "boxes", "scores", "labels"]
RAW_OUTPUT_NAMES = ["rpn_objectness", "rpn_proposals", "proposals", "proposal_valid", "class_logits",
                    "box_regression"]

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
        self.box_pool = LevelRoIAlign(heads.box_roi_pool, feats, h)

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
                top_deltas.append(gather_rows(d, idx))
                top_anchors.append(self._grid_anchors(lvl, features[lvl], images, idx))
                top_valid.append(real)
                continue
            anchors, anchor_valid = self._level_anchors(lvl, offset, n, padded)
            if anchor_valid is not None:  # anchors torchvision does not have for this image never win
                o = torch.where(anchor_valid, o, torch.full_like(o, -1e30))
            vals, idx = o.topk(k, dim=1)
            top_obj.append(vals)
            top_deltas.append(gather_rows(d, idx))
            top_anchors.append(anchors[idx] if anchors.dim() == 2 else gather_rows(anchors, idx))
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
        score = torch.where(valid, prob, torch.full_like(prob, REMOVED))
        # NMS independently per level: levels on the NMS class axis
        per_level = torch.where(self.level_onehot.unsqueeze(0), score.unsqueeze(1), torch.full_like(score, REMOVED)
                                .unsqueeze(1))
        keep = nms_keep_mask(boxes, per_level, self.rpn_nms_thresh, self.rpn_post_nms).amax(dim=1)
        score = torch.where(keep > 0, score, torch.full_like(score, REMOVED))
        top_score, idx = score.topk(self.rpn_post_nms, dim=1)
        proposals = gather_rows(boxes, idx)
        return proposals, top_score >= 0, all_obj, all_props

    # ---- RoI heads ---------------------------------------------------------------------------
    def _detections(self, class_logits: Tensor, box_regression: Tensor, proposals: Tensor,
                    proposal_valid: Tensor, sizes: Tensor):
        b, p = proposals.shape[0], proposals.shape[1]
        c = self.num_classes
        deltas = box_regression.reshape(b, p, c, 4)
        boxes = decode_boxes(deltas, proposals.unsqueeze(2), self.box_weights, self.box_clip)
        boxes = clip_to_sizes(boxes, sizes)[:, :, 1:]  # [B, P, C-1, 4], background dropped
        scores = torch.softmax(class_logits.reshape(b, p, c), dim=-1)[:, :, 1:]
        valid = (scores > self.score_threshold) & big_enough(boxes, 1e-2) & proposal_valid.unsqueeze(-1)
        scores = torch.where(valid, scores, torch.full_like(scores, REMOVED))
        # per-class NMS with (image, class) as the NMS batch axis: no offsets, no cross-class work
        nms_boxes = boxes.permute(0, 2, 1, 3).reshape(b * (c - 1), p, 4)
        nms_scores = scores.permute(0, 2, 1).reshape(b * (c - 1), 1, p)
        keep = nms_keep_mask(nms_boxes, nms_scores, self.nms_iou, self.max_detections)
        final = torch.where(keep > 0, nms_scores, torch.full_like(nms_scores, REMOVED)).reshape(b, (c - 1) * p)
        top, idx = final.topk(self.max_detections, dim=1)
        found = top >= 0
        out_boxes = gather_rows(nms_boxes.reshape(b, (c - 1) * p, 4), idx)
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
        pooled = self.box_pool(feats, proposals, dynamic=self.dynamic, padded=padded, canvas=self.input_size)
        class_logits, box_regression = self.box_predictor(self.box_head(pooled))
        b, p = proposals.shape[0], proposals.shape[1]
        if self.raw:
            return (all_obj, all_props, proposals, proposal_valid.to(torch.int32),
                    class_logits.reshape(b, p, -1), box_regression.reshape(b, p, -1))
        detections = self._detections(class_logits, box_regression, proposals, proposal_valid, image_sizes)
        return self._outputs(feats, padded, detections, image_sizes, original_sizes)

    def _outputs(self, feats: "OrderedDict[str, Tensor]", padded: Tensor | None, detections: tuple,
                 image_sizes: Tensor, original_sizes: Tensor | None) -> tuple:
        """The graph's outputs from the detections (boxes in network-input pixels); subclasses add heads."""
        num, boxes, scores, labels = detections
        if self.rescale_boxes:
            boxes = rescale_to_original(boxes, image_sizes, original_sizes)
        return num, boxes, scores, labels


