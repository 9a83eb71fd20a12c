"""The command-line examples against each other and against ``deploykit infer``.

    python check_cli.py FIXTURES_DIR DEPLOYKIT_DETECT DETECT_C

1. Bad input (always): a missing image, a tensor-input graph, no -o -> exit 2 and one line on stderr.
2. When the fixtures have the demo detector exported pixels-in: ``deploykit infer`` (Python) and
   ``deploykit-detect`` (C++) on the same PNG files, and ``detect_c`` (C) per file, give the same JSON
   (same schema and values: boxes within 1e-4 px, scores within 1e-6, identical labels and names).
Exits 77 (ctest: skipped) after part 1 when part 2 has no demo detector to run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def check_bad_input(fixtures: Path, detect: Path, tmp: Path) -> None:
    toy = fixtures / "toy_dynamic.onnx"
    cases = [
        ([detect, toy, tmp / "missing.png", "-o", tmp / "o"], "missing.png: expected a readable image file, got no such file"),
        ([detect, fixtures / "toy_tensor_input.onnx", tmp / "missing.png", "-o", tmp / "o"], "--input image"),
        ([detect, toy, tmp / "missing.png"], "-o DIR: expected an output folder, got none"),
        ([detect, toy, tmp / "a.png", "--min-score", "x", "-o", tmp / "o"], "--min-score: expected a number, got 'x'"),
    ]
    for cmd, part in cases:
        r = run(cmd)
        assert r.returncode == 2, (cmd, r.returncode, r.stderr)
        first = r.stderr.strip().splitlines()[0]
        assert part in first, (part, r.stderr)
    print(f"bad input: {len(cases)} cases exit 2 with one line")


def same_json(a: dict, b: dict, what: str) -> int:
    assert set(a) == set(b) == {"image", "width", "height", "model", "min_score", "detections"}, (what, set(a), set(b))
    for key in ("image", "width", "height", "model"):
        assert a[key] == b[key], (what, key, a[key], b[key])
    assert abs(a["min_score"] - b["min_score"]) < 1e-12, what
    assert len(a["detections"]) == len(b["detections"]), (what, len(a["detections"]), len(b["detections"]))
    for k, (x, y) in enumerate(zip(a["detections"], b["detections"])):
        assert set(x) == set(y) == {"box", "score", "label", "label_name"}, (what, k)
        assert max(abs(p - q) for p, q in zip(x["box"], y["box"])) <= 1e-4, (what, k, x["box"], y["box"])
        assert abs(x["score"] - y["score"]) <= 1e-6, (what, k)
        assert x["label"] == y["label"] and x["label_name"] == y["label_name"], (what, k)
    return len(a["detections"])


def check_against_infer(fixtures: Path, index: dict, detect: Path, detect_c: Path, tmp: Path) -> int:
    pngs = [fixtures / item["png"] for item in index["heldout_images"][:5]]
    compared = 0
    for name in ("demo_fixed", "demo_dynamic", "demo_list"):  # demo_list: the 5 images in chunks of mixed sizes
        if name not in index["demo_detector"]:
            continue
        model = fixtures / index["demo_detector"][name]["file"]
        py_out, cpp_out = tmp / f"py_{name}", tmp / f"cpp_{name}"
        r = run([sys.executable, "-m", "deploykit.cli", "infer", model, *pngs, "-o", py_out, "--min-score", "0.3"])
        assert r.returncode == 0, r.stderr
        r = run([detect, model, *pngs, "-o", cpp_out, "--min-score", "0.3", "--threads", "2"])
        assert r.returncode == 0, r.stderr
        for png in pngs:
            want = json.loads((py_out / f"{png.stem}.json").read_text())
            got = json.loads((cpp_out / f"{png.stem}.json").read_text())
            n = same_json(got, want, f"deploykit-detect {name} {png.name}")
            if name != "demo_list":  # detect_c runs one image per call: a list of one is another computation
                r = run([detect_c, model, png, "0.3"])
                assert r.returncode == 0, r.stderr
                same_json(json.loads(r.stdout), want, f"detect_c {name} {png.name}")
            compared += 1
            print(f"{name} {png.name}: {n} detections equal in deploykit infer, deploykit-detect, detect_c")
    return compared


def main() -> int:
    fixtures, detect, detect_c = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    index = json.loads((fixtures / "fixtures.json").read_text())
    with tempfile.TemporaryDirectory(prefix="deploykit-cli-") as tmp:
        tmp = Path(tmp)
        check_bad_input(fixtures, detect, tmp)
        if not index.get("demo_detector"):
            print(f"skipped: {index.get('demo_detector_skip')}")
            return 77
        n = check_against_infer(fixtures, index, detect, detect_c, tmp)
    print(f"{n} image results (5 images x the demo models): JSON equal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
