"""Calibration data for an exported artifact: feeds shaped, typed and preprocessed like inference.

``calibration_feeds(manifest, source, samples=128, seed=0)`` returns
``(feeds, description)``: ``feeds`` maps each graph input named in the manifest
to one array with one row per calibration sample (axis 0), and ``description``
is what the manifest records about them::

    {"source": "synthetic:synthetic_shapes seed=2000" or "/path/to/folder",
     "samples": N, "seed": 0, "files": files seen (0 for synthetic)}

Detectors (``kind: "detector"``)
    fixed-canvas tensor graphs: ``images`` float32 [N, 3, H, W] and ``image_sizes``
    float32 [N, 2], made by the runtime's own
    :func:`~deploykit.runtime.preprocess.preprocess_batch`, so calibration sees exactly
    what inference sees. Graphs whose input size follows the image (pixels-in, or
    dynamic size) get a **list** of N feeds instead, one per image at its own size
    (``image`` uint8 [1, h, w, 3], or the dynamic tensors). ``source``: a folder of images
    (.png .jpg .jpeg .bmp .webp .tif .tiff; other files are ignored), or ``None``
    for the synthetic shapes stream ``sample_for_index(2000 + seed, i)`` — apart
    from the demo detector's training (seed 0) and held-out (seed 1000) sets.

Generators (``kind: "generator"``, SPADE)
    ``label_map`` [N, H, W] (the manifest's dtype, uint8 or int32), ``instance_map``
    int32 [N, H, W] when the graph has it, ``z`` float32 [N, z_dim] (standard
    normal from ``seed``) for VAE graphs. ``source``: a folder of single-channel
    label-map PNGs, checked like the runtime checks them (values in the manifest's
    ``label_range`` or a dontcare value; other sizes resized with nearest). Instance
    maps, for graphs that take them, come from ``instances/<stem>.png`` in the
    folder or ``<stem>_instance.png`` beside the label map; without either the label
    map itself serves as the instance map (edges at class boundaries, none between
    touching objects of one class). ``None``: the spade_demo scenes
    (``spade_demo_data.make_sample(i, seed=2000 + seed, split="train")``, apart
    from the training (seed 0, train) and held-out (seed 0, heldout) scenes),
    resized with nearest to the graph's size; for a label space other than the
    demo's 10 classes each scene's classes are remapped to distinct valid labels
    drawn from the seed, and dontcare pixels kept only when the model has a
    dontcare value.

Sampling from a folder: the sorted listing, then ``numpy.random.default_rng(seed)
.choice(files, samples, replace=False)`` (in listing order). A folder with fewer
files than ``samples`` gives every file once — never a repeat — so ``N`` is then the
number of files; ``description["samples"]`` is always the real ``N`` and
``description["requested"]`` says what was asked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, expected_got
from ..progressbar import progress_bar
from .folders import IMAGE_SUFFIXES, list_files, pick
from .splits import CALIBRATION_SEED_OFFSET

INSTANCE_DIR = "instances"
INSTANCE_SUFFIX = "_instance"

__all__ = ["calibration_feeds", "label_map_feeds", "CALIBRATION_SEED_OFFSET"]


def calibration_feeds(manifest: dict, source: str | os.PathLike | None = None, *, samples: int = 128,
                      seed: int = 0, progress: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Calibration feeds for the graph ``manifest`` describes, and their description (see module doc).

    Raises :class:`BadInput` (one line, naming the file) for ``samples < 1``, a
    missing/empty folder, a file that is not a readable image, label maps with
    several channels or out-of-range labels, or a manifest of another kind.
    """
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise BadInput(expected_got("calibration samples", "an integer >= 1", repr(samples)))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadInput(expected_got("calibration seed", "an integer >= 0", repr(seed)))
    if not isinstance(manifest, dict):
        raise BadInput(expected_got("manifest", "a deploykit manifest dict", type(manifest).__name__))
    kind = manifest.get("kind")
    if kind == "detector":
        feeds, desc = _detector_feeds(manifest, source, int(samples), int(seed), progress)
    elif kind == "generator":
        feeds, desc = label_map_feeds(manifest, source, samples=int(samples), seed=int(seed), progress=progress)
    else:
        raise BadInput(expected_got("manifest kind", "'detector' or 'generator'", repr(kind)))
    _check_against_inputs(manifest, feeds)
    return feeds, desc


# -- shared ---------------------------------------------------------------------

def _folder_description(folder, picked: int, requested: int, seed: int, files: int) -> dict[str, Any]:
    desc = {"source": str(folder), "samples": picked, "seed": seed, "files": files}
    if picked < requested:
        desc["requested"] = requested
        desc["note"] = f"folder has {files} files, fewer than the {requested} requested: each used once"
    return desc


def _check_against_inputs(manifest: dict, feeds: dict[str, np.ndarray] | list[dict[str, np.ndarray]]) -> None:
    """The feeds carry exactly the graph's inputs, with the recorded dtypes and per-sample shapes."""
    if isinstance(feeds, list):  # one feed per sample (shapes vary): each is checked
        for feed in feeds:
            _check_against_inputs(manifest, feed)
        return
    specs = manifest.get("inputs") or []
    names = [s.get("name") for s in specs]
    if sorted(names) != sorted(feeds):
        raise BadInput(expected_got("manifest inputs", f"{sorted(feeds)} for a {manifest.get('kind')}",
                                    f"{names}"))
    for spec in specs:
        arr = feeds[spec["name"]]
        if np.dtype(spec["dtype"]) != arr.dtype:
            raise BadInput(expected_got(f"manifest input {spec['name']} dtype", str(arr.dtype), spec["dtype"]))
        want = [d for d in spec["shape"][1:]]
        if all(isinstance(d, int) for d in want) and list(arr.shape[1:]) != want:
            raise BadInput(expected_got(f"manifest input {spec['name']} shape", ["batch", *arr.shape[1:]],
                                        spec["shape"]))


# -- detectors ------------------------------------------------------------------

def _detector_feeds(manifest: dict, source, samples: int, seed: int, progress: bool):
    from ..runtime.preprocess import Preprocessing, preprocess_batch

    pre = Preprocessing.from_manifest(manifest.get("preprocessing"))
    if source is None:
        from .shapes import sample_for_index

        stream = CALIBRATION_SEED_OFFSET + seed
        load = [(f"synthetic {i}", lambda i=i: sample_for_index(stream, i)[0]) for i in range(samples)]
        desc = {"source": f"synthetic:synthetic_shapes seed={stream}", "samples": samples, "seed": seed, "files": 0}
    else:
        files = list_files(source, "calibration images directory", IMAGE_SUFFIXES)
        picked = pick(files, samples, seed)
        load = [(str(p), lambda p=p: _photo(p)) for p in picked]
        desc = _folder_description(source, len(picked), samples, seed, len(files))
    if pre.in_graph or pre.dynamic:
        return _per_sample_feeds(manifest, pre, load, progress), desc
    h, w = pre.input_size
    images = np.empty((len(load), 3, h, w), np.float32)
    sizes = np.empty((len(load), 2), np.float32)
    with progress_bar(len(load), "calibration images", progress) as advance:
        for i, (name, get) in enumerate(load):
            batch, image_sizes, _ = preprocess_batch([get()], pre, [name])
            images[i], sizes[i] = batch[0], image_sizes[0]
            advance()
    return {"images": images, "image_sizes": sizes}, desc


def _per_sample_feeds(manifest: dict, pre, load, progress: bool) -> list[dict[str, np.ndarray]]:
    """One feed per image for graphs whose input size follows the image (pixels-in, or dynamic size):
    the images keep their own sizes, so calibration sees the sizes inference sees. A static batch
    B > 1 repeats the image B times."""
    from ..runtime.preprocess import pixel_batch, preprocess_batch

    first = (manifest.get("inputs") or [{}])[0].get("shape") or ["batch"]
    repeat = first[0] if isinstance(first[0], int) else 1
    feeds = []
    with progress_bar(len(load), "calibration images", progress) as advance:
        for name, get in load:
            image = get()
            if pre.in_graph:
                feeds.append({"image": pixel_batch([image] * repeat, pre, [name] * repeat)})
            else:
                batch, image_sizes, _ = preprocess_batch([image] * repeat, pre, [name] * repeat)
                feeds.append({"images": batch, "image_sizes": image_sizes})
            advance()
    return feeds


def _photo(path: Path) -> np.ndarray:
    """An RGB image for a detector; refuse integer label maps (a SPADE folder) by name."""
    from PIL import Image

    from ..runtime.images import load_image

    try:
        with Image.open(path) as im:
            mode = im.mode
    except Exception:  # load_image names the file and the problem
        mode = None
    if mode in ("I", "I;16", "I;16B", "I;16L"):
        raise BadInput(expected_got(f"calibration image {path}", "an RGB or gray photo for a detector",
                                    f"a {mode} integer image (a label map? those calibrate SPADE generators)"))
    return load_image(path)


# -- generators -----------------------------------------------------------------

class _LabelSpace:
    """What the manifest says a generator accepts."""

    def __init__(self, manifest: dict):
        pre = manifest.get("preprocessing")
        if not isinstance(pre, dict) or "label_range" not in pre or "input_size" not in pre:
            raise BadInput(expected_got("generator manifest preprocessing", "label_range and input_size "
                                        "(written by deploykit export)", repr(pre)[:80]))
        self.size = (int(pre["input_size"][0]), int(pre["input_size"][1]))
        self.label_range = (int(pre["label_range"][0]), int(pre["label_range"][1]))
        self.dontcare = tuple(int(v) for v in pre.get("dontcare_values", []))
        self.use_instance = bool(pre.get("use_instance", False))
        self.use_vae = bool(pre.get("use_vae", False))
        self.z_dim = int(pre.get("z_dim") or 0)
        dtypes = pre.get("input_dtypes") or {}
        self.label_dtype = np.dtype(dtypes.get("label_map", "int32"))
        # classes proper: the range minus values that mean dontcare (ADE20K's raw 0)
        lo, hi = self.label_range
        self.classes = np.array([v for v in range(lo, hi + 1) if v not in self.dontcare], np.int64)


def label_map_feeds(manifest: dict, source: str | os.PathLike | None = None, *, samples: int, seed: int = 0,
                    synthetic_seed: int | None = None, split: str = "train",
                    what: str = "calibration label-map directory",
                    progress: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A generator's feeds from a folder of label-map PNGs, or synthetic scenes when ``source`` is None.

    The calibration defaults are :func:`calibration_feeds`'; ``eval`` uses the held-out
    scenes (``synthetic_seed=0, split="heldout"``). ``synthetic_seed`` defaults to
    ``CALIBRATION_SEED_OFFSET + seed``; ``what`` names the folder in error messages.
    """
    space = _LabelSpace(manifest)
    if source is None:
        stream = CALIBRATION_SEED_OFFSET + seed if synthetic_seed is None else int(synthetic_seed)
        load, desc = _synthetic_maps(space, samples, seed, stream, split)
    else:
        load, desc = _folder_maps(space, source, samples, seed, what)
    n = len(load)
    h, w = space.size
    labels = np.empty((n, h, w), space.label_dtype)
    insts = np.empty((n, h, w), np.int32) if space.use_instance else None
    with progress_bar(n, "calibration label maps", progress) as advance:
        for i, get in enumerate(load):
            lab, inst = get()
            labels[i] = lab
            if insts is not None:
                insts[i] = inst
            advance()
    feeds = {"label_map": labels}
    if insts is not None:
        feeds["instance_map"] = insts
    if space.use_vae:
        feeds["z"] = np.random.default_rng(seed).standard_normal((n, space.z_dim)).astype(np.float32)
    return feeds, desc


def _compact_ids(inst: np.ndarray) -> np.ndarray:
    """Instance ids as int32 (only equality of neighbours matters: renumber when they do not fit)."""
    info = np.iinfo(np.int32)
    if inst.size and (inst.min() < info.min or inst.max() > info.max):
        inst = np.unique(inst, return_inverse=True)[1].reshape(inst.shape)
    return inst.astype(np.int32)


def _synthetic_maps(space: _LabelSpace, samples: int, seed: int, stream: int, split: str):
    from ..runtime.generator import resize_nearest
    from . import spade_scenes as demo

    h, w = space.size
    demo_space = space.label_range == (0, demo.NUM_CLASSES - 1) and demo.DONTCARE in space.dontcare
    if len(space.classes) == 0:
        raise BadInput(expected_got("generator manifest label_range", "at least one class label",
                                    f"{space.label_range} with dontcare values {space.dontcare}"))

    def one(i: int):
        s = demo.make_sample(i, size=max(h, w, 64), seed=stream, split=split)  # scenes need >= 16 px; tiny maps resize down
        lab = resize_nearest(s.label, (h, w)).astype(np.int64)
        inst = resize_nearest(s.instance, (h, w)).astype(np.int64)
        if not demo_space:
            rng = np.random.default_rng([stream, 1, i])
            replace = len(space.classes) < demo.NUM_CLASSES
            table = rng.choice(space.classes, size=demo.NUM_CLASSES, replace=replace)
            care = lab != demo.DONTCARE
            out = np.empty_like(lab)
            out[care] = table[lab[care]]
            keep = 255 if 255 in space.dontcare else (space.dontcare[0] if space.dontcare else None)
            out[~care] = keep if keep is not None else table[0]
            lab = out
        return lab.astype(space.label_dtype), _compact_ids(inst)

    load = [lambda i=i: one(i) for i in range(samples)]
    name = f"synthetic:spade_demo_data seed={stream}" + ("" if split == "train" else f" split={split}")
    return load, {"source": name, "samples": samples, "seed": seed, "files": 0}


def _instance_file(label_path: Path) -> Path | None:
    for cand in (label_path.parent / INSTANCE_DIR / label_path.name,
                 label_path.with_name(f"{label_path.stem}{INSTANCE_SUFFIX}.png")):
        if cand.is_file():
            return cand
    return None


def _read_label_png(path: Path, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    from ..runtime.generator import read_map
    from ..runtime.images import first_line

    try:
        with Image.open(path) as im:
            mode = im.mode
    except UnidentifiedImageError:
        raise BadInput(expected_got(f"{what} {path}", "a single-channel label map PNG", "not an image")) from None
    except Exception as e:  # noqa: BLE001 - corrupt headers: PIL raises OSError, ValueError, SyntaxError...
        raise BadInput(expected_got(f"{what} {path}", "a readable label map PNG", first_line(e))) from None
    if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA", "RGBX", "HSV", "LAB"):
        raise BadInput(expected_got(f"{what} {path}", "a single-channel integer label map (mode L, P, I or I;16)",
                                    f"{len(mode)}-channel mode {mode} (photos? a SPADE model calibrates on label "
                                    "maps)"))
    return read_map(path, what)  # corrupt or truncated data: BadInput naming the file


def _folder_maps(space: _LabelSpace, source, samples: int, seed: int, what: str):
    from ..runtime.generator import check_label_values, resize_nearest

    files = list_files(source, what, (".png",),
                        skip=lambda p: p.stem.endswith(INSTANCE_SUFFIX))
    picked = pick(files, samples, seed)

    def one(path: Path):
        lab = _read_label_png(path, "label map")
        if lab.shape != space.size:
            lab = resize_nearest(lab, space.size)
        try:
            check_label_values(lab, space.label_range, space.dontcare)
        except BadInput as e:
            raise BadInput(f"label map {path}: {e}") from None
        inst = None
        if space.use_instance:
            ipath = _instance_file(path)
            if ipath is None:
                inst = lab.astype(np.int64)  # documented fallback: class regions as instances
            else:
                inst = _read_label_png(ipath, "instance map")
                if inst.shape != space.size:
                    inst = resize_nearest(inst, space.size)
            inst = _compact_ids(inst)
        return lab.astype(space.label_dtype), inst

    load = [lambda p=p: one(p) for p in picked]
    return load, _folder_description(source, len(picked), samples, seed, len(files))
