"""Folders of user data: the image suffixes deploykit reads, one listing rule, seeded picking. No torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BadInput, expected_got

#: Image files deploykit reads from a folder (other files are ignored).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def list_files(folder: str | os.PathLike, what: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES,
               skip: Callable[[Path], bool] = lambda p: False) -> list[Path]:
    """The files of ``folder`` ending in ``suffixes`` (any case), sorted by name; hidden entries, other
    files and those ``skip`` names are ignored. One-line BadInput naming ``what`` for a missing folder,
    a file, or a folder without such files."""
    folder = Path(folder)
    if not folder.exists():
        raise BadInput(expected_got(f"{what} {folder}", "an existing directory", "no such directory"))
    if not folder.is_dir():
        raise BadInput(expected_got(f"{what} {folder}", "a directory", "a file"))
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    files = sorted(p for p in entries if p.is_file() and p.suffix.lower() in suffixes and not skip(p))
    if not files:
        got = "an empty directory" if not entries else f"none ({len(entries)} other entries)"
        raise BadInput(expected_got(f"{what} {folder}", "image files (" + " ".join(suffixes) + ")", got))
    return files


def pick(files: list[Path], samples: int, seed: int) -> list[Path]:
    """``samples`` files, seeded, without replacement, in listing order; all of them when fewer."""
    if len(files) <= samples:
        return list(files)
    idx = np.random.default_rng(seed).choice(len(files), size=samples, replace=False)
    return [files[i] for i in sorted(int(i) for i in idx)]


