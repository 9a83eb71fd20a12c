"""Reading images for the runtime (PIL, no torch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BadInput, expected_got

#: What PIL raises for a corrupt or truncated file (others, e.g. struct.error, are caught too).
PIL_CORRUPT = (OSError, ValueError, SyntaxError, EOFError)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 ``[H, W, 3]`` RGB.

    Any mode PIL reads (gray, palette, RGBA, CMYK...) is converted to RGB with
    PIL's ``convert("RGB")``; EXIF orientation is not applied (pixels as
    stored, as ``torchvision.io.read_image`` and ``PIL.Image.open`` give them).
    Raises BadInput, one line naming the file, when it is missing, not an
    image, truncated or otherwise unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    thing = f"image {path}"
    if not path.exists():
        raise BadInput(expected_got(thing, "an existing image file", "no such file"))
    if not path.is_file():
        raise BadInput(expected_got(thing, "an image file", "a directory" if path.is_dir() else "not a regular file"))
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated data fails here, not later
            rgb = image.convert("RGB")
    except UnidentifiedImageError:
        raise BadInput(expected_got(thing, "an image PIL can read (PNG, JPEG, BMP, ...)",
                                    "an unrecognised file format")) from None
    except Image.DecompressionBombError as e:
        raise BadInput(expected_got(thing, "an image of a sane size", _first_line(e))) from None
    except PIL_CORRUPT as e:  # PIL's ways of saying "corrupt"
        raise BadInput(expected_got(thing, "a readable, complete image", _first_line(e))) from None
    except Exception as e:  # noqa: BLE001 - PIL's decoders raise others on hostile files (struct.error, ...)
        raise BadInput(expected_got(thing, "a readable, complete image", f"{type(e).__name__}: {_first_line(e)}")) from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise BadInput(expected_got(thing, "an RGB image with at least 1x1 pixels", f"shape {list(array.shape)}"))
    return array


def first_line(error: BaseException) -> str:
    """An exception's first non-empty line (its type name when it has no message), at most 200 characters."""
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return (text.splitlines() or [type(error).__name__])[0][:200]
