"""`deploykit export` and `deploykit quantize` SIGKILLed at random moments (mostly late in the run, where
they write): the output is the previous complete pair or the new one, never half of one, and the next run
succeeds and leaves no temporary behind. The SPADE demo is the cheapest real export (~5-10 s here)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploykit.manifest import manifest_path, read_manifest, settle

pytestmark = pytest.mark.slow

PY = sys.executable


def _cli(*args) -> list[str]:
    return [PY, "-m", "deploykit.cli", *map(str, args)]


def _full(cmd: list[str]) -> float:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return time.perf_counter() - start


def _killed(cmd: list[str], delay: float) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def _consistent(artifact: Path, allowed: set[str]) -> str:
    """The pair after settle: complete and matching; its sha256 one of ``allowed``."""
    settle(artifact)
    assert not Path(f"{artifact}.new").exists() and not Path(f"{manifest_path(artifact)}.new").exists()
    sha = read_manifest(artifact)["artifact"]["sha256"]  # verifies the artifact against it
    assert sha in allowed
    return sha


def _no_leftovers(folder: Path) -> None:
    from deploykit.fileio import pid_alive

    left = [p for p in folder.iterdir() if p.name.startswith(".")
            and not (p.name.split(".")[-2].isdigit() and not pid_alive(int(p.name.split(".")[-2])))]
    assert left == []


def test_export_and_quantize_killed_at_random_moments(tmp_path):
    out = tmp_path / "gen.onnx"
    export = _cli("export", "spade_demo", "-o", out)
    took = _full(export)
    shas = {read_manifest(out)["artifact"]["sha256"]}  # export is byte-identical run to run
    rng = random.Random(os.getpid())
    _killed(export, rng.uniform(0.5 * took, 1.05 * took))
    _consistent(out, shas)
    _full(export)  # the next run succeeds
    _consistent(out, shas)
    _no_leftovers(tmp_path)

    q = tmp_path / "gen_fp16.onnx"
    quantize = _cli("quantize", out, "-o", q, "--precision", "fp16", "--samples", "2")
    _killed(quantize, rng.uniform(0.3 * took, 0.7 * took))  # the first write: nothing or a complete pair
    settle(q)
    assert not q.exists() or read_manifest(q)["artifact"]["sha256"]
    took = _full(quantize)
    _killed(quantize, rng.uniform(0.5 * took, 1.05 * took))  # over a complete pair: that one or a new one
    settle(q)
    assert read_manifest(q)["artifact"]["sha256"]  # complete and matching (fp16 bytes may differ per run)
    _full(quantize)
    _no_leftovers(tmp_path)
