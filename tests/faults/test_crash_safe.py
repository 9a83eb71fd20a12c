"""Faults that must lose nothing: an artifact and its manifest written together (manifest.write_artifact),
killed at every step of the commit and at random moments, on a full disk (RLIMIT_FSIZE), by two writers
at once; `deploykit triton`, `infer -o` and `build` (stand-in TensorRT) killed at random moments; written
files readable by others (umask). Every test kills only processes it started and waits for them."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from deploykit.fileio import write_json_atomic
from deploykit.manifest import manifest_path, read_manifest, settle

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "fuzz"))

from toys import DETECTOR_MANIFEST, toy_artifacts  # noqa: E402

PY = sys.executable


_SCRATCH: list[Path] = []


@pytest.fixture(autouse=True, scope="module")
def _children_temp(tmp_path_factory):
    """The killed children's temp files (e.g. tests/trt_real.py's stub libraries, killed mid-build) go
    under pytest's own temp folder, not /tmp."""
    _SCRATCH.append(tmp_path_factory.mktemp("children-tmp"))
    yield
    _SCRATCH.pop()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    if _SCRATCH:
        env["TMPDIR"] = str(_SCRATCH[-1])
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), str(TESTS), str(TESTS / "fuzz"), env.get("PYTHONPATH", "")])
    return env


def _run(code: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", textwrap.dedent(code), *args], env=_env(), capture_output=True, text=True,
                          timeout=120, **kw)


def _kill_after(cmd: list[str], delay: float, **kw) -> int | None:
    """Start ``cmd``, SIGKILL it after ``delay`` s (unless it finished); the return code."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=30)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".new"))


def assert_pair_consistent(artifact: Path, allowed: set[bytes | None]) -> bytes | None:
    """After settle: the artifact is absent (never committed) or its manifest matches it; its bytes are one
    of ``allowed`` (the old or the new complete file). Returns the bytes."""
    settle(artifact)
    mpath = manifest_path(artifact, legacy=False)
    assert not Path(str(artifact) + ".new").exists() and not Path(str(mpath) + ".new").exists()
    if not artifact.exists():
        assert not mpath.exists(), "a manifest without its artifact"
        assert None in allowed
        return None
    assert mpath.exists(), "an artifact without its manifest"
    read_manifest(artifact)  # sha256 of the artifact = the manifest's record
    data = artifact.read_bytes()
    assert data in allowed, f"{artifact.name} is neither the old nor the new complete file"
    return data


# -- the protocol, step by step -------------------------------------------------------------------

WRITER = """
    import os, sys
    from pathlib import Path
    from deploykit.manifest import write_artifact
    out, payload, kill_at = Path(sys.argv[1]), sys.argv[2].encode() * 50000, int(sys.argv[3])
    calls = [0]
    real = os.replace
    def replace(src, dst):  # SIGKILL just before the kill_at-th rename (1: the staged manifest's own)
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), 9)
        return real(src, dst)
    os.replace = replace
    manifest = {"kind": "test", "model": {}, "inputs": [], "outputs": [], "batch": {}}
    write_artifact(out, lambda p: p.write_bytes(payload), manifest)
"""


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5, 99])
def test_killed_at_each_step_of_the_commit_leaves_a_complete_pair(tmp_path, kill_at):
    out = tmp_path / "m.onnx"
    old = _run(WRITER, str(out), "old", "99")
    assert old.returncode == 0, old.stderr
    r = _run(WRITER, str(out), "new", str(kill_at))
    assert r.returncode == (0 if kill_at == 99 else -9), r.stderr
    # step 1 = staged manifest written, 2 = artifact -> .new, 3 = manifest -> .new (commit point), 4, 5 = into place
    want = b"new" * 50000 if kill_at >= 4 else b"old" * 50000
    assert assert_pair_consistent(out, {want}) == want
    # the next run succeeds and leaves nothing behind
    again = _run(WRITER, str(out), "next", "99")
    assert again.returncode == 0, again.stderr
    assert_pair_consistent(out, {b"next" * 50000})
    assert _hidden(tmp_path) == []


def test_random_kills_while_committing_in_a_loop(tmp_path):
    """One process commits alternating 2 MB artifacts as fast as it can; SIGKILL at random moments, 12 times."""
    out = tmp_path / "m.onnx"
    code = """
        import sys
        from pathlib import Path
        from deploykit.manifest import write_artifact
        out = Path(sys.argv[1])
        manifest = {"kind": "test", "model": {}, "inputs": [], "outputs": [], "batch": {}}
        i = 0
        while True:
            write_artifact(out, lambda p: p.write_bytes(b"ab"[i % 2:i % 2 + 1] * (2 << 20)), manifest)
            i += 1
    """
    allowed = {None, b"a" * (2 << 20), b"b" * (2 << 20)}
    rng = random.Random(0)
    for _ in range(12):
        _kill_after([PY, "-c", textwrap.dedent(code), str(out)], rng.uniform(0.4, 1.2))
        assert_pair_consistent(out, allowed)
    r = _run(WRITER, str(out), "z", "99")  # the next writer succeeds and cleans the stale staging folders
    assert r.returncode == 0, r.stderr
    assert _hidden(tmp_path) == []


def test_two_writers_at_once_end_with_one_consistent_pair(tmp_path):
    out = tmp_path / "m.onnx"
    code = """
        import sys
        from pathlib import Path
        from deploykit.manifest import write_artifact
        out, tag = Path(sys.argv[1]), sys.argv[2].encode()
        manifest = {"kind": "test", "model": {}, "inputs": [], "outputs": [], "batch": {}}
        for i in range(25):
            write_artifact(out, lambda p: p.write_bytes(tag * 300000 + bytes([i])), manifest)
    """
    procs = [subprocess.Popen([PY, "-c", textwrap.dedent(code), str(out), tag], env=_env()) for tag in ("x", "y")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    data = assert_pair_consistent(out, {tag * 300000 + bytes([24]) for tag in (b"x", b"y")})
    assert data is not None
    assert _hidden(tmp_path) == []


def test_full_disk_keeps_the_previous_pair(tmp_path):
    """RLIMIT_FSIZE below the new artifact's size: one line, exit 2, the old pair intact, no temporary left."""
    out = tmp_path / "m.onnx"
    assert _run(WRITER, str(out), "old", "99").returncode == 0
    before = out.read_bytes()
    code = """
        import sys
        from pathlib import Path
        from deploykit.cli.common import fail_cleanly
        from deploykit.manifest import write_artifact
        manifest = {"kind": "test", "model": {}, "inputs": [], "outputs": [], "batch": {}}
        fail_cleanly(lambda: write_artifact(Path(sys.argv[1]), lambda p: p.write_bytes(b"n" * 400000), manifest))()
    """

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    r = _run(code, str(out), preexec_fn=limit)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "written completely" in lines[0], r.stderr
    assert_pair_consistent(out, {before})
    assert _hidden(tmp_path) == []


def test_written_files_follow_the_umask(tmp_path):
    """Artifacts, manifests and Triton repositories are readable by others under umask 022 (mkstemp gave 0600)."""
    code = """
        import os, sys
        os.umask(0o022)
        from pathlib import Path
        sys.path.insert(0, sys.argv[2])
        from toys import toy_artifacts
        from deploykit.serving.repository import RepositoryOptions, write_repository
        arts = toy_artifacts(Path(sys.argv[1]) / "a")
        write_repository([arts["detector"]], Path(sys.argv[1]) / "repo", options=RepositoryOptions(backend="python"))
    """
    r = _run(code, str(tmp_path), str(TESTS / "fuzz"))
    assert r.returncode == 0, r.stderr
    files = [p for p in tmp_path.rglob("*")]
    assert files
    for p in files:
        mode = p.stat().st_mode & 0o777
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


# -- commands killed at random moments ---------------------------------------------------------

@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    return toy_artifacts(tmp_path_factory.mktemp("toys"))


def _cli(*args: str) -> list[str]:
    return [PY, "-m", "deploykit.cli", *map(str, args)]


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return time.perf_counter() - start


def test_triton_killed_at_random_moments(tmp_path, toys):
    repo = tmp_path / "repo"
    cmd = _cli("triton", toys["detector"], "-o", repo, "--backend", "python", "--overwrite")
    took = _timed(cmd)
    rng = random.Random(1)
    for _ in range(5):
        _kill_after(cmd, rng.uniform(0.3 * took, 1.1 * took))
        model = repo / "det"
        assert model.is_dir(), "the model folder vanished"
        assert sorted(p.name for p in model.iterdir()) == ["1", "config.pbtxt", "labels.txt", "warmup"]
        read_manifest(model / "1" / "model.onnx")
        assert [p for p in repo.iterdir() if p.name.startswith(".") and not _stale(p)] == []
    _timed(cmd)
    assert sorted(p.name for p in repo.iterdir()) == ["det"]  # stale staging folders removed by the next run


def _stale(p: Path) -> bool:
    """A staging folder or temporary whose process is gone (the next write removes it)."""
    from deploykit.fileio import pid_alive

    parts = p.name.split(".")
    return len(parts) >= 4 and parts[-2].isdigit() and not pid_alive(int(parts[-2]))


def test_infer_output_killed_at_random_moments(tmp_path, toys):
    from PIL import Image

    images = []
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((24 + i, 32, 3), 40 * i, np.uint8)).save(path)
        images.append(path)
    out = tmp_path / "out"
    cmd = _cli("infer", toys["detector"], *images, "-o", out)
    took = _timed(cmd)
    rng = random.Random(2)
    for _ in range(4):
        _kill_after(cmd, rng.uniform(0.3 * took, 1.1 * took))
        for p in out.iterdir():
            if p.suffix == ".json":
                doc = json.loads(p.read_text())  # complete JSON
                assert doc["min_score"] == 0.3
            elif p.suffix == ".png":
                Image.open(p).load()  # complete image
            else:
                assert _stale(p), p
    _timed(cmd)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"img{i}.{s}" for i in range(6) for s in ("json", "png")])


BUILD = """
    import sys
    sys.argv = ["deploykit", *sys.argv[1:]]
    from pytest import MonkeyPatch
    from trt_real import install_stand_ins
    install_stand_ins(MonkeyPatch())
    from deploykit.cli import main
    main()
"""


def test_build_killed_at_random_moments(tmp_path):
    """`deploykit build`'s write path with the tests' stand-in TensorRT (tests/trt_real.py)."""
    from trt_real import make_onnx

    src = make_onnx(tmp_path)
    plan = tmp_path / "m.plan"
    cmd = [PY, "-c", textwrap.dedent(BUILD), "build", str(src), "-o", str(plan)]
    took = _timed(cmd)
    first = plan.read_bytes()
    rng = random.Random(3)
    for _ in range(4):
        _kill_after(cmd, rng.uniform(0.3 * took, 1.1 * took))
        assert_pair_consistent(plan, {first})  # the stand-in builds the same plan bytes each time
        assert manifest_path(plan, legacy=False).name == "m.plan.json"
    _timed(cmd)
    assert_pair_consistent(plan, {first})
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_reader_rolls_an_interrupted_commit_forward_and_back(tmp_path):
    """What a kill leaves, read by the runtime: past the commit point the new pair, before it the old one."""
    arts = toy_artifacts(tmp_path / "t")
    det = arts["detector"]
    old_bytes = det.read_bytes()
    new_manifest = dict(DETECTOR_MANIFEST, class_names=["__background__", "x", "y"])
    new_bytes = old_bytes + b""  # same graph, a different manifest: enough to tell the pairs apart
    # past the commit point: X.onnx.new and X.json.new complete
    Path(str(det) + ".new").write_bytes(new_bytes)
    from deploykit.fileio import sha256_file

    m = json.loads(det.with_suffix(".json").read_text())
    m["class_names"] = new_manifest["class_names"]
    m["artifact"]["sha256"] = sha256_file(Path(str(det) + ".new"))
    write_json_atomic(Path(str(det.with_suffix(".json")) + ".new"), m)
    from deploykit.runtime import Detector

    d = Detector(det)
    assert d.class_names == ["__background__", "x", "y"]
    d.close()
    assert not Path(str(det) + ".new").exists()
    # before the commit point: only X.onnx.new, which is dropped
    Path(str(det) + ".new").write_bytes(b"half")
    d = Detector(det)
    assert d.class_names == ["__background__", "x", "y"]
    d.close()
    assert not Path(str(det) + ".new").exists()


def test_commands_on_a_full_disk_exit_2_and_keep_what_was_there(tmp_path, toys):
    """`deploykit infer -o` and `deploykit triton` under RLIMIT_FSIZE: one line, exit 2, no partial files."""
    from PIL import Image

    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    for args, out in ((["infer", toys["detector"], image, "-o", tmp_path / "out"], tmp_path / "out"),
                      (["triton", toys["detector"], "-o", tmp_path / "repo", "--backend", "python"], tmp_path / "repo")):
        r = subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True, timeout=120, preexec_fn=limit)
        assert r.returncode == 2, (args[0], r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "expected written completely" in lines[0], (args[0], r.stderr)
        left = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
        for p in left:  # whatever is there is complete: the small JSON may have been written before the PNG
            assert p.suffix == ".json", p
            json.loads(p.read_text())
