"""Small file helpers without heavy imports: crash-safe writes, directory locks, hashing.

Every file deploykit writes goes through :func:`atomic_path`: the data goes to a hidden
temporary file beside the target (``.NAME.<pid>.<random>.tmp``), is flushed to disk, and is
renamed onto the target only when complete. The temporary file is created with mode
``0o666`` and the process umask applies, as for a plain ``open(path, "w")``; a file that
replaces an existing one keeps that file's permission bits. A process killed mid-write
leaves only such a hidden file; the next write of the same target removes it (its pid is
dead), see :func:`clean_stale`.

Writing an artifact *and* its manifest (two files) is :func:`deploykit.manifest.staged_artifact`'s
job: it builds on :func:`stage_dir` and :func:`dir_lock` here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import BadInput, expected_got

#: errno values that mean "the disk (or quota, or file-size limit) is full".
FULL_DISK = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def umask() -> int:
    """The process umask, read without changing it (Linux ``/proc``; elsewhere set and restored)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _mode_for(path: Path, directory: bool = False) -> int:
    """What a plain write would give ``path``: an existing file's bits, else ``0o666`` (dirs ``0o777``) less the umask."""
    if not directory:
        try:
            return path.stat().st_mode & 0o7777
        except OSError:
            pass
    return (0o777 if directory else 0o666) & ~umask()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _temp_name(name: str, kind: str) -> str:
    return f".{name}.{kind}.{os.getpid()}.{secrets.token_hex(4)}"


def clean_stale(directory: str | os.PathLike, name: str) -> list[Path]:
    """Remove leftovers of writes of ``directory/name`` by processes that no longer exist.

    Leftovers are the hidden temporary files and staging folders this module makes
    (``.NAME.tmp.<pid>.<hex>``, ``.NAME.stage.<pid>.<hex>``); those of live processes (another
    writer at work) are kept. Returns what was removed.
    """
    directory = Path(directory)
    pattern = re.compile(rf"^\.{re.escape(name)}\.(tmp|stage)\.(\d+)\.[0-9a-f]+$")
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or pid_alive(int(m.group(2))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make renames in ``directory`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_failed(path: str | os.PathLike, error: OSError) -> BadInput:
    """The one-line error for an output that could not be written (full disk, no permission...)."""
    reason = error.strerror or type(error).__name__
    if error.errno in FULL_DISK:
        reason += " (disk full or file size limit)"
    return BadInput(expected_got(f"output {path}", "written completely", f"{reason}; nothing was replaced"))


def _ready_parent(path: str | os.PathLike) -> Path:
    """``path`` as a Path whose folder exists, with temporaries of killed writers beside it removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(path, e) from None
    clean_stale(path.parent, path.name)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Readers never see a half-written file: on any exception the temporary file is
    removed and ``path`` is left as it was. A full disk or another write error
    raises :class:`BadInput` naming ``path``. The written file gets the permissions a
    plain write gives (umask; an existing file's own bits).
    """
    path = _ready_parent(path)
    mode = _mode_for(path)
    tmp_path = path.parent / _temp_name(path.name, "tmp")
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as e:
        raise write_failed(path, e) from None
    os.close(fd)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as e:
        if e.errno in FULL_DISK or e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise write_failed(path, e) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


@contextlib.contextmanager
def stage_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden folder beside ``path`` (same filesystem, so its files rename into place), removed at exit.

    ``.NAME.stage.<pid>.<hex>``, made with the umask's directory mode; folders left by
    killed processes are removed by the next call (:func:`clean_stale`).
    """
    path = _ready_parent(path)
    stage = path.parent / _temp_name(path.name, "stage")
    try:
        stage.mkdir(mode=0o777)  # the umask applies
    except OSError as e:
        raise write_failed(path, e) from None
    try:
        yield stage
    except OSError as e:
        if e.errno in FULL_DISK:
            raise write_failed(path, e) from None
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A private work folder in the system's temporary folder (``PREFIX<pid>.<hex>``), removed at exit.

    Folders of the same prefix left by processes that were killed are removed first.
    """
    base = Path(tempfile.gettempdir())
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.[0-9a-f]+$")
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            m = pattern.match(entry.name)
            if m and not pid_alive(int(m.group(1))) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
    path = base / f"{prefix}{os.getpid()}.{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike, *, shared: bool = False) -> Iterator[bool]:
    """Hold ``flock`` on ``directory`` itself (no lock file is left behind); yields whether it is held.

    Writers committing into a folder take it exclusively, readers shared. Where the
    folder cannot be opened or locked (permissions, a filesystem without flock) this
    yields ``False`` and proceeds unlocked.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            held = True
        except OSError:
            held = False
        yield held
    finally:
        os.close(fd)  # releases the lock


def fsync_tree(root: str | os.PathLike) -> None:
    """Flush every file and folder under ``root`` to disk (before it is renamed into place)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                _fsync_file(Path(folder) / name)
        fsync_dir(folder)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete folder ``new`` at ``target`` in one step; the old ``target`` ends up at ``new``.

    A missing ``target`` is a plain rename; an existing one is swapped with ``new`` by
    ``renameat2(RENAME_EXCHANGE)``, so ``target`` is never missing or half there (the caller
    then removes ``new``, now the old content). Filesystems without the exchange get two renames,
    with a moment in which ``target`` is missing. Under an exclusive lock on the parent folder.
    """
    new, target = Path(new), Path(target)
    with dir_lock(target.parent):
        if not target.exists():
            os.rename(new, target)
            new.mkdir()  # the caller removes `new` as it would the old content
        elif not _exchange(new, target):
            old = target.parent / _temp_name(target.name, "stage")
            os.rename(target, old)
            os.rename(new, target)
            os.rename(old, new)
        fsync_dir(target.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    write_bytes_atomic(path, text.encode())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()
