"""The JSON manifest written beside every artifact.

``model.onnx`` keeps its manifest at ``model.json``; a TensorRT plan ``model.plan``
(or ``model.engine``) at ``model.plan.json`` (``model.engine.json``), so an engine
named after its ONNX file (``deploykit build model.onnx -o model.plan``) has a
manifest of its own. Plans built before that naming kept theirs at ``model.json``:
readers fall back to it when its ``artifact.file`` names the plan.
:func:`manifest_path` is the one place that decides.

It is what lets a runtime, ``deploykit parity`` or a C++ app use an artifact
without guessing. No torch here: the runtime reads manifests.

Schema (``format: deploykit-manifest/1``)::

    {
      "format": "deploykit-manifest/1",
      "kind": "detector" | "generator",
      "artifact": {"file": "model.onnx", "format": "onnx" | "tensorrt-plan", "sha256": "..."},
      "model": {"name": "fasterrcnn_demo", "checkpoint": "path or null",
                "checkpoint_sha256": "... or null", "overrides": {...}},
      "inputs":  [{"name": "images", "dtype": "float32", "shape": ["batch", 3, 320, 320]}, ...],
      "outputs": [{"name": "boxes", "dtype": "float32", "shape": ["batch", 100, 4]}, ...],
      "batch": {"dynamic": false, "min": 1, "opt": 1, "max": 1},
      "preprocessing": {...},     # model-kind specific, see docs/manifest.md
      "postprocessing": {...},
      "class_names": ["__background__", ...],
      "precision": {"mode": "fp32", ...},
      "versions": {"deploykit": "...", "torch": "...", "onnx": "...", "opset": 18, ...}
    }

A dimension is an int, or the string ``"batch"`` for a dynamic batch axis.

Reading (:func:`read_manifest`) checks the schema the runtimes interpret, with the C++
reader's wording (cpp/src/manifest.cpp): size and nesting limits, the fields of ``artifact``,
``batch`` and each tensor spec (unknown ones refused), their types and ranges, ``class_names``.
``model``, ``precision``, ``versions`` and the contents of ``preprocessing`` /
``postprocessing`` / ``tensorrt`` are left to their consumers.

Writing an artifact and its manifest (two files) is crash-safe with :func:`write_artifact` /
:func:`staged_artifact` (the protocol is in their docstrings and docs/robustness.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import BadInput, expected_got
from .fileio import (
    FULL_DISK,
    _fsync_file,
    _mode_for,
    dir_lock,
    fsync_dir,
    sha256_file,
    stage_dir,
    write_failed,
    write_json_atomic,
)

FORMAT = "deploykit-manifest/1"
REQUIRED_KEYS = ("format", "kind", "artifact", "model", "inputs", "outputs", "batch")
#: Top-level fields a reader accepts (the C++ reader's list, cpp/src/manifest.cpp).
KNOWN_KEYS = REQUIRED_KEYS + ("preprocessing", "postprocessing", "class_names", "precision", "versions", "tensorrt")
DTYPES = ("float32", "float16", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "bool")
#: Limits on what a manifest may hold (the same in C++): file size, JSON nesting, list lengths, values.
MAX_BYTES = 16 << 20
MAX_DEPTH = 64
MAX_CLASSES = 65536
MAX_TENSORS = 256
MAX_RANK = 16
MAX_DIM = (1 << 31) - 1
MAX_BATCH = 65536
#: A dynamic batch's min is how many images the runtimes fill a batch up to (blank images): kept small.
MAX_BATCH_MIN = 64
#: Suffix of a committed-but-not-yet-renamed artifact or manifest (see :func:`write_artifact`).
PENDING = ".new"


PLAN_SUFFIXES = (".plan", ".engine")


def manifest_path(artifact: str | os.PathLike, *, legacy: bool = True) -> Path:
    """The manifest of ``artifact``: ``model.onnx`` -> ``model.json``, ``model.plan`` -> ``model.plan.json``.

    With ``legacy`` (readers), a plan without ``model.plan.json`` whose older
    ``model.json`` names it in ``artifact.file`` gets that ``model.json``; writers
    pass ``legacy=False`` and always get the current name.
    """
    artifact = Path(artifact)
    if artifact.suffix.lower() not in PLAN_SUFFIXES:
        return artifact.with_suffix(".json")
    current = artifact.with_name(artifact.name + ".json")
    if legacy and not current.is_file():
        old = artifact.with_suffix(".json")
        if old.is_file() and _names_artifact(old, artifact.name):
            return old
    return current


def _names_artifact(path: Path, name: str) -> bool:
    try:
        data = _loads(path.read_bytes())
    except (OSError, BadInput):
        return False
    art = data.get("artifact") if isinstance(data, dict) else None
    return isinstance(art, dict) and art.get("file") == name



# -- reading -----------------------------------------------------------------------------------

def json_type(value: Any) -> str:
    """A JSON value's type as error messages name it (as the C++ reader does)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int):
        return "an int"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def json_text(value: Any) -> str:
    """A JSON value as it reads in an error message: compact, strings quoted, cut after 120 characters."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    except (ValueError, TypeError, RecursionError):
        text = repr(value)
    return text[:117] + "..." if len(text) > 120 else text


def _nesting_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings (counted before parsing, as in C++)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_int(text: str) -> int | float:
    value = int(text) if len(text) <= 20 else float(text)  # beyond 64 bits: a float, as nlohmann::json parses it
    if isinstance(value, int) and not -(1 << 63) <= value < (1 << 64):
        return float(value)
    return value


def _loads(data: bytes, where: str = "manifest") -> Any:
    """JSON from a manifest's bytes within the size and nesting limits, numbers as C++ reads them."""
    if len(data) > MAX_BYTES:
        raise BadInput(expected_got(where, f"a file of at most {MAX_BYTES >> 20} MiB", f"{len(data)} bytes"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(expected_got(where, "valid JSON", "a parse error")) from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _nesting_depth(text) > MAX_DEPTH:
        raise BadInput(expected_got(where, f"JSON nested at most {MAX_DEPTH} deep", "deeper nesting"))
    try:
        doc = json.loads(text, parse_int=_json_int, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise BadInput(expected_got(where, "valid JSON", "a parse error")) from None
    return doc


def parse_manifest_text(data: bytes, path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check a manifest's bytes (no sha256 check); ``path`` only names it in errors.

    Raises :class:`BadInput`, one line, with the C++ reader's wording.
    """
    where = f"manifest {path}"
    doc = _loads(data, where)
    check_manifest(doc, where)
    return doc


def _field(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        raise BadInput(expected_got(f"{where} field '{key}'", "present", "missing"))
    return obj[key]


def _string(obj: dict, key: str, where: str) -> str:
    v = _field(obj, key, where)
    if not isinstance(v, str):
        raise BadInput(expected_got(f"{where} field '{key}'", "a string", f"{json_type(v)} {json_text(v)}"))
    return v


def _int(obj: dict, key: str, where: str) -> int:
    v = _field(obj, key, where)
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadInput(expected_got(f"{where} field '{key}'", "an int", f"{json_type(v)} {json_text(v)}"))
    if not -(1 << 63) <= v < (1 << 63):
        raise BadInput(expected_got(f"{where} field '{key}'", "an int of 64 bits", json_text(v)))
    return v


def _bool(obj: dict, key: str, where: str) -> bool:
    v = _field(obj, key, where)
    if not isinstance(v, bool):
        raise BadInput(expected_got(f"{where} field '{key}'", "true or false", f"{json_type(v)} {json_text(v)}"))
    return v


def _known(obj: dict, known: tuple[str, ...], where: str) -> None:
    for key in obj:
        if key not in known:
            raise BadInput(expected_got(f"{where} field '{key}'",
                                        f"one of the fields this runtime reads [{', '.join(known)}]",
                                        "an unknown field (a newer exporter? update deploykit)"))


def _section(doc: dict, name: str, where: str) -> dict:
    v = doc.get(name)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise BadInput(expected_got(f"{where} field '{name}'", "an object", json_type(v)))
    return v


def _specs(value: Any, where: str) -> None:
    if not isinstance(value, list):
        raise BadInput(expected_got(where, "a list of {name, dtype, shape}", json_type(value)))
    if len(value) > MAX_TENSORS:
        raise BadInput(expected_got(where, f"at most {MAX_TENSORS} tensors", f"{len(value)}"))
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise BadInput(expected_got(at, "an object {name, dtype, shape}", json_type(item)))
        _known(item, ("name", "dtype", "shape"), at)
        _string(item, "name", at)
        dtype = _string(item, "dtype", at)
        if dtype not in DTYPES:
            raise BadInput(expected_got(f"{at} dtype", "a numpy dtype name (float32, uint8, int32, ...)",
                                        json_text(dtype)))
        shape = _field(item, "shape", at)
        if not isinstance(shape, list):
            raise BadInput(expected_got(f"{at} shape", "a list of ints and strings", json_type(shape)))
        if len(shape) > MAX_RANK:
            raise BadInput(expected_got(f"{at} shape", f"at most {MAX_RANK} dims", f"{len(shape)}"))
        for a, d in enumerate(shape):
            if isinstance(d, int) and not isinstance(d, bool) and d >= 0:
                if d > MAX_DIM:
                    raise BadInput(expected_got(f"{at} shape dim {a}", f"at most {MAX_DIM}", json_text(d)))
            elif not (isinstance(d, str) and d):
                raise BadInput(expected_got(f"{at} shape dim {a}", "a non-negative int or a dimension name",
                                            json_text(d)))


def _batch(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise BadInput(expected_got(where, "an object {dynamic, min, opt, max}", json_type(value)))
    _known(value, ("dynamic", "min", "opt", "max"), where)
    if "dynamic" in value:
        _bool(value, "dynamic", where)
    lo = _int(value, "min", where) if "min" in value else 1
    opt = _int(value, "opt", where) if "opt" in value else lo
    hi = _int(value, "max", where) if "max" in value else opt
    if not 1 <= lo <= opt <= hi:
        raise BadInput(expected_got(where, "ints with 1 <= min <= opt <= max", f"min={lo} opt={opt} max={hi}"))
    if hi > MAX_BATCH:
        raise BadInput(expected_got(where, f"max at most {MAX_BATCH}", f"max={hi}"))
    if lo > MAX_BATCH_MIN:
        raise BadInput(expected_got(where, f"min at most {MAX_BATCH_MIN} (runtimes fill a batch up to it)", f"min={lo}"))


def plain_file_name(name: str) -> bool:
    """A file name without folders: not empty, no ``/`` or ``\\``, not ``.`` or ``..``, no NUL."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def check_manifest(doc: Any, where: str) -> None:
    """The schema checks of :func:`parse_manifest_text` on a parsed document (``where``: "manifest PATH")."""
    if not isinstance(doc, dict):
        raise BadInput(expected_got(where, "a JSON object", json_type(doc)))
    if doc.get("format") != FORMAT:
        raise BadInput(expected_got(f"{where} field 'format'", f"'{FORMAT}'",
                                    json_text(doc["format"]) if "format" in doc else "missing"))
    _known(doc, KNOWN_KEYS, where)
    for key in REQUIRED_KEYS:
        _field(doc, key, where)
    _string(doc, "kind", where)
    art = _section(doc, "artifact", where)
    _known(art, ("file", "format", "sha256"), f"{where} artifact")
    name = _string(art, "file", f"{where} artifact")
    if not plain_file_name(name):
        raise BadInput(expected_got(f"{where} artifact field 'file'", "a file name without folders", json_text(name)))
    fmt = _string(art, "format", f"{where} artifact")
    if fmt not in ("onnx", "tensorrt-plan"):
        raise BadInput(expected_got(f"{where} artifact field 'format'", "'onnx' or 'tensorrt-plan'", json_text(fmt)))
    sha = _string(art, "sha256", f"{where} artifact")
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise BadInput(expected_got(f"{where} artifact field 'sha256'", "64 lowercase hex digits", json_text(sha)))
    _specs(doc["inputs"], f"{where} inputs")
    _specs(doc["outputs"], f"{where} outputs")
    _batch(doc["batch"], f"{where} batch")
    names = doc.get("class_names")
    if names is not None:
        if not isinstance(names, list):
            raise BadInput(expected_got(f"{where} field 'class_names'", "a list of strings", json_type(names)))
        if len(names) > MAX_CLASSES:
            raise BadInput(expected_got(f"{where} field 'class_names'", f"at most {MAX_CLASSES} names",
                                        f"{len(names)}"))
        for n in names:
            if not isinstance(n, str):
                raise BadInput(expected_got(f"{where} field 'class_names'", "a list of strings", json_text(n)))
    for section in ("tensorrt", "preprocessing", "postprocessing"):
        _section(doc, section, where)


def read_manifest(artifact: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Read and check the manifest beside ``artifact``.

    An interrupted write of the pair is finished or undone first (:func:`settle`). Raises
    :class:`BadInput` (one line) when the manifest is missing, too large or deep, not JSON, of
    another format or schema (:func:`parse_manifest_text`), or (with ``verify``) when its
    recorded sha256 does not match the artifact. Manifest and artifact are read under a shared
    lock on their folder, so a concurrent :func:`write_artifact` is never seen half done.
    """
    artifact = Path(artifact)
    settle(artifact)
    with dir_lock(artifact.parent, shared=True):
        return read_manifest_locked(artifact, verify)


def read_manifest_locked(artifact: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """:func:`read_manifest` for a caller that settled the pair and holds the folder's shared lock
    (settling here would wait for an exclusive lock this process itself blocks)."""
    artifact = Path(artifact)
    path = manifest_path(artifact)
    if not path.is_file():
        raise BadInput(expected_got(f"manifest {path}", "a deploykit manifest beside the artifact",
                                    "no such file"))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadInput(expected_got(f"manifest {path}", "a readable file", e.strerror or type(e).__name__)) from None
    manifest = parse_manifest_text(data, path)
    if verify:
        want = manifest["artifact"]["sha256"]
        try:
            got = sha256_file(artifact)
        except OSError as e:
            raise BadInput(expected_got(f"model {artifact}", "a readable file",
                                        e.strerror or type(e).__name__)) from None
        if want != got:
            raise BadInput(expected_got(f"manifest {path}", f"sha256 of {artifact.name} = {want[:12]}…",
                                        f"{got[:12]}… (artifact changed after export, or manifest belongs to "
                                        "another file)"))
    return manifest


# -- writing: an artifact and its manifest, crash-safe ------------------------------------------

def write_manifest(artifact: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Fill in the artifact's file name and sha256, then write the manifest atomically.

    On its own this replaces one file; an artifact and its manifest are published together by
    :func:`write_artifact` / :func:`staged_artifact`, which call it on the staged artifact.
    """
    artifact = Path(artifact)
    manifest = dict(manifest)
    manifest["format"] = FORMAT
    art = dict(manifest.get("artifact", {}))
    art["file"] = artifact.name
    art.setdefault("format", "onnx" if artifact.suffix == ".onnx" else "tensorrt-plan")
    art["sha256"] = sha256_file(artifact)
    manifest["artifact"] = art
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"manifest for {artifact}: missing keys {missing}")
    path = manifest_path(artifact, legacy=False)
    write_json_atomic(path, manifest)
    return path


def _pending(path: Path) -> Path:
    return path.with_name(path.name + PENDING)


def _recorded_sha(manifest: Path) -> str | None:
    try:
        doc = _loads(manifest.read_bytes())
        sha = doc["artifact"]["sha256"]
    except Exception:  # noqa: BLE001 - unreadable or hostile: not a complete commit
        return None
    return sha if isinstance(sha, str) else None


def _settle_locked(artifact: Path) -> str:
    """:func:`settle` with the folder's lock held. Returns what it did: "", "forward" or "back"."""
    mpath = manifest_path(artifact, legacy=False)
    a_new, m_new = _pending(artifact), _pending(mpath)
    if m_new.exists():  # past the commit point: both new files were complete
        want = _recorded_sha(m_new)
        if want and a_new.exists() and sha256_file(a_new) == want:
            os.replace(a_new, artifact)
            os.replace(m_new, mpath)
            fsync_dir(artifact.parent)
            return "forward"
        if want and not a_new.exists() and artifact.exists() and sha256_file(artifact) == want:
            os.replace(m_new, mpath)  # the artifact was renamed already
            fsync_dir(artifact.parent)
            return "forward"
        m_new.unlink(missing_ok=True)  # not a commit this protocol made: undo
        a_new.unlink(missing_ok=True)
        return "back"
    if a_new.exists():  # before the commit point: the previous pair stands
        a_new.unlink()
        return "back"
    return ""


def settle(artifact: str | os.PathLike) -> str:
    """Finish (roll forward) or undo (roll back) an interrupted :func:`write_artifact` of ``artifact``.

    Called by every reader and writer before it looks at the pair; a no-op (two ``stat`` calls)
    when nothing was interrupted. Where the folder is read-only the leftovers stay and the
    committed names are read as they are (their sha256 still has to match).
    Returns "", "forward" or "back".
    """
    artifact = Path(artifact)
    mpath = manifest_path(artifact, legacy=False)
    if not (_pending(artifact).exists() or _pending(mpath).exists()):
        return ""
    with dir_lock(artifact.parent):
        try:
            return _settle_locked(artifact)
        except OSError:
            return ""


def commit_artifact(staged: Path, out: Path) -> Path:
    """Publish ``staged`` (a complete artifact, its manifest beside it) as ``out`` and its manifest.

    The protocol, under an exclusive ``flock`` on ``out``'s folder (writers of one folder commit
    one at a time):

    1. finish or undo an earlier interrupted commit (:func:`settle`);
    2. rename the staged artifact to ``X.onnx.new``, then the staged manifest to ``X.json.new``
       (the commit point: from here the new pair is the one that stands);
    3. rename ``X.onnx.new`` to ``X.onnx``, then ``X.json.new`` to ``X.json``.

    Killed before the commit point, readers and the next writer delete ``X.onnx.new`` (the old
    pair stands); after it, they finish the renames, checking the artifact against the sha256
    in ``X.json.new``. Returns the manifest's path.
    """
    out = Path(out)
    staged_manifest = manifest_path(staged, legacy=False)
    mpath = manifest_path(out, legacy=False)
    _fsync_file(staged)
    os.chmod(staged, _mode_for(out))
    os.chmod(staged_manifest, _mode_for(mpath))
    with dir_lock(out.parent):
        _settle_locked(out)
        os.replace(staged, _pending(out))
        fsync_dir(out.parent)
        os.replace(staged_manifest, _pending(mpath))  # the commit point
        fsync_dir(out.parent)
        os.replace(_pending(out), out)
        os.replace(_pending(mpath), mpath)
        fsync_dir(out.parent)
    return mpath


@contextlib.contextmanager
def staged_artifact(out: str | os.PathLike) -> Iterator[Path]:
    """Yield the path to write the artifact ``out`` to; write its manifest with
    ``write_manifest(staged, manifest)`` inside the block. Both are published together at the
    end of the block (:func:`commit_artifact`); on an exception nothing is published.

    The staged files live in a hidden folder beside ``out`` (``.NAME.stage.<pid>.<hex>``, same
    filesystem), removed at the end, or by the next write when the process was killed.
    """
    out = Path(out)
    if out.exists() and out.is_dir():
        raise BadInput(expected_got(f"output {out}", "a file path", "a directory"))
    settle(out)
    with stage_dir(out) as stage:
        staged = stage / out.name
        yield staged
        if not staged.is_file() or not manifest_path(staged, legacy=False).is_file():
            raise RuntimeError(f"staged_artifact({out}): the block wrote no artifact or no manifest")
        try:
            commit_artifact(staged, out)
        except OSError as e:
            if e.errno in FULL_DISK:
                raise write_failed(out, e) from None
            raise


def write_artifact(out: str | os.PathLike, write: Callable[[Path], Any], manifest: dict[str, Any]) -> Path:
    """Write an artifact with ``write(path)`` and its manifest, and publish both together
    (:func:`staged_artifact`). Returns the manifest's path."""
    out = Path(out)
    with staged_artifact(out) as staged:
        write(staged)
        write_manifest(staged, manifest)
    return manifest_path(out, legacy=False)


__all__ = ["FORMAT", "REQUIRED_KEYS", "manifest_path", "read_manifest", "parse_manifest_text", "check_manifest",
           "write_manifest", "write_artifact", "staged_artifact", "settle"]
