"""TensorRT optimisation-profile shapes from a manifest: the one reader ``deploykit build`` and the
Triton repository writer (TensorRT execution-provider profiles) share. No TensorRT needed."""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import BadInput, expected_got

#: Symbolic image dimensions and the manifest ranges they take their profile from: (section key, axis).
IMAGE_DIMS = {"height": ("image_size_range", 0), "width": ("image_size_range", 1),
              "padded_height": ("padded_size_range", 0), "padded_width": ("padded_size_range", 1)}


def _image_dim_range(manifest: Mapping[str, Any], dim: str, opt_image_size: tuple[int, int] | None,
                     where: str) -> tuple[int, int, int]:
    key, axis = IMAGE_DIMS[dim]
    section = (manifest.get("preprocessing") or {}).get(key)
    if not isinstance(section, Mapping):
        raise BadInput(expected_got(f"{where} ({dim})", f"a range in manifest preprocessing.{key}", "none"))
    try:
        low, high = int(section["min"][axis]), int(section["max"][axis])
        opt = int(section.get("opt", section["min"])[axis])
    except (KeyError, TypeError, IndexError, ValueError):
        raise BadInput(expected_got(f"manifest preprocessing.{key}", "{min: [h, w], opt: [h, w], max: [h, w]}",
                                    repr(section))) from None
    if opt_image_size is not None and key == "image_size_range":
        opt = int(opt_image_size[axis])
    if not 1 <= low <= opt <= high:
        raise BadInput(expected_got(f"profile for {dim}", f"min <= opt <= max within {low}..{high}",
                                    f"opt {opt}"))
    return low, opt, high


def profile_shapes(manifest: Mapping[str, Any], opt_image_size: tuple[int, int] | None = None,
                   ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Optimisation-profile shapes ``{input name: (min, opt, max)}`` from a manifest.

    The ``"batch"`` dimension takes the manifest's ``batch`` min/opt/max when the
    batch is dynamic, and ``opt`` (or ``min``) for all three when it is not, so a
    static export gives static shapes. A detector's dynamic image dimensions
    (``height``/``width`` of a pixels-in graph, ``padded_height``/``padded_width`` of a
    dynamic tensor-input graph) take ``preprocessing.image_size_range`` /
    ``padded_size_range``; ``opt_image_size`` (h, w) overrides the image range's opt.
    Any other symbolic dimension has no range to build for and is refused.
    """
    batch = manifest.get("batch") or {}
    if not isinstance(batch, Mapping):
        raise BadInput(expected_got("manifest batch", "an object {dynamic, min, opt, max}", type(batch).__name__))
    dynamic = bool(batch.get("dynamic", False))
    low = batch.get("min", 1)
    opt = batch.get("opt", low)
    high = batch.get("max", opt)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, opt, high)) or not 1 <= low <= opt <= high:
        raise BadInput(expected_got("manifest batch range", "ints with 1 <= min <= opt <= max",
                                    f"min={low!r} opt={opt!r} max={high!r}"))
    if not dynamic:
        low = high = opt
    shapes = {}
    for spec in manifest.get("inputs") or []:
        name, shape = spec.get("name"), spec.get("shape")
        if not isinstance(name, str) or not isinstance(shape, list):
            raise BadInput(expected_got("manifest input", "{name, dtype, shape}", repr(spec)))
        per = []
        for axis, dim in enumerate(shape):
            if isinstance(dim, int) and dim >= 0:
                per.append((dim, dim, dim))
            elif dim == "batch":
                per.append((low, opt, high))
            elif dim in IMAGE_DIMS:
                per.append(_image_dim_range(manifest, dim, opt_image_size, f"manifest input {name!r} dim {axis}"))
            else:
                raise BadInput(expected_got(f"manifest input {name!r} dim {axis}",
                                            "an int, 'batch' or a detector image dimension "
                                            f"({', '.join(IMAGE_DIMS)})", repr(dim)))
        shapes[name] = tuple(tuple(p[i] for p in per) for i in range(3))
    if not shapes:
        raise BadInput(expected_got("manifest inputs", "at least one input", "none"))
    return shapes
