"""SPADE generator runtime: a label map (and instance map) in, an H×W×3 uint8 image out.

No torch here: everything the graph needs to be fed is in the manifest's
``preprocessing`` (written by :func:`deploykit.export.spade.export_spade`).
The graph itself does the one-hot encoding, the dontcare mapping and the
instance edge map; this module checks the user's maps (size, dtype, label
range) and turns the output into uint8 pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BadInput, expected_got
from ..manifest import json_text
from .backends import load
from .session import OwnsSession


def to_uint8_image(image: np.ndarray) -> np.ndarray:
    """[3, H, W] float in [-1, 1] → [H, W, 3] uint8: ``floor((y + 1) · 127.5 + 0.5)``, clipped."""
    x = np.floor((np.clip(image, -1.0, 1.0).astype(np.float32) + 1.0) * 127.5 + 0.5)
    return np.clip(x, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an integer map to ``size`` = (H, W) with nearest, as PIL's ``Image.NEAREST``
    (what the upstream SPADE loader uses for label and instance maps):
    source index ``floor((i + 0.5) · in / out)``."""
    h, w = size
    ih, iw = a.shape
    rows = np.minimum(((np.arange(h) + 0.5) * ih / h).astype(np.int64), ih - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * iw / w).astype(np.int64), iw - 1)
    return a[rows[:, None], cols[None, :]]


def allowed_labels_text(label_range: tuple[int, int], dontcare_values: Sequence[int] = ()) -> str:
    """``"0..9 or 255 (dontcare)"``: the raw label values a generator accepts."""
    lo, hi = label_range
    extra = [v for v in dontcare_values if not lo <= v <= hi]
    return f"{lo}..{hi}" + "".join(f" or {v} (dontcare)" for v in extra)


def check_label_values(label_map: np.ndarray, label_range: tuple[int, int], dontcare_values: Sequence[int] = (),
                       what: str = "label_map value") -> None:
    """Raise :class:`BadInput` naming the first label outside ``label_range`` (inclusive) and not a
    dontcare value, where it is and the allowed values."""
    lo, hi = label_range
    bad = (label_map < lo) | (label_map > hi)
    for v in dontcare_values:
        bad &= label_map != v
    if bad.any():
        y, x = (int(i) for i in np.argwhere(bad)[0])
        n = int(bad.sum())
        more = f" ({n - 1} more pixels out of range)" if n > 1 else ""
        raise BadInput(expected_got(what, f"labels {allowed_labels_text(label_range, dontcare_values)}",
                                    f"{int(label_map[y, x])} at (x={x}, y={y}){more}"))


#: The largest label-map side (and latent size) a generator manifest may declare.
MAX_MAP_SIDE = 65536


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _section(manifest: Any, name: str, where: str) -> dict:
    value = manifest.get(name) if isinstance(manifest, dict) else None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise BadInput(expected_got(f"{where} manifest field '{name}'", "an object", json_text(value)))
    return value


def _int_pair(section: dict, key: str, where: str, low: int, high: int) -> tuple[int, int]:
    v = section.get(key)
    if not (isinstance(v, list) and len(v) == 2 and all(_is_int(x) and low <= x <= high for x in v)):
        raise BadInput(expected_got(f"{where} field '{key}'", f"a list of two ints in {low}..{high}", json_text(v)))
    return int(v[0]), int(v[1])


def _flag(section: dict, key: str, where: str, required: bool = False) -> bool:
    if key not in section and not required:
        return False
    v = section.get(key)
    if not isinstance(v, bool):
        raise BadInput(expected_got(f"{where} field '{key}'", "true or false", json_text(v)))
    return v


class GeneratorInputs:
    """A generator's input checks from its manifest, without a session: :meth:`feed` builds the checked
    input dict (label range, size, instance ids, ``z``) that the graph takes, locally or on a server."""

    def __init__(self, manifest: dict[str, Any], where: str = "generator") -> None:
        self.manifest = manifest
        pre = _section(manifest, "preprocessing", where)
        self.pre = pre
        pw = f"{where} manifest preprocessing"
        if pre.get("type", "spade-label-map") != "spade-label-map":
            raise BadInput(expected_got(f"{pw} field 'type'", "'spade-label-map'", json_text(pre["type"])))
        self.size: tuple[int, int] = _int_pair(pre, "input_size", pw, 1, MAX_MAP_SIDE)
        self.label_range: tuple[int, int] = _int_pair(pre, "label_range", pw, -(1 << 62), 1 << 62)
        if self.label_range[0] > self.label_range[1]:
            raise BadInput(expected_got(f"{pw} field 'label_range'", "[low, high] with low <= high",
                                        json_text(pre["label_range"])))
        dontcare = pre.get("dontcare_values", [])
        if not isinstance(dontcare, list) or not all(_is_int(v) for v in dontcare):
            raise BadInput(expected_got(f"{pw} field 'dontcare_values'", "a list of ints", json_text(dontcare)))
        self.dontcare_values: tuple[int, ...] = tuple(int(v) for v in dontcare)
        self.use_instance = _flag(pre, "use_instance", pw, required=True)
        self.use_vae = _flag(pre, "use_vae", pw)
        self.z_dim = pre.get("z_dim")
        if self.use_vae and not (_is_int(self.z_dim) and 1 <= self.z_dim <= MAX_MAP_SIDE):
            raise BadInput(expected_got(f"{pw} field 'z_dim'", f"an int in 1..{MAX_MAP_SIDE} (a VAE generator)",
                                        json_text(self.z_dim)))
        if pre.get("resize", "nearest") != "nearest":
            raise BadInput(expected_got(f"{pw} field 'resize'", "'nearest'", json_text(pre["resize"])))
        dtypes = pre.get("input_dtypes")
        if not isinstance(dtypes, dict) or not isinstance(dtypes.get("label_map"), str):
            raise BadInput(expected_got(f"{pw} field 'input_dtypes'", "an object {input: dtype} with 'label_map'",
                                        json_text(dtypes)))
        allowed = {"label_map": ("uint8", "int32"), "instance_map": ("int32",), "z": ("float32",)}
        for name, dtype in dtypes.items():
            if name not in allowed or dtype not in allowed[name]:
                raise BadInput(expected_got(f"{pw} input_dtypes field '{name}'",
                                            " or ".join(f"'{d}'" for d in allowed.get(name, ())) or "a known input",
                                            json_text(dtype)))
        self.dtypes = {k: np.dtype(v) for k, v in dtypes.items()}
        batch = _section(manifest, "batch", where)
        opt = batch.get("opt", 1)
        if not (_is_int(opt) and 1 <= opt <= 64):  # copies of the map a request carries (the Client repeats it)
            raise BadInput(expected_got(f"{where} manifest batch field 'opt'", "an int in 1..64", json_text(opt)))
        self.batch = 1 if batch.get("dynamic") else int(opt)
        post = _section(manifest, "postprocessing", where)
        self.output_kind = post.get("output", "float")
        if self.output_kind not in ("float", "uint8"):
            raise BadInput(expected_got(f"{where} manifest postprocessing field 'output'", "'float' or 'uint8'",
                                        json_text(self.output_kind)))

    @property
    def allowed_labels(self) -> str:
        return allowed_labels_text(self.label_range, self.dontcare_values)

    # -- input checks -------------------------------------------------------

    def _as_map(self, a: Any, what: str, resize: bool) -> np.ndarray:
        a = np.asarray(a)
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.ndim != 2:
            hint = " (an RGB image? label and instance maps are single-channel integer images)" if a.ndim == 3 else ""
            raise BadInput(expected_got(f"{what} shape", "[H, W]", f"{list(a.shape)}{hint}"))
        if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
            raise BadInput(expected_got(f"{what} dtype", "an integer type (uint8, int32, ...)", str(a.dtype)))
        if a.shape != self.size:
            if not resize:
                raise BadInput(expected_got(
                    f"{what} size (H, W)", self.size,
                    f"{tuple(a.shape)} (resize it, or pass resize=True / --resize for nearest)"))
            a = resize_nearest(a, self.size)
        return a

    def check_labels(self, label_map: np.ndarray) -> None:
        """Raise :class:`BadInput` naming the first out-of-range label, where it is and the allowed range."""
        check_label_values(label_map, self.label_range, self.dontcare_values)

    def _instances(self, inst: np.ndarray) -> np.ndarray:
        info = np.iinfo(np.int32)
        if inst.size and (inst.min() < info.min or inst.max() > info.max):
            # only equality of neighbouring ids matters (edges): renumber compactly
            inst = np.unique(inst, return_inverse=True)[1].reshape(inst.shape)
        return inst.astype(np.int32)

    def feed(self, label_map: Any, instance_map: Any = None, *, z: Any = None, seed: int | None = None,
             resize: bool = False) -> dict[str, np.ndarray]:
        """The checked input dict for one image (batch axis added, padded to a static batch)."""
        lab = self._as_map(label_map, "label_map", resize)
        self.check_labels(lab)
        feed = {"label_map": lab.astype(self.dtypes["label_map"])[None]}
        if self.use_instance:
            if instance_map is None:
                raise BadInput(expected_got("instance_map", "an instance map (this generator uses instance edges)",
                                            "none (pass instance_map=..., or --instances on the command line)"))
            inst = self._as_map(instance_map, "instance_map", resize)
            feed["instance_map"] = self._instances(inst)[None]
        elif instance_map is not None:
            raise BadInput(expected_got("instance_map", "none (this generator uses no instance edges)", "a map"))
        if self.use_vae:
            if z is None:
                z = np.random.default_rng(seed).standard_normal(self.z_dim)
            z = np.asarray(z, np.float32).reshape(-1)
            if z.shape != (self.z_dim,):
                raise BadInput(expected_got("z shape", [self.z_dim], list(z.shape)))
            feed["z"] = z[None]
        if self.batch > 1:  # a static-batch artifact: repeat the image, keep the first result
            feed = {k: np.repeat(v, self.batch, axis=0) for k, v in feed.items()}
        return feed


class Generator(GeneratorInputs, OwnsSession):
    """Run an exported SPADE generator (ONNX file or TensorRT plan with its manifest).

    ``Generator(path, threads=None).generate(label_map, instance_map=None)`` →
    [H, W, 3] uint8. ``label_map``: [H, W] integer array of raw labels (values as
    in the training data: ``label_range`` plus the dontcare values, see
    :attr:`allowed_labels`); ``instance_map``: [H, W] integer ids, required when the
    model uses instance edges. H×W must equal :attr:`size` unless ``resize=True``
    (nearest, as the upstream loader).
    """

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, cuda_graph: bool = False):
        self.session = load(path, threads=threads, cuda_graph=cuda_graph)
        manifest = self.session.manifest
        if not manifest:
            raise BadInput(expected_got(f"model {path}", "a deploykit manifest beside it (from deploykit export)",
                                        "no manifest"))
        if manifest.get("kind") != "generator":
            raise BadInput(expected_got(f"model {path}", "a generator manifest (kind 'generator')",
                                        f"kind {manifest.get('kind')!r}"))
        super().__init__(manifest, where=f"generator {path}")
        # the batch a run repeats the map to is the graph's own static batch (the artifact is verified by its
        # sha256; the manifest's batch section could ask for any number of copies), else one
        spec = next((s for s in self.session.inputs if s.name == "label_map"), None)
        dim = spec.shape[0] if spec is not None and spec.shape else None
        self.batch = dim if isinstance(dim, int) and dim >= 1 else 1

    # -- run ------------------------------------------------------------------

    def generate(self, label_map: Any, instance_map: Any = None, *, z: Any = None, seed: int | None = None,
                 resize: bool = False) -> np.ndarray:
        """One image: [H, W, 3] uint8. ``z``/``seed`` only for VAE generators (``z`` defaults to N(0, 1))."""
        out = self.session.run(self.feed(label_map, instance_map, z=z, seed=seed, resize=resize))["image"]
        if out.dtype == np.uint8:  # exported with output="uint8": [B, H, W, 3]
            return np.ascontiguousarray(out[0])
        return to_uint8_image(out[0])


def read_map(path: str | os.PathLike, what: str) -> np.ndarray:
    """A single-channel PNG (8/16/32-bit or palette) → [H, W] integer array."""
    from PIL import Image, UnidentifiedImageError

    from .images import first_line

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise BadInput(expected_got(f"{what} {path}", "a single-channel label image (mode L, P, I or I;16)",
                                            f"mode {im.mode}"))
            a = np.array(im)
    except FileNotFoundError:
        raise BadInput(expected_got(f"{what} {path}", "an existing image file", "no such file")) from None
    except UnidentifiedImageError:
        raise BadInput(expected_got(f"{what} {path}", "an image file (PNG)", "unreadable data")) from None
    except Image.DecompressionBombError as e:
        raise BadInput(expected_got(f"{what} {path}", "an image of a sane size", first_line(e))) from None
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or corrupt data: PIL raises OSError, ValueError, struct.error...
        raise BadInput(expected_got(f"{what} {path}", "a readable, complete image",
                                    f"{type(e).__name__}: {first_line(e)}")) from None
    return a.astype(np.int64) if a.dtype == bool else a


def infer_generator(model_path: str | os.PathLike, label_paths: Sequence[str | os.PathLike],
                    out_dir: str | os.PathLike, instance_paths: Sequence[str | os.PathLike] | None = None,
                    resize: bool = False, threads: int | None = None, generator: Any = None) -> list[Path]:
    """Generate one PNG per label map into ``out_dir`` (``<label stem>.png``, written atomically).

    ``instance_paths``: one instance map per label map, in the same order, for
    instance models. Returns the written paths. ``generator``: an already open one to use
    instead (e.g. a ``deploykit.serving.Client``).
    """
    from PIL import Image

    from ..fileio import atomic_path

    gen = generator if generator is not None else Generator(model_path, threads=threads)
    label_paths = [Path(p) for p in label_paths]
    if instance_paths is not None and len(instance_paths) != len(label_paths):
        raise BadInput(expected_got("instance maps", f"one per label map ({len(label_paths)})", len(instance_paths)))
    stems = [p.stem for p in label_paths]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise BadInput(expected_got("label map file names", "distinct stems (outputs are <stem>.png)",
                                    f"duplicates {dup}"))
    out_dir = Path(out_dir)
    written = []
    for i, lp in enumerate(label_paths):
        lab = read_map(lp, "label map")
        inst = read_map(instance_paths[i], "instance map") if instance_paths is not None else None
        try:
            img = gen.generate(lab, inst, resize=resize)
        except BadInput as e:
            raise BadInput(f"{lp}: {e}") from None
        dst = out_dir / f"{lp.stem}.png"
        with atomic_path(dst) as tmp:
            Image.fromarray(img).save(tmp, format="PNG")
        written.append(dst)
    return written
