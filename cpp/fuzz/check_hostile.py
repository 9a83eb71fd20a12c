"""Hostile manifests (tests/fuzz/hostile.py) beside a toy detector: `deploykit infer` (Python) and
deploykit-detect (C++) each exit 2 with one line, and the two lines say the same after the
manifest's path (the checks the two readers share are worded the same). Then the images fuzz_stb
found: both refuse each in one line with exit 2.

    python cpp/fuzz/check_hostile.py WORK_DIR path/to/deploykit-detect
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

from hostile import NAMES, write_case  # noqa: E402
from toys import toy_artifacts  # noqa: E402


def message(stderr: str, prefix: str, manifest: Path) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {stderr!r}"
    line = lines[0]
    assert line.startswith(prefix), line
    head = f"manifest {manifest}"
    assert head in line, (head, line)
    return line.split(head, 1)[1]


def main() -> int:
    work, detect = Path(sys.argv[1]), Path(sys.argv[2])
    shutil.rmtree(work, ignore_errors=True)
    source = toy_artifacts(work / "toys")["detector"]
    import numpy as np
    from PIL import Image

    image = work / "a.png"
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(image)
    for name in NAMES:
        case = work / name.replace(" ", "_").replace(".", "dot")
        case.mkdir()
        art = case / "det.onnx"
        shutil.copy(source, art)
        shutil.copy(source.with_suffix(".json"), art.with_suffix(".json"))
        words = write_case(art, name)
        py = subprocess.run([sys.executable, "-m", "deploykit.cli", "infer", str(art), str(image), "-o",
                             str(case / "py")], capture_output=True, text=True, timeout=120)
        cpp = subprocess.run([str(detect), str(art), str(image), "-o", str(case / "cpp")], capture_output=True,
                             text=True, timeout=120)
        assert py.returncode == 2 and cpp.returncode == 2, (name, py.returncode, py.stderr, cpp.returncode, cpp.stderr)
        p = message(py.stderr, "error: ", art.with_suffix(".json"))
        c = message(cpp.stderr, "deploykit-detect: ", art.with_suffix(".json"))
        assert words in p, (name, words, p)
        assert p == c, f"{name}: Python and C++ word it differently:\n  {p}\n  {c}"
        print(f"{name}: exit 2 from both, {c.strip()[:100]}")
    print(f"{len(NAMES)} hostile manifests: one line and exit 2 from Python and C++, worded the same")
    # the images fuzz_stb found (each crashed or tripped a sanitizer in stb 2.27): refused in one line by both
    hostile = sorted((ROOT / "cpp" / "fuzz" / "corpus" / "fuzz_stb").glob("crash-*"))
    for path in hostile:
        image = work / f"{path.name[:14]}.img"
        shutil.copy(path, image)
        for cmd, prefix in (([str(detect), str(source), str(image), "-o", str(work / "out_cpp")], "deploykit-detect: "),
                            ([sys.executable, "-m", "deploykit.cli", "infer", str(source), str(image), "-o",
                              str(work / "out_py")], "error: ")):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(prefix + "image "), (cmd, r.stderr)
    print(f"{len(hostile)} hostile images from fuzz_stb: one line and exit 2 from deploykit-detect and deploykit infer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
