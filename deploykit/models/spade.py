"""SPADE generator (Park et al., CVPR 2019) with the NVlabs/SPADE module names.

The module tree and state-dict keys equal the upstream generator's, so a
released ``latest_net_G.pth`` loads with ``strict=True``: spectral norm is
``torch.nn.utils.spectral_norm`` (``weight_orig``/``weight_u``/``weight_v``)
and the parameter-free norms keep their running statistics.

The forward is the upstream eval-mode computation, unmodified: the caller
passes the upstream input (one-hot labels, a dontcare channel, an instance
edge map as the last channel; see :func:`preprocess_upstream`), every SPADE
module resizes it (nearest) to its activation's size, modulates with
``1 + gamma`` and ``beta``; leaky ReLU 0.2 and a final tanh.

This module is the PyTorch reference. The export-friendly form (spectral norm
and batch norm folded, integer label maps in) lives in
:mod:`deploykit.export.spade`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from ..errors import BadInput, expected_got

UPSAMPLING_LAYERS = {"normal": 5, "more": 6, "most": 7}
NORMS = ("instance", "batch", "syncbatch")


@dataclass(frozen=True)
class SpadeConfig:
    """Generator options, named as NVlabs/SPADE's command-line options where they exist.

    ``label_minus_one`` is ADE20K's loader convention: raw label 0 is
    "unlabelled" (mapped to the dontcare channel) and raw ``k`` is class ``k-1``.
    ``spade_hidden`` is upstream's fixed ``nhidden = 128``; only the demo changes it.
    """

    label_nc: int
    contain_dontcare_label: bool
    use_instance: bool
    crop_size: int
    aspect_ratio: float
    num_upsampling_layers: str = "normal"
    ngf: int = 64
    norm: str = "syncbatch"
    use_vae: bool = False
    z_dim: int = 256
    label_minus_one: bool = False
    spade_hidden: int = 128

    @property
    def semantic_nc(self) -> int:
        return self.label_nc + int(self.contain_dontcare_label) + int(self.use_instance)

    @property
    def onehot_nc(self) -> int:
        """Label channels of the one-hot (dontcare included, edge map excluded)."""
        return self.label_nc + int(self.contain_dontcare_label)

    @property
    def latent_size(self) -> tuple[int, int]:
        """``(sh, sw)``: the size of the first activation (upstream ``compute_latent_vector_size``)."""
        sw = self.crop_size // 2 ** UPSAMPLING_LAYERS[self.num_upsampling_layers]
        sh = round(sw / self.aspect_ratio)
        return sh, sw

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the generated image, and of the label map the generator takes."""
        sh, sw = self.latent_size
        f = 2 ** UPSAMPLING_LAYERS[self.num_upsampling_layers]
        return sh * f, sw * f

    @property
    def label_range(self) -> tuple[int, ...]:
        """Raw label values accepted: ``0..max_label`` plus 255 when there is a dontcare channel."""
        hi = self.label_nc if self.label_minus_one else self.label_nc - 1
        return (0, hi)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SPADE_CONFIGS: dict[str, SpadeConfig] = {
    # COCO-Stuff: 182 classes + dontcare + instance edges, 256x256.
    "coco": SpadeConfig(label_nc=182, contain_dontcare_label=True, use_instance=True,
                        crop_size=256, aspect_ratio=1.0),
    # ADE20K: 150 classes + dontcare (raw 0), no instances, 256x256.
    "ade20k": SpadeConfig(label_nc=150, contain_dontcare_label=True, use_instance=False,
                          crop_size=256, aspect_ratio=1.0, label_minus_one=True),
    # Cityscapes: 35 classes, no dontcare, instance edges, 512x256, one more upsampling.
    "cityscapes": SpadeConfig(label_nc=35, contain_dontcare_label=False, use_instance=True,
                              crop_size=512, aspect_ratio=2.0, num_upsampling_layers="more"),
    # Demo: the same architecture at small width, trained in the project (spade_demo_data).
    "demo": SpadeConfig(label_nc=10, contain_dontcare_label=True, use_instance=True,
                        crop_size=128, aspect_ratio=1.0, ngf=12, spade_hidden=32),
}

# Override names users may pass; "crop_size"/"aspect_ratio" also accept the short forms.
_OVERRIDE_ALIASES = {"size": "crop_size", "aspect": "aspect_ratio", "norm_G": "norm"}


def spade_config(config: str | SpadeConfig, **overrides: Any) -> SpadeConfig:
    """Resolve a config name (``coco``/``ade20k``/``cityscapes``/``demo``, optionally
    prefixed ``spade_``) and apply overrides; raises :class:`BadInput` on unknown
    names or invalid values."""
    if isinstance(config, SpadeConfig):
        base = config
    else:
        key = config[len("spade_"):] if config.startswith("spade_") else config
        if key not in SPADE_CONFIGS:
            raise BadInput(expected_got("SPADE config", f"one of {sorted(SPADE_CONFIGS)}", repr(config)))
        base = SPADE_CONFIGS[key]
    known = {f.name for f in fields(SpadeConfig)}
    clean = {}
    for k, v in overrides.items():
        k = _OVERRIDE_ALIASES.get(k, k)
        if k not in known:
            raise BadInput(expected_got("SPADE override", f"one of {sorted(known)}", repr(k)))
        clean[k] = v
    if isinstance(clean.get("norm"), str) and clean["norm"].startswith("spectralspade"):
        # accept upstream's norm_G spelling, e.g. "spectralspadesyncbatch3x3"
        clean["norm"] = clean["norm"][len("spectralspade"):].removesuffix("3x3")
    cfg = replace(base, **clean)
    _validate(cfg)
    return cfg


def _validate(cfg: SpadeConfig) -> None:
    if cfg.num_upsampling_layers not in UPSAMPLING_LAYERS:
        raise BadInput(expected_got("num_upsampling_layers", sorted(UPSAMPLING_LAYERS),
                                    repr(cfg.num_upsampling_layers)))
    if cfg.norm not in NORMS:
        raise BadInput(expected_got("norm", list(NORMS), repr(cfg.norm)))
    if not (isinstance(cfg.label_nc, int) and cfg.label_nc >= 1):
        raise BadInput(expected_got("label_nc", "an integer >= 1", repr(cfg.label_nc)))
    if cfg.ngf < 2 or cfg.ngf % 2:
        raise BadInput(expected_got("ngf", "an even integer >= 2", repr(cfg.ngf)))
    if cfg.aspect_ratio <= 0:
        raise BadInput(expected_got("aspect_ratio", "> 0", repr(cfg.aspect_ratio)))
    sh, sw = cfg.latent_size
    if sh < 1 or sw < 1:
        n = 2 ** UPSAMPLING_LAYERS[cfg.num_upsampling_layers]
        raise BadInput(expected_got(
            "crop_size", f"at least {n} (x aspect ratio) for num_upsampling_layers={cfg.num_upsampling_layers!r}",
            f"crop_size={cfg.crop_size}, aspect_ratio={cfg.aspect_ratio} (latent {sh}x{sw})"))
    if cfg.label_minus_one and not cfg.contain_dontcare_label:
        raise BadInput(expected_got("label_minus_one", "contain_dontcare_label=True (raw 0 maps to dontcare)",
                                    "contain_dontcare_label=False"))
    if cfg.use_vae and cfg.z_dim < 1:
        raise BadInput(expected_got("z_dim", ">= 1", repr(cfg.z_dim)))


# --------------------------------------------------------------------------- modules


class SPADE(nn.Module):
    """Spatially-adaptive normalization: ``norm(x) * (1 + gamma(seg)) + beta(seg)``.

    ``x`` [B, norm_nc, h, w]; ``segmap`` [B, label_nc, H, W] float, resized (nearest) to h×w.
    """

    def __init__(self, norm: str, norm_nc: int, label_nc: int, nhidden: int = 128):
        super().__init__()
        if norm == "instance":
            self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        else:  # "batch" and "syncbatch": SyncBatchNorm equals BatchNorm2d in eval
            self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, nhidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(nhidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(nhidden, norm_nc, 3, padding=1)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        segmap = F.interpolate(segmap, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(segmap)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """Residual block with SPADE before each conv; learned 1×1 shortcut when ``fin != fout``."""

    def __init__(self, fin: int, fout: int, cfg: SpadeConfig):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = spectral_norm(nn.Conv2d(fin, fmiddle, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(fmiddle, fout, 3, padding=1))
        if self.learned_shortcut:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
        sem, hid = cfg.semantic_nc, cfg.spade_hidden
        self.norm_0 = SPADE(cfg.norm, fin, sem, hid)
        self.norm_1 = SPADE(cfg.norm, fmiddle, sem, hid)
        if self.learned_shortcut:
            self.norm_s = SPADE(cfg.norm, fin, sem, hid)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(actvn(self.norm_0(x, seg)))
        dx = self.conv_1(actvn(self.norm_1(dx, seg)))
        return x_s + dx


def actvn(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class SPADEGenerator(nn.Module):
    """The SPADE generator. ``forward(seg, z=None)`` → image [B, 3, H, W] in [-1, 1].

    ``seg`` [B, semantic_nc, H, W] float32 is the upstream input (see
    :func:`preprocess_upstream`); ``z`` [B, z_dim] is required when ``use_vae``.
    """

    def __init__(self, cfg: SpadeConfig):
        super().__init__()
        self.cfg = cfg
        nf = cfg.ngf
        self.sh, self.sw = cfg.latent_size
        if cfg.use_vae:
            self.fc = nn.Linear(cfg.z_dim, 16 * nf * self.sh * self.sw)
        else:
            self.fc = nn.Conv2d(cfg.semantic_nc, 16 * nf, 3, padding=1)
        self.head_0 = SPADEResnetBlock(16 * nf, 16 * nf, cfg)
        self.G_middle_0 = SPADEResnetBlock(16 * nf, 16 * nf, cfg)
        self.G_middle_1 = SPADEResnetBlock(16 * nf, 16 * nf, cfg)
        self.up_0 = SPADEResnetBlock(16 * nf, 8 * nf, cfg)
        self.up_1 = SPADEResnetBlock(8 * nf, 4 * nf, cfg)
        self.up_2 = SPADEResnetBlock(4 * nf, 2 * nf, cfg)
        self.up_3 = SPADEResnetBlock(2 * nf, 1 * nf, cfg)
        final_nc = nf
        if cfg.num_upsampling_layers == "most":
            self.up_4 = SPADEResnetBlock(1 * nf, nf // 2, cfg)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, seg: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        if cfg.use_vae:
            if z is None:
                z = torch.randn(seg.shape[0], cfg.z_dim, dtype=seg.dtype, device=seg.device)
            x = self.fc(z).view(-1, 16 * cfg.ngf, self.sh, self.sw)
        else:
            x = self.fc(F.interpolate(seg, size=(self.sh, self.sw)))
        x = self.head_0(x, seg)
        x = self.up(x)
        x = self.G_middle_0(x, seg)
        if cfg.num_upsampling_layers in ("more", "most"):
            x = self.up(x)
        x = self.G_middle_1(x, seg)
        for name in ("up_0", "up_1", "up_2", "up_3"):
            x = self.up(x)
            x = getattr(self, name)(x, seg)
        if cfg.num_upsampling_layers == "most":
            x = self.up(x)
            x = self.up_4(x, seg)
        x = self.conv_img(actvn(x))
        return torch.tanh(x)


def build_spade(config: str | SpadeConfig = "coco", checkpoint: str | None = None, **overrides: Any) -> SPADEGenerator:
    """Build a SPADE generator in eval mode.

    ``config``: ``coco``, ``ade20k``, ``cityscapes``, ``demo`` (``spade_`` prefix allowed).
    ``checkpoint``: an upstream-format state dict (``latest_net_G.pth``) or
    ``None``; ``None`` for ``demo`` loads the committed demo checkpoint, for the
    others leaves random weights. ``overrides``: any :class:`SpadeConfig` field
    (``label_nc``, ``contain_dontcare_label``, ``use_instance``, ``crop_size``,
    ``aspect_ratio``, ``ngf``, ``num_upsampling_layers``, ``norm``, ``use_vae``, ``z_dim``).
    Random weights are seeded by the caller's torch RNG.
    """
    cfg = spade_config(config, **overrides)
    model = SPADEGenerator(cfg)
    if checkpoint is None and _is_demo(config) and not overrides:
        checkpoint = default_demo_checkpoint()
    if checkpoint is not None:
        load_upstream_state_dict(model, checkpoint)
    return model.eval()


def _is_demo(config: str | SpadeConfig) -> bool:
    return isinstance(config, str) and config in ("demo", "spade_demo")


def default_demo_checkpoint() -> str | None:
    """Path of the committed demo checkpoint, or None when it has not been trained yet."""
    from pathlib import Path

    p = Path(__file__).with_name("checkpoints") / "spade_demo.pt"
    return str(p) if p.is_file() else None


def load_upstream_state_dict(model: SPADEGenerator, checkpoint: str | dict) -> SPADEGenerator:
    """Load an upstream ``latest_net_G.pth`` (or a state dict) strictly; errors name the key."""
    if isinstance(checkpoint, dict):
        sd = checkpoint
    else:
        try:
            sd = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise BadInput(expected_got("checkpoint", "an existing file", repr(str(checkpoint)))) from None
        except Exception as e:  # pickle/zip errors: one line for the user
            raise BadInput(expected_got(f"checkpoint {checkpoint}", "a torch.save'd state dict",
                                        f"{type(e).__name__}: {e}".splitlines()[0])) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        hint = ""
        if any(k.startswith("module.") for k in unexpected):
            hint = " (keys start with 'module.': saved from DataParallel; strip the prefix)"
        raise BadInput(expected_got(
            f"checkpoint state dict for {_describe(model.cfg)}", "the upstream generator's keys",
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}){hint}"))
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise BadInput(expected_got(
                f"checkpoint tensor {k}", f"shape {tuple(v.shape)}",
                f"{tuple(sd[k].shape)} (label_nc, ngf, crop size or use_instance differ from the checkpoint's)"))
    model.load_state_dict(sd, strict=True)
    return model


def _describe(cfg: SpadeConfig) -> str:
    return (f"label_nc={cfg.label_nc}, dontcare={cfg.contain_dontcare_label}, "
            f"instance={cfg.use_instance}, ngf={cfg.ngf}")


# --------------------------------------------------------------------------- preprocessing


def map_labels(label_map: torch.Tensor, cfg: SpadeConfig) -> torch.Tensor:
    """Raw label values → channel indices, as the upstream data loaders do.

    255 → ``label_nc`` (the dontcare channel); with ``label_minus_one`` (ADE20K)
    raw 0 → dontcare and ``k`` → ``k - 1``. Values outside the accepted range
    raise :class:`BadInput` naming the value.
    """
    raw = label_map.long()
    lo, hi = cfg.label_range
    bad = (raw < lo) | (raw > hi)
    if cfg.contain_dontcare_label:
        bad &= raw != 255
    if bool(bad.any()):
        v = int(raw.reshape(-1)[bad.reshape(-1).nonzero()[0, 0]])
        allowed = f"{lo}..{hi}" + (" or 255" if cfg.contain_dontcare_label else "")
        raise BadInput(expected_got("label value", allowed, v))
    if cfg.label_minus_one:
        dontcare = (raw == 0) | (raw == 255)
        return torch.where(dontcare, torch.full_like(raw, cfg.label_nc), raw - 1)
    if cfg.contain_dontcare_label:
        return torch.where(raw == 255, torch.full_like(raw, cfg.label_nc), raw)
    return raw


def instance_edges(instance_map: torch.Tensor) -> torch.Tensor:
    """[B, H, W] ids → [B, 1, H, W] float: 1 where a 4-neighbour has another id, else 0."""
    t = instance_map
    edge = torch.zeros(t.shape, dtype=torch.bool, device=t.device)
    dx = t[:, :, 1:] != t[:, :, :-1]
    dy = t[:, 1:, :] != t[:, :-1, :]
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    edge[:, 1:, :] |= dy
    edge[:, :-1, :] |= dy
    return edge.unsqueeze(1).float()


def preprocess_upstream(label_map: Any, instance_map: Any = None,
                        config: str | SpadeConfig = "coco", **overrides: Any) -> torch.Tensor:
    """The upstream generator input: one-hot labels (+ dontcare) and the instance edge map.

    ``label_map``: [H, W] or [B, H, W] integer raw labels (numpy or tensor);
    ``instance_map``: same shape, integer instance ids, required when the config
    uses instances. Returns [B, semantic_nc, H, W] float32. The maps are used at
    the size given (resize them beforehand with nearest, as upstream does).
    """
    cfg = spade_config(config, **overrides)
    lab = torch.as_tensor(label_map)
    if lab.dim() == 2:
        lab = lab[None]
    if lab.dim() != 3:
        raise BadInput(expected_got("label_map", "[H, W] or [B, H, W]", tuple(lab.shape)))
    idx = map_labels(lab, cfg)
    b, h, w = idx.shape
    onehot = torch.zeros(b, cfg.onehot_nc, h, w, dtype=torch.float32)
    onehot.scatter_(1, idx[:, None], 1.0)
    if not cfg.use_instance:
        return onehot
    if instance_map is None:
        raise BadInput(expected_got("instance_map", "an instance map (this config uses instance edges)", None))
    inst = torch.as_tensor(instance_map)
    if inst.dim() == 2:
        inst = inst[None]
    if tuple(inst.shape) != tuple(lab.shape):
        raise BadInput(expected_got("instance_map shape", tuple(lab.shape), tuple(inst.shape)))
    return torch.cat([onehot, instance_edges(inst.long())], dim=1)


def upstream_state_dict_spec(config: str | SpadeConfig = "coco", **overrides: Any) -> dict[str, tuple[int, ...]]:
    """Key → shape of the upstream state dict for a config (what ``latest_net_G.pth`` holds)."""
    with torch.device("meta"):
        model = SPADEGenerator(spade_config(config, **overrides))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@torch.no_grad()
def calibrate_random_weights(model: SPADEGenerator, seg: torch.Tensor, z: torch.Tensor | None = None,
                             output_std: float = 0.6) -> SPADEGenerator:
    """Make a randomly initialised generator behave like a trained one, for tests and benchmarks.

    Freshly initialised weights multiply activations by ``1 + gamma`` in every
    SPADE module, so activations grow without bound and tanh saturates, which
    hides any error. This sets every batch norm's running statistics to the
    statistics of ``seg`` (one train-mode pass with cumulative averaging; spectral
    norm does one power iteration there, as in training) and scales ``conv_img``
    so the pre-tanh output has standard deviation ``output_std``. Returns the
    model in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration pass
    model.train()
    model(seg, z)
    for bn in bns:
        bn.momentum = 0.1
    return scale_output(model.eval(), seg, z, output_std)


@torch.no_grad()
def scale_output(model: SPADEGenerator, seg: torch.Tensor, z: torch.Tensor | None = None,
                 output_std: float = 0.6) -> SPADEGenerator:
    """Scale ``conv_img`` so the pre-tanh output on ``seg`` has standard deviation ``output_std``
    (keeps tanh out of saturation, so comparisons of random-weight generators mean something)."""
    pre: dict[str, torch.Tensor] = {}
    hook = model.conv_img.register_forward_hook(lambda m, i, o: pre.__setitem__("o", o))
    model(seg, z)
    hook.remove()
    std = float(pre["o"].std())
    if std > 0:
        model.conv_img.weight.mul_(output_std / std)
        model.conv_img.bias.mul_(output_std / std)
    return model
