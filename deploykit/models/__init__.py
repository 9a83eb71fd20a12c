"""PyTorch side: the model registry.

``build(name, checkpoint=None, **overrides)`` returns the reference
``torch.nn.Module`` in eval mode, unmodified (torchvision's or SPADE's own
forward). Checkpoints load with ``torch.load(..., weights_only=True)`` and
strictly: a checkpoint that does not fit lists its missing and unexpected keys.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInput, expected_got

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: how to build it and what it is."""

    name: str
    family: str  # "detector" | "generator"
    builder: str  # "module:function", imported lazily
    default_size: tuple[int, int] | None = None  # (H, W) canvas used for export
    bundled_checkpoint: str | None = None  # file name in deploykit/models/checkpoints
    builder_kwargs: dict[str, Any] = field(default_factory=dict)

    def resolve(self) -> Callable[..., Any]:
        mod, fn = self.builder.split(":")
        return getattr(importlib.import_module(mod, __name__), fn)


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry


for _name, _size in [
    ("fasterrcnn_resnet50_fpn", (800, 800)),
    ("fasterrcnn_resnet50_fpn_v2", (800, 800)),
    ("fasterrcnn_mobilenet_v3_large_fpn", (800, 800)),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", (320, 320)),
    ("fasterrcnn_vgg16", (608, 608)),
    ("maskrcnn_resnet50_fpn", (800, 800)),
    ("maskrcnn_resnet50_fpn_v2", (800, 800)),
]:
    register(ModelEntry(_name, "detector", f".fasterrcnn:build_{_name}", _size))
register(ModelEntry("fasterrcnn_demo", "detector", ".demo_detector:build_demo_detector", (320, 320),
                    bundled_checkpoint="fasterrcnn_demo.pt"))
register(ModelEntry("maskrcnn_demo", "detector", ".demo_detector:build_demo_maskrcnn", (320, 320),
                    bundled_checkpoint="maskrcnn_demo.pt"))
for _cfg in ("coco", "ade20k", "cityscapes", "demo"):
    register(ModelEntry(f"spade_{_cfg}", "generator", ".spade:build_spade", None,
                        bundled_checkpoint="spade_demo.pt" if _cfg == "demo" else None,
                        builder_kwargs={"config": _cfg}))


def names(family: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)


def entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInput(expected_got("model name", "one of " + ", ".join(names()), repr(name))) from None


def load_state_dict(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)``; unwraps ``{"model": sd}`` / ``{"state_dict": sd}``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise BadInput(expected_got(f"checkpoint {path}", "an existing file", "no such file"))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInput(expected_got(f"checkpoint {path}", "a torch state dict loadable with weights_only=True",
                                    first[:200])) from None
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise BadInput(expected_got(f"checkpoint {path}", "a state dict (mapping of names to tensors)",
                                    type(sd).__name__))
    return sd


def apply_state_dict(model, sd: dict, source: str) -> None:
    """Strict load with a one-line error listing missing/unexpected/mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)}≠{tuple(own[k].shape)}" for k in own
              if k in sd and hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def short(xs):
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys [{short(missing)}]")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys [{short(unexpected)}]")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches [{short(shapes)}]")
        raise BadInput(expected_got(f"checkpoint {source}", f"a state dict for {type(model).__name__}",
                                    "; ".join(parts)))
    model.load_state_dict(sd, strict=True)


def build(name: str, checkpoint: str | os.PathLike | None = None, **overrides):
    """Build the reference model ``name`` in eval mode.

    ``checkpoint``: a state dict file (torchvision's COCO ``.pth``, NVlabs SPADE
    ``latest_net_G.pth``, or a deploykit demo checkpoint). Without one, demo models
    load their bundled checkpoint and the others keep random weights. For Faster
    R-CNN, ``num_classes`` is read from the checkpoint unless overridden.
    ``overrides`` go to the builder (e.g. ``min_size=320, max_size=320`` or
    ``box_score_thresh=0.0`` for torchvision models; ``label_nc=..`` for SPADE).
    """
    e = entry(name)
    sd = None
    source = None
    if checkpoint is None and e.bundled_checkpoint and (CHECKPOINT_DIR / e.bundled_checkpoint).is_file():
        checkpoint = CHECKPOINT_DIR / e.bundled_checkpoint
    if checkpoint is not None:
        source = str(checkpoint)
        sd = load_state_dict(checkpoint)
        if e.family == "detector" and "num_classes" not in overrides:
            from .fasterrcnn import num_classes_in

            n = num_classes_in(sd)
            if n is not None:
                overrides["num_classes"] = n
    try:
        model = e.resolve()(**e.builder_kwargs, **overrides)
    except TypeError as err:
        raise BadInput(expected_got(f"overrides for {name}", "arguments its builder accepts", str(err))) from None
    if sd is not None:
        apply_state_dict(model, sd, source)
    return model.eval()


def resolve_checkpoint(name: str, checkpoint: str | os.PathLike | None) -> Path | None:
    """The checkpoint ``build`` would load for ``name`` (bundled one for demo models)."""
    e = entry(name)
    if checkpoint is not None:
        return Path(checkpoint)
    if e.bundled_checkpoint and (CHECKPOINT_DIR / e.bundled_checkpoint).is_file():
        return CHECKPOINT_DIR / e.bundled_checkpoint
    return None


__all__ = ["build", "names", "entry", "register", "ModelEntry", "load_state_dict", "apply_state_dict",
           "resolve_checkpoint", "CHECKPOINT_DIR"]
