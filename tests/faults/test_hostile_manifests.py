"""A manifest that is valid JSON but hostile gets one line and exit code 2 from the Python CLI (the C++
side, deploykit-detect on the same files with the same words: cpp/fuzz/check_hostile.py in ctest)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "fuzz"))

from hostile import NAMES, write_case  # noqa: E402
from toys import toy_artifacts  # noqa: E402

from deploykit.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toys")
    arts = toy_artifacts(folder)
    from PIL import Image

    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(folder / "a.png")
    return arts["detector"]


@pytest.mark.parametrize("name", NAMES)
def test_hostile_manifest_is_one_line_and_exit_2(tmp_path, source, name):
    art = tmp_path / "det.onnx"
    shutil.copy(source, art)
    shutil.copy(source.with_suffix(".json"), art.with_suffix(".json"))
    words = write_case(art, name)
    for args in (["infer", str(art), str(source.parent / "a.png"), "-o", str(tmp_path / "out")],
                 ["check", str(art)]):
        result = CliRunner().invoke(main, args)
        if args[0] == "check":  # deploykit check ignores a manifest it cannot read (the graph is what it checks)
            assert result.exit_code in (0, 1), result.output
            continue
        assert result.exit_code == 2, (result.exit_code, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        assert lines[0].startswith(f"error: manifest {art.with_suffix('.json')}"), lines[0]
        assert words in lines[0], (words, lines[0])
    assert not (tmp_path / "out").exists()  # nothing written
