"""torchvision's ``MultiScaleRoIAlign`` as one ONNX ``RoiAlign`` over a mosaic of the FPN levels.

Each RoI's level is picked with the FPN rule torchvision's ``LevelMapper`` uses, as plain tensor
arithmetic (no ``If`` nodes: TensorRT users hit them in torchvision's own level mapping); every
level map is placed in one mosaic tensor and each RoI is mapped into its level's tile (scale, then
offset), so RoiAlign runs once per RoI instead of once per RoI and level.

:class:`LevelRoIAlign` holds one pooler's layout (the box head's 7×7, Mask R-CNN's 14×14).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torchvision
from torch import Tensor

from .padding import replicate_border


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


class LevelRoIAlign:
    """One torchvision ``MultiScaleRoIAlign``'s layout, read off the model and a probe of the features.

    Args:
        pool: the torchvision ``MultiScaleRoIAlign`` (``box_roi_pool`` or ``mask_roi_pool``).
        feats: the backbone's feature maps for a probe image of ``probe_height`` rows.

    Scales and the level range are those torchvision infers for a normal-size image
    (``2 ** round(log2(feature_h / image_h))`` = 1/stride). torchvision's ``MultiScaleRoIAlign``
    infers its scales on the first batch it sees and keeps them (``self.scales`` is cached), so a
    model in use pools with the scales of its first image: 1/stride unless that image was
    resized to under ~75 pixels high.
    """

    def __init__(self, pool, feats: "OrderedDict[str, Tensor]", probe_height: int) -> None:
        # MultiScaleRoIAlign keeps the backbone's levels whose names it lists, in the backbone's order
        self.names = [k for k in feats if k in pool.featmap_names]
        pooled = [feats[n] for n in self.names]
        self.scales = [2.0 ** round(math.log2(f.shape[-2] / probe_height)) for f in pooled]
        self.k_min = int(-math.log2(self.scales[0]))
        self.k_max = int(-math.log2(self.scales[-1]))
        self.output = tuple(pool.output_size)
        self.sampling = int(pool.sampling_ratio)
        self.canonical_scale = float(getattr(pool, "canonical_scale", 224))
        self.canonical_level = float(getattr(pool, "canonical_level", 4))

    def __call__(self, feats: "OrderedDict[str, Tensor]", boxes: Tensor, *, dynamic: bool,
                 padded: Tensor | None = None, canvas: tuple[int, int] | None = None) -> Tensor:
        """Pool ``boxes`` [B, P, 4] (x1, y1, x2, y2 in network-input pixels) -> [B·P, C, *output].

        Fixed canvas (``dynamic=False``): the tiles sit side by side at offsets known at export time;
        with the canvas's padding emulation (``padded`` [B, 2], the per-image padded size) each map
        first gets torchvision's clamped border. Dynamic size: the layout follows the shapes
        (:func:`_corner_mosaic`).
        """
        b, p = boxes.shape[0], boxes.shape[1]
        maps = [feats[name] for name in self.names]
        if padded is not None:  # the fixed canvas's padding emulation (never in dynamic graphs)
            h, w = canvas
            maps = [replicate_border(f, padded[:, 0] * (f.shape[-2] / h), padded[:, 1] * (f.shape[-1] / w))
                    for f in maps]
        flat = boxes.reshape(b * p, 4)
        # (not repeat_interleave: its ONNX translation expands to the wrong shape when p is data-dependent)
        batch_idx = torch.arange(b, dtype=flat.dtype).reshape(b, 1).expand(b, p).reshape(b * p, 1)
        if len(maps) == 1 or self.k_min == self.k_max:  # one level receives every RoI
            rois = torch.cat([batch_idx, flat], dim=1)
            return torchvision.ops.roi_align(maps[0], rois, self.output, spatial_scale=self.scales[0],
                                             sampling_ratio=self.sampling, aligned=False)
        area = (flat[:, 2] - flat[:, 0]) * (flat[:, 3] - flat[:, 1])
        lvl = torch.floor(self.canonical_level + torch.log2(torch.sqrt(area) / self.canonical_scale) + 1e-6)
        lvl = (torch.clamp(lvl, min=self.k_min, max=self.k_max) - self.k_min).to(torch.int64)
        scale = torch.tensor(self.scales, dtype=flat.dtype)[lvl].unsqueeze(1)  # [R, 1]
        if dynamic:
            mosaic, left, top = _corner_mosaic(maps)
            x0, y0 = left[lvl].unsqueeze(1), top[lvl].unsqueeze(1)
        else:
            mosaic, offsets = _mosaic(maps)
            off = torch.tensor(offsets, dtype=flat.dtype)[lvl]  # [R, 2] = (x, y)
            x0, y0 = off[:, :1], off[:, 1:]
        rois = torch.cat([batch_idx, flat * scale + torch.cat([x0, y0, x0, y0], dim=1)], dim=1)
        return torchvision.ops.roi_align(mosaic, rois, self.output, spatial_scale=1.0,
                                         sampling_ratio=self.sampling, aligned=False)
