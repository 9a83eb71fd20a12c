"""Run one Python fuzz target under atheris (libFuzzer's engine, coverage of the parsing modules).

    python tests/fuzz/run_atheris.py TARGET [libFuzzer flags...] [CORPUS_DIR...]

scripts/fuzz.sh is the usual way in (it passes the corpus, the dictionary and the time limit).
A Finding (see fuzz_targets.py) or a crash stops the run and writes ``crash-<sha1>`` (``-artifact_prefix``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))


#: What each target instruments for coverage (atheris): the modules whose code parses the input.
INSTRUMENT: dict[str, tuple[str, ...]] = {
    "manifest": ("deploykit.manifest", "deploykit.runtime.backends", "deploykit.runtime.session",
                 "deploykit.runtime.onnxruntime", "deploykit.runtime.detector", "deploykit.runtime.generator",
                 "deploykit.runtime.preprocess", "deploykit.runtime.masks"),
    "images": ("deploykit.runtime.images", "deploykit.runtime.generator", "PIL"),
    "calibration": ("deploykit.data.calibration", "deploykit.data.folders", "deploykit.runtime.images",
                    "deploykit.runtime.preprocess", "deploykit.runtime.generator", "PIL"),
    "trt_check": ("deploykit.export.trt_support", "deploykit.export.rules", "deploykit.manifest"),
    "triton_request": ("deploykit.serving.python_model", "deploykit.runtime.detector",
                       "deploykit.runtime.generator", "deploykit.runtime.session", "deploykit.runtime.preprocess"),
    "client_response": ("deploykit.serving.client", "deploykit.runtime.detector", "deploykit.runtime.generator",
                        "deploykit.runtime.preprocess", "deploykit.runtime.masks"),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in INSTRUMENT:
        sys.exit(f"usage: run_atheris.py TARGET [libFuzzer flags] [corpus dirs]; TARGET one of {sorted(INSTRUMENT)}")
    target = sys.argv.pop(1)
    # the parsing modules are imported (and so instrumented for coverage) before anything else imports them
    with atheris.instrument_imports(include=list(INSTRUMENT[target])):
        import importlib

        for module in INSTRUMENT[target]:
            importlib.import_module(module)
        if "PIL" in INSTRUMENT[target]:
            from PIL import Image

            Image.init()  # every format plugin, instrumented
        import fuzz_targets
    fuzz_targets.workdir()
    if target == "triton_request":
        fuzz_targets._models()
    atheris.Setup(sys.argv, fuzz_targets.TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
