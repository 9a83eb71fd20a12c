"""SPADE generator → ONNX with integer label maps in and every eval-time constant folded.

The exported graph computes what the upstream generator computes on the
upstream input, but takes compact integer maps and spends no arithmetic on
the one-hot encoding:

- **Inputs** ``label_map`` [B, H, W] (``uint8`` when every accepted raw label
  fits in a byte — all released configurations — else ``int32``),
  ``instance_map`` [B, H, W] ``int32`` for instance configurations, ``z``
  [B, z_dim] ``float32`` for VAE generators. 1 + 4 bytes per pixel instead of a
  ``semantic_nc``-channel float tensor (184 × 4 bytes per pixel for COCO).
- **Label mapping in the graph**: 255 → the dontcare channel; for ADE20K-style
  configurations (``label_minus_one``) raw 0 → dontcare and ``k`` → ``k - 1``. A raw
  value outside the accepted range acts as an all-zero one-hot column (the
  runtime rejects such maps before they get here).
- **Instance edge map in the graph**: 1 where a 4-neighbour has another id.
- **No one-hot tensor at all.** A 3×3 convolution over a one-hot map (plus the
  0/1 edge channel) is a table look-up: for each of the 9 taps, the weight column
  of the pixel's label (plus the edge column when it is an edge pixel). So each
  SPADE's ``mlp_shared`` conv and the first ``fc`` conv become 9 ``Gather``\\ s
  from a [rows, C] table, summed. Rows are ``label + n * edge`` with an extra
  all-zero row for the conv's zero padding. Nearest resizing of a one-hot map
  is the one-hot of the nearest-resized label map, so every resolution
  subsamples the integer map (a strided ``Slice``). This removes ~29% of the
  upstream MACs (55.6 of 191 GMAC for COCO 256×256).
- **Folded constants**: spectral norm (``weight_orig / σ``, ``σ = u·(W v)`` from
  the stored ``u``, ``v``, no power iteration); batch-norm statistics and ``1 + γ``
  folded into the γ/β convs, which run as one conv with ``2·norm_nc`` outputs:
  ``norm(x)·(1+γ)+β`` becomes ``x·Γ + Β`` with ``Γ = a(1+γ)``, ``Β = c(1+γ)+β``
  for ``norm(x) = a·x + c``. Instance norm stays an ``InstanceNormalization``.
- **Output** ``image`` [B, 3, H, W] ``float32`` in [-1, 1], or with
  ``output="uint8"`` [B, H, W, 3] ``uint8`` (``floor((y + 1) · 127.5 + 0.5)``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInput, expected_got
from ..models.spade import SPADE, SpadeConfig, SPADEGenerator, SPADEResnetBlock, build_spade

OUTPUTS = ("float", "uint8")
_TAPS = tuple((ky, kx) for ky in range(3) for kx in range(3))


# --------------------------------------------------------------------------- folding


def folded_conv_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The weight the conv uses in eval mode: spectral norm's ``weight_orig / (u · W v)``, or ``weight``."""
    if hasattr(conv, "weight_orig"):
        w = conv.weight_orig.detach()
        u, v = conv.weight_u.detach(), conv.weight_v.detach()
        sigma = torch.dot(u, torch.mv(w.reshape(w.shape[0], -1), v))
        return w / sigma
    return conv.weight.detach()


def _plain_conv(conv: nn.Conv2d) -> nn.Conv2d:
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                    bias=conv.bias is not None)
    with torch.no_grad():
        out.weight.copy_(folded_conv_weight(conv))
        if conv.bias is not None:
            out.bias.copy_(conv.bias.detach())
    return out


def onehot_conv_tables(weight: torch.Tensor, cfg: SpadeConfig) -> tuple[torch.Tensor, int]:
    """A 3×3 conv weight over the upstream input → per-tap look-up tables.

    ``weight`` [C, semantic_nc, 3, 3]. Returns ``tables`` [9, rows, C] and the
    padding row index. Row ``l + n·e`` (``n = onehot_nc + 1``; ``l`` a channel
    index, or ``onehot_nc`` for "no label"; ``e`` the edge bit) holds
    ``W[:, l, tap] + e · W[:, edge, tap]``; the last row is zero (zero padding).
    """
    w = weight.detach().double()
    c, _, kh, kw = w.shape
    if (kh, kw) != (3, 3):
        raise ValueError(f"one-hot conv: expected a 3x3 kernel, got {kh}x{kw}")
    n = cfg.onehot_nc + 1
    n_edge = 2 if cfg.use_instance else 1
    rows = n * n_edge + 1
    tables = torch.zeros(9, rows, c, dtype=torch.float64)
    for t, (ky, kx) in enumerate(_TAPS):
        lab = w[:, : cfg.onehot_nc, ky, kx].T  # [onehot_nc, C]
        tables[t, : cfg.onehot_nc] = lab
        if cfg.use_instance:
            edge = w[:, cfg.onehot_nc, ky, kx]  # [C]
            tables[t, n : n + cfg.onehot_nc] = lab + edge
            tables[t, n + cfg.onehot_nc] = edge  # "no label" pixel on an edge
    return tables.float(), rows - 1


class OneHotConv(nn.Module):
    """``conv3x3(onehot(index map)) + bias`` as one Gather over the 9 taps and a sum.

    Input: the tap indices [9, B, h, w] int32 of :meth:`SpadeExport.taps_at` (tap ``t``'s
    rows are offset by ``t · rows``). Output [B, C, h, w] float32. The bias is
    stored in tap 0's rows: every pixel reads exactly one of them.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, cfg: SpadeConfig, relu: bool):
        super().__init__()
        tables, _ = onehot_conv_tables(weight, cfg)
        if bias is not None:
            tables[0] += bias.detach().float()[None, :]
        self.register_buffer("table", tables.reshape(-1, tables.shape[-1]).contiguous())
        self.relu = relu

    def forward(self, taps: torch.Tensor) -> torch.Tensor:
        acc = F.embedding(taps, self.table).sum(dim=0)
        if self.relu:
            acc = torch.relu(acc)
        return acc.permute(0, 3, 1, 2)


class FoldedSPADE(nn.Module):
    """One SPADE module after folding: ``x · Γ(seg) + Β(seg)``."""

    def __init__(self, spade: SPADE, cfg: SpadeConfig):
        super().__init__()
        shared = spade.mlp_shared[0]
        self.mlp = OneHotConv(shared.weight, shared.bias, cfg, relu=True)
        wg, bg = spade.mlp_gamma.weight.detach().double(), spade.mlp_gamma.bias.detach().double()
        wb, bb = spade.mlp_beta.weight.detach().double(), spade.mlp_beta.bias.detach().double()
        bg = bg + 1.0  # 1 + gamma
        norm = spade.param_free_norm
        self.instance_norm = isinstance(norm, nn.InstanceNorm2d)
        if self.instance_norm:
            self.eps = float(norm.eps)
        else:
            # eval-mode batch norm without affine: a·x + c
            a = 1.0 / torch.sqrt(norm.running_var.detach().double() + norm.eps)
            c = -norm.running_mean.detach().double() * a
            wg, bg, wb, bb = (wg * a[:, None, None, None], bg * a,
                              wb + wg * c[:, None, None, None], bb + bg * c)
        self.norm_nc = wg.shape[0]
        # gamma and beta as two convs (one conv + Split costs a copy of both halves)
        self.gamma = nn.Conv2d(wg.shape[1], self.norm_nc, 3, padding=1)
        self.beta = nn.Conv2d(wg.shape[1], self.norm_nc, 3, padding=1)
        with torch.no_grad():
            self.gamma.weight.copy_(wg.float())
            self.gamma.bias.copy_(bg.float())
            self.beta.weight.copy_(wb.float())
            self.beta.bias.copy_(bb.float())

    def forward(self, x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        actv = self.mlp(taps)
        if self.instance_norm:
            x = F.instance_norm(x, eps=self.eps)
        return x * self.gamma(actv) + self.beta(actv)


class FoldedBlock(nn.Module):
    def __init__(self, block: SPADEResnetBlock, cfg: SpadeConfig):
        super().__init__()
        self.learned_shortcut = block.learned_shortcut
        self.conv_0 = _plain_conv(block.conv_0)
        self.conv_1 = _plain_conv(block.conv_1)
        self.norm_0 = FoldedSPADE(block.norm_0, cfg)
        self.norm_1 = FoldedSPADE(block.norm_1, cfg)
        if self.learned_shortcut:
            self.conv_s = _plain_conv(block.conv_s)
            self.norm_s = FoldedSPADE(block.norm_s, cfg)

    def forward(self, x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, taps)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, taps), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, taps), 0.2))
        return x_s + dx


# --------------------------------------------------------------------------- the graph


def label_dtype(cfg: SpadeConfig) -> torch.dtype:
    """uint8 when every accepted raw label (255 for dontcare included) fits in a byte, else int32."""
    hi = max(cfg.label_range[1], 255 if cfg.contain_dontcare_label else 0)
    return torch.uint8 if hi <= 255 else torch.int32


class SpadeExport(nn.Module):
    """Export-friendly SPADE generator built from a :class:`SPADEGenerator` (weights copied and folded).

    ``forward(label_map, [instance_map], [z])``: ``label_map`` [B, H, W] uint8/int32 raw
    labels; ``instance_map`` [B, H, W] int32 (instance configs); ``z`` [B, z_dim]
    float32 (VAE). Returns ``image`` [B, 3, H, W] float32 in [-1, 1], or
    [B, H, W, 3] uint8 with ``output="uint8"``.
    """

    def __init__(self, generator: SPADEGenerator, output: str = "float"):
        super().__init__()
        if output not in OUTPUTS:
            raise BadInput(expected_got("output", list(OUTPUTS), repr(output)))
        cfg = generator.cfg
        self.cfg = cfg
        self.output = output
        self.size = cfg.image_size
        self.sh, self.sw = generator.sh, generator.sw
        self.nf16 = 16 * cfg.ngf
        if cfg.use_vae:
            self.fc = nn.Linear(cfg.z_dim, generator.fc.out_features)
            self.fc.load_state_dict(generator.fc.state_dict())
        else:
            self.fc = OneHotConv(generator.fc.weight, generator.fc.bias, cfg, relu=False)
        names = ["head_0", "G_middle_0", "G_middle_1", "up_0", "up_1", "up_2", "up_3"]
        if cfg.num_upsampling_layers == "most":
            names.append("up_4")
        self.block_names = names
        for name in names:
            setattr(self, name, FoldedBlock(getattr(generator, name), cfg))
        self.conv_img = _plain_conv(generator.conv_img)
        self.n_rows = cfg.onehot_nc + 1  # label channels + "no label"

    # -- input encoding -------------------------------------------------------

    def encode(self, label_map: torch.Tensor, instance_map: torch.Tensor | None) -> torch.Tensor:
        """Raw maps → row index ``label + n · edge`` [B, H, W] int32 (see :func:`onehot_conv_tables`).

        Index arithmetic is int32 throughout: TensorRT gathers with int32 indices."""
        cfg = self.cfg
        # UINT8 converts only to/from float in TensorRT (DataType::kUINT8; onnx-tensorrt's Cast importer):
        # through float32, exact for 0..255
        raw = (label_map.to(torch.float32) if label_map.dtype == torch.uint8 else label_map).to(torch.int32)
        lo, hi = cfg.label_range
        valid = (raw >= lo) & (raw <= hi)
        if cfg.contain_dontcare_label:
            valid = valid | (raw == 255)
        if cfg.label_minus_one:
            lab = torch.where((raw == 0) | (raw == 255), torch.full_like(raw, cfg.label_nc), raw - 1)
        elif cfg.contain_dontcare_label:
            lab = torch.where(raw == 255, torch.full_like(raw, cfg.label_nc), raw)
        else:
            lab = raw
        lab = torch.where(valid, lab, torch.full_like(lab, cfg.onehot_nc))
        if not cfg.use_instance:
            return lab
        return lab + self.n_rows * self.edges(instance_map)

    @staticmethod
    def edges(instance_map: torch.Tensor) -> torch.Tensor:
        """[B, H, W] ids → [B, H, W] int32, 1 where a 4-neighbour has another id."""
        t = instance_map
        dx = (t[:, :, 1:] != t[:, :, :-1]).to(torch.int32)
        dy = (t[:, 1:, :] != t[:, :-1, :]).to(torch.int32)
        ex = torch.maximum(F.pad(dx, (1, 0)), F.pad(dx, (0, 1)))
        ey = torch.maximum(F.pad(dy, (0, 0, 1, 0)), F.pad(dy, (0, 0, 0, 1)))
        return torch.maximum(ex, ey)

    def taps_at(self, index: torch.Tensor, h: int) -> torch.Tensor:
        """Nearest-resize the row-index map to ``h`` rows (integer factor), pad by 1 with the
        zero row, and stack the 9 shifted views with tap ``t`` offset by ``t · rows``: [9, B, h, w]."""
        f = self.size[0] // h
        sub = index[:, ::f, ::f] if f > 1 else index
        w = sub.shape[2]
        padded = F.pad(sub, (1, 1, 1, 1), value=self.fc_pad_row)
        rows = self.fc_pad_row + 1
        return torch.stack([padded[:, ky : ky + h, kx : kx + w] + t * rows for t, (ky, kx) in enumerate(_TAPS)])

    @property
    def fc_pad_row(self) -> int:
        return self.n_rows * (2 if self.cfg.use_instance else 1)

    # -- forward ----------------------------------------------------------------

    def forward(self, label_map: torch.Tensor, instance_map: torch.Tensor | None = None,
                z: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        index = self.encode(label_map, instance_map)
        cache: dict[int, torch.Tensor] = {}

        def seg(h: int) -> torch.Tensor:
            if h not in cache:
                cache[h] = self.taps_at(index, h)
            return cache[h]

        if cfg.use_vae:
            x = self.fc(z).reshape(-1, self.nf16, self.sh, self.sw)
        else:
            x = self.fc(seg(self.sh))
        x = self.head_0(x, seg(x.shape[2]))
        x = up(x)
        x = self.G_middle_0(x, seg(x.shape[2]))
        if cfg.num_upsampling_layers in ("more", "most"):
            x = up(x)
        x = self.G_middle_1(x, seg(x.shape[2]))
        for name in self.block_names[3:]:
            x = up(x)
            x = getattr(self, name)(x, seg(x.shape[2]))
        x = torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))
        if self.output == "uint8":  # cast last: TensorRT cannot transpose UINT8 (an I/O-only type there)
            x = torch.floor((x + 1.0) * 127.5 + 0.5).clamp(0, 255).permute(0, 2, 3, 1).to(torch.uint8)
        return x


def up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class _LabelAndZ(nn.Module):
    """Positional ``(label_map, z)`` for VAE generators without instance maps (torch.export
    needs the graph inputs as exactly the forward's positional arguments)."""

    def __init__(self, inner: SpadeExport):
        super().__init__()
        self.inner = inner

    def forward(self, label_map: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.inner(label_map, None, z)


def for_export(module: SpadeExport) -> nn.Module:
    """The module whose positional inputs are :func:`input_names`."""
    cfg = module.cfg
    return _LabelAndZ(module) if cfg.use_vae and not cfg.use_instance else module


# --------------------------------------------------------------------------- export + manifest


def example_inputs(cfg: SpadeConfig, batch: int = 1) -> tuple[torch.Tensor, ...]:
    h, w = cfg.image_size
    ins: list[torch.Tensor] = [torch.zeros(batch, h, w, dtype=label_dtype(cfg))]
    if cfg.use_instance:
        ins.append(torch.zeros(batch, h, w, dtype=torch.int32))
    if cfg.use_vae:
        ins.append(torch.zeros(batch, cfg.z_dim, dtype=torch.float32))
    return tuple(ins)


def input_names(cfg: SpadeConfig) -> list[str]:
    return ["label_map"] + (["instance_map"] if cfg.use_instance else []) + (["z"] if cfg.use_vae else [])


def preprocessing(cfg: SpadeConfig) -> dict[str, Any]:
    """What a runtime needs to feed the graph (the manifest's ``preprocessing``)."""
    lo, hi = cfg.label_range
    return {
        "type": "spade-label-map",
        "label_nc": cfg.label_nc,
        "contain_dontcare_label": cfg.contain_dontcare_label,
        # raw values that select the dontcare channel
        "dontcare_values": ([0, 255] if cfg.label_minus_one else [255]) if cfg.contain_dontcare_label else [],
        # ADE20K loader convention: raw 0 is "unlabelled" (dontcare), raw k is class k - 1
        "label_minus_one": cfg.label_minus_one,
        "label_range": [lo, hi],
        "use_instance": cfg.use_instance,
        "input_size": list(cfg.image_size),
        "resize": "nearest",
        "input_dtypes": {"label_map": str(label_dtype(cfg)).removeprefix("torch."),
                         **({"instance_map": "int32"} if cfg.use_instance else {}),
                         **({"z": "float32"} if cfg.use_vae else {})},
        "use_vae": cfg.use_vae,
        "z_dim": cfg.z_dim if cfg.use_vae else None,
        "semantic_nc": cfg.semantic_nc,
    }


def export_spade(name: str, out_path: str | os.PathLike, *, checkpoint: str | None = None, batch: int = 1,
                 dynamic_batch: int | None = None, output: str = "float", opset: int = 18,
                 overrides: dict[str, Any] | None = None, module: SPADEGenerator | None = None) -> dict[str, Any]:
    """Export a SPADE generator to ``out_path`` (ONNX) and write its manifest beside it.

    ``name``: ``spade_coco``/``spade_ade20k``/``spade_cityscapes``/``spade_demo``.
    ``checkpoint``: an upstream ``latest_net_G.pth``; ``None`` → the committed demo
    checkpoint for ``spade_demo``, random (seeded) weights for the others.
    ``batch``: the static batch (or the optimal batch with ``dynamic_batch``);
    ``dynamic_batch``: largest batch of a dynamic batch axis, or ``None`` for static.
    ``output``: ``"float"`` ([B,3,H,W] in [-1,1]) or ``"uint8"`` ([B,H,W,3]).
    ``module``: an already built generator to export instead of building one
    (tests). Returns the manifest dict.
    """
    from ..fileio import sha256_file
    from ..manifest import write_artifact
    from .onnx_export import export_module, save_model, versions

    if output not in OUTPUTS:
        raise BadInput(expected_got("output", list(OUTPUTS), repr(output)))
    if batch < 1:
        raise BadInput(expected_got("batch", ">= 1", batch))
    if dynamic_batch is not None and dynamic_batch < batch:
        raise BadInput(expected_got("dynamic_batch", f">= batch ({batch})", dynamic_batch))
    overrides = dict(overrides or {})
    if module is None:
        with torch.random.fork_rng():  # random weights (no checkpoint) are reproducible; caller's RNG untouched
            torch.manual_seed(0)
            module = build_spade(name, checkpoint, **overrides)
        if checkpoint is None and name in ("demo", "spade_demo") and not overrides:
            from ..models.spade import default_demo_checkpoint

            checkpoint = default_demo_checkpoint()
    cfg = module.cfg
    with torch.random.fork_rng():  # building the folded convs draws (discarded) initial weights
        wrapper = for_export(SpadeExport(module.eval(), output=output).eval())
    names = input_names(cfg)
    # a dynamic axis must not be traced at size 1 (torch.export specialises 0/1 sizes)
    traced_batch = batch if dynamic_batch is None else max(batch, 2)
    onnx_model = export_module(wrapper, example_inputs(cfg, traced_batch), None, input_names=names,
                               output_names=["image"], dynamic_batch=dynamic_batch, opset=opset)
    bdim: int | str = "batch" if dynamic_batch is not None else batch
    h, w = cfg.image_size
    ldt = str(label_dtype(cfg)).removeprefix("torch.")
    inputs = [{"name": "label_map", "dtype": ldt, "shape": [bdim, h, w]}]
    if cfg.use_instance:
        inputs.append({"name": "instance_map", "dtype": "int32", "shape": [bdim, h, w]})
    if cfg.use_vae:
        inputs.append({"name": "z", "dtype": "float32", "shape": [bdim, cfg.z_dim]})
    if output == "float":
        outputs = [{"name": "image", "dtype": "float32", "shape": [bdim, 3, h, w]}]
    else:
        outputs = [{"name": "image", "dtype": "uint8", "shape": [bdim, h, w, 3]}]
    manifest = {
        "kind": "generator",
        "artifact": {"format": "onnx"},
        "model": {
            "name": name if name.startswith("spade_") else f"spade_{name}",
            "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
            "overrides": overrides,
            "config": cfg.to_dict(),
        },
        "inputs": inputs,
        "outputs": outputs,
        "batch": {"dynamic": dynamic_batch is not None, "min": 1 if dynamic_batch is not None else batch,
                  "opt": batch, "max": dynamic_batch if dynamic_batch is not None else batch},
        "preprocessing": preprocessing(cfg),
        "postprocessing": {"output": output, "layout": "NCHW" if output == "float" else "NHWC",
                           "range": [-1.0, 1.0] if output == "float" else [0, 255],
                           "to_uint8": "floor((y + 1) * 127.5 + 0.5)"},
        "precision": {"mode": "fp32"},
        "versions": versions(opset),
    }
    write_artifact(out_path, lambda staged: save_model(onnx_model, staged), manifest)  # published together
    return manifest
