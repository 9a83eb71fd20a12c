"""Emulating torchvision's per-image padding (to a multiple of 32) inside a fixed canvas.

torchvision pads each image only to the next multiple of ``size_divisible``, while a fixed-canvas
graph always runs at the canvas size: :class:`PaddingEmulation` makes the canvas behave exactly
like that smaller padded image (convolutions see zeros beyond it, global means count only it), and
:func:`replicate_border` gives RoIAlign torchvision's clamped border. Dynamic-size graphs run at
torchvision's own padded size and need none of this.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


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


def replicate_border(f: Tensor, valid_h: Tensor, valid_w: Tensor) -> Tensor:
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


