"""Every kept fuzz input (seeds and each finding, tests/fuzz/corpus/<target>/) replayed once through its
target: the parsers of untrusted input succeed or refuse in one BadInput line, never anything else.
Fuzzing itself (minutes per target) is scripts/fuzz.sh; this is its regression suite (seconds)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fuzz_targets  # noqa: E402

CASES = [(target, path) for target in fuzz_targets.TARGETS
         for path in sorted((HERE / "corpus" / target).glob("*"))]


def test_every_target_has_kept_inputs():
    for target in fuzz_targets.TARGETS:
        assert any((HERE / "corpus" / target).glob("seed-*")), target


@pytest.mark.parametrize("target,path", CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_kept_input_replays_cleanly(target, path):
    fuzz_targets.TARGETS[target](path.read_bytes())  # raises fuzz_targets.Finding on misbehaviour


def test_fuzz_script_lists_every_target():
    import subprocess

    script = HERE.parents[1] / "scripts" / "fuzz.sh"
    listed = subprocess.run(["bash", str(script), "list"], capture_output=True, text=True, check=True).stdout.split()
    assert sorted(t.removeprefix("py-") for t in listed if t.startswith("py-")) == sorted(fuzz_targets.TARGETS)
    assert sorted(t for t in listed if t.startswith("cpp-")) == ["cpp-c_api", "cpp-manifest", "cpp-stb"]
