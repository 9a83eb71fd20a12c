"""Hostile manifests: valid JSON (mostly) that a runtime must refuse in one line with exit code 2.

``CASES`` maps a name to (mutation of the toy detector's manifest, the words both runtimes' message
holds after ``manifest <path>``). Used by tests/faults/test_hostile_manifests.py (the Python CLI) and
cpp/fuzz/check_hostile.py (the Python CLI and deploykit-detect on the same files: same message).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(m: dict) -> None:
        *parents, last = path.split("/")
        node: Any = m
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


CASES: dict[str, tuple[Callable[[dict], None], str]] = {
    "wrong type": (_set("kind", 3), " field 'kind': expected a string, got an int 3"),
    "huge float": (_set("batch/max", 1e300), " batch field 'max': expected an int, got a number 1e+300"),
    "huge int": (_set("batch/max", 18446744073709551615),
                 " batch field 'max': expected an int of 64 bits, got 18446744073709551615"),
    "batch min of 65536": (lambda m: m["batch"].update(min=65536, opt=65536, max=65536),
                           " batch: expected min at most 64 (runtimes fill a batch up to it), got min=65536"),
    "batch too large": (_set("batch/max", 100000), " batch: expected max at most 65536, got max=100000"),
    "deep nesting": (_set("model", _nested(200)), ": expected JSON nested at most 64 deep, got deeper nesting"),
    "unknown field": (_set("surprise", 1), " field 'surprise': expected one of the fields this runtime reads [format, "
                      "kind, artifact, model, inputs, outputs, batch, preprocessing, postprocessing, class_names, "
                      "precision, versions, tensorrt], got an unknown field (a newer exporter? update deploykit)"),
    "newline in a field name": (_set("sur\nprise", 1), " field 'sur\\x0aprise': expected one of the fields"),
    "a million class names": (_set("class_names", [f"c{i}" for i in range(1_000_000)]),
                              " field 'class_names': expected at most 65536 names, got 1000000"),
    "path with ..": (_set("artifact/file", "../../etc/passwd"),
                     " artifact field 'file': expected a file name without folders, got \"../../etc/passwd\""),
    "sha256 not hex": (_set("artifact/sha256", "not-a-digest"),
                       " artifact field 'sha256': expected 64 lowercase hex digits, got \"not-a-digest\""),
    "huge dim": (_set("inputs/0/shape/1", 4294967296),
                 " inputs[0] shape dim 1: expected at most 2147483647, got 4294967296"),
    "negative dim": (_set("inputs/0/shape/1", -3),
                     " inputs[0] shape dim 1: expected a non-negative int or a dimension name, got -3"),
    "unknown dtype": (_set("inputs/0/dtype", "float8"), " inputs[0] dtype: expected a numpy dtype name"),
    "inputs not a list": (_set("inputs", {}), " inputs: expected a list of {name, dtype, shape}, got an object"),
    "class names not strings": (_set("class_names", [1, 2]), " field 'class_names': expected a list of strings, got 1"),
    "batch min above max": (_set("batch/min", 9), " batch: expected ints with 1 <= min <= opt <= max, got min=9 opt=1 max=4"),
    "wrong format": (_set("format", "deploykit-manifest/9"),
                     " field 'format': expected 'deploykit-manifest/1', got \"deploykit-manifest/9\""),
}
NOT_AN_OBJECT = ("[1, 2]", ": expected a JSON object, got a list")


def write_case(artifact: Path, name: str) -> str:
    """Write the hostile manifest ``name`` beside ``artifact`` (a toy detector); returns the expected words."""
    mpath = artifact.with_suffix(".json")
    base = json.loads(mpath.read_text()) if not hasattr(write_case, "base") else write_case.base  # type: ignore
    write_case.base = base  # type: ignore[attr-defined]
    if name == "not an object":
        mpath.write_text(NOT_AN_OBJECT[0])
        return NOT_AN_OBJECT[1]
    m = json.loads(json.dumps(base))
    mutate, words = CASES[name]
    mutate(m)
    mpath.write_text(json.dumps(m))
    return words


NAMES = [*CASES, "not an object"]
