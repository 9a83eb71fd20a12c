"""Export-friendly Mask R-CNN: :class:`ExportableFasterRCNN` plus torchvision's mask head on the final boxes.

After the detections (as for Faster R-CNN), the mask branch runs on the detections the batch
holds (the first ``n`` of the K rows, :mod:`.rows`; re-padded to K after the head) as torchvision's
``RoIHeads`` does at eval: ``MultiScaleRoIAlign`` (14×14, :class:`LevelRoIAlign`) on the final
boxes in network-input pixels, the mask head and predictor, the logits of each detection's
own class (a gather by label), sigmoid. Then, for the paste into the original image
(:mod:`deploykit.runtime.masks` states the rule), the boxes are scaled to the original image
**unclipped**, as torchvision's ``resize_boxes`` leaves them, grown by (M+2)/M about their
centre and truncated to integer corners.

Outputs beyond Faster R-CNN's: ``mask_probs`` float32 [B, K, M, M] (0 for padding rows) and
``mask_boxes`` int32 [B, K, 4] (x0, y0, x1, y1; 0 for padding rows). The pasted, image-size form
is written in ONNX around them (:mod:`.mask_paste`), where the image's own shape is known.
With ``debug_outputs`` the graph also gives ``boxes_network`` [B, K, 4] (network-input pixels),
``mask_logits`` [B, K, M, M] (before the sigmoid) and the front end's ``images`` / ``image_sizes``,
for raw parity against torchvision's head on exactly the same network input.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor
from torchvision.models.detection import MaskRCNN

from .boxes import clip_to_sizes, scale_to_original
from .faster_rcnn import ExportableFasterRCNN
from .roi_align import LevelRoIAlign
from .rows import INDEX_OUTPUT, gather_rows, row_index, scatter_rows

MASK_OUTPUT_NAMES = ["mask_probs", "mask_boxes", INDEX_OUTPUT]  # the index is dropped after the paste
DEBUG_OUTPUT_NAMES = ["boxes_network", "mask_logits"]
FRONT_END_DEBUG_OUTPUTS = ["images", "image_sizes"]  # exposed by the exporter after the front end is merged


def expand_to_corners(boxes: Tensor, mask_size: int) -> Tensor:
    """torchvision's ``expand_boxes`` by (M+2)/M and its int64 truncation: boxes [..., 4] -> int64 [..., 4]."""
    scale = float(mask_size + 2) / mask_size  # a float32 multiply, as torchvision's ``w_half *= scale``
    half_w = (boxes[..., 2] - boxes[..., 0]) * 0.5 * scale
    half_h = (boxes[..., 3] - boxes[..., 1]) * 0.5 * scale
    cx = (boxes[..., 2] + boxes[..., 0]) * 0.5
    cy = (boxes[..., 3] + boxes[..., 1]) * 0.5
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1).to(torch.int64)


class ExportableMaskRCNN(ExportableFasterRCNN):
    """:class:`ExportableFasterRCNN` for a torchvision ``MaskRCNN``, with the mask branch (module doc).

    Pixels-in only (``rescale_boxes=True``): masks live in the original image's pixels.
    """

    def __init__(self, model: MaskRCNN, input_size: tuple[int, int] | None, *, debug_outputs: bool = False,
                 **kwargs) -> None:
        if not isinstance(model, MaskRCNN):
            raise TypeError(f"model should be a torchvision MaskRCNN instead of {type(model).__name__}")
        if kwargs.get("raw"):
            raise ValueError("raw (pre-NMS) outputs are for Faster R-CNN graphs; Mask R-CNN raw parity uses "
                             "debug_outputs")
        kwargs["rescale_boxes"] = True
        super().__init__(model, input_size, **kwargs)
        heads = model.roi_heads
        self.mask_head = heads.mask_head
        self.mask_predictor = heads.mask_predictor
        self.debug_outputs = debug_outputs
        probe = self.input_size or (8 * self.size_divisible, 8 * self.size_divisible)
        with torch.no_grad():
            feats = self._features(torch.zeros(1, 3, *probe))
            pooled = torch.zeros(1, next(iter(feats.values())).shape[1], *heads.mask_roi_pool.output_size)
            self.mask_size = int(self.mask_predictor(self.mask_head(pooled)).shape[-1])
        self.mask_pool = LevelRoIAlign(heads.mask_roi_pool, feats, probe[0])

    def _outputs(self, feats: "OrderedDict[str, Tensor]", padded: Tensor | None, detections: tuple,
                 image_sizes: Tensor, original_sizes: Tensor | None) -> tuple:
        num, boxes, scores, labels = detections  # boxes in network-input pixels, labels -1 for padding rows
        b, k = boxes.shape[0], boxes.shape[1]
        m = self.mask_size
        index = row_index(num, k)  # the branch on each image's first n rows only (module .rows)
        head_boxes, head_labels = gather_rows(boxes, index), gather_rows(labels, index)
        n = index.shape[1]
        pooled = self.mask_pool(feats, head_boxes, dynamic=self.dynamic, padded=padded, canvas=self.input_size)
        logits = self.mask_predictor(self.mask_head(pooled))  # [B·n, C, M, M]
        cls = torch.clamp(head_labels, min=0).to(torch.int64).reshape(b * n, 1, 1, 1).expand(b * n, 1, m, m)
        chosen = torch.gather(logits, 1, cls).reshape(b, n, m, m)
        found = (head_labels >= 0).reshape(b, n, 1, 1)
        probs = torch.where(found, torch.sigmoid(chosen), torch.zeros_like(chosen))
        original = scale_to_original(head_boxes, image_sizes, original_sizes)  # unclipped, as torchvision pastes
        corners = torch.where(found.reshape(b, n, 1), expand_to_corners(original, m),
                              torch.zeros(1, dtype=torch.int64)).to(torch.int32)
        outputs = (num, clip_to_sizes(scale_to_original(boxes, image_sizes, original_sizes), original_sizes), scores,
                   labels, scatter_rows(probs, index, k), scatter_rows(corners, index, k), index)
        if self.debug_outputs:
            outputs += (boxes, scatter_rows(chosen, index, k))
        return outputs
