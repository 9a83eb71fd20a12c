"""``deploykit`` command line: one module per pipeline stage, each registering its commands.

Exit codes: 0 success, 1 a check failed (graph rule, parity, accuracy budget), 2 bad usage or bad
input. Errors are one line naming the thing, the expected and the got.

``deploykit.cli:main`` is the console script. Heavy imports (torch, ModelOpt, TensorRT) happen
inside the commands that need them, so ``deploykit --help`` and the runtime commands stay light.
"""

from __future__ import annotations

import click

from . import compare, demo, engine, export, infer, precision, serving  # noqa: F401  (register)
from .common import COMMANDS

#: The order `deploykit --help` lists the commands in: the pipeline's.
ORDER = ("models", "export", "quantize", "check", "build", "infer", "parity", "eval", "bench", "report", "triton",
         "serve", "demo")


class _PipelineGroup(click.Group):
    """Lists its commands in the order they were added (the pipeline's), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_PipelineGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="deploykit")
def main() -> None:
    """deploykit: export PyTorch vision models (Faster R-CNN, SPADE) to ONNX for TensorRT 11,
    run them with a thin runtime, and prove they compute what PyTorch computes.

    \b
    Typical flow:
      deploykit export fasterrcnn_demo -o demo.onnx      # ONNX + demo.json manifest
      deploykit infer demo.onnx photo.jpg -o out/         # detections JSON + drawn PNG
      deploykit demo                                       # the whole pipeline on the bundled demo models
    """


if sorted(ORDER) != sorted(COMMANDS):
    raise RuntimeError(f"deploykit.cli.ORDER {sorted(ORDER)} and the registered commands {sorted(COMMANDS)} differ")
for _name in ORDER:
    main.add_command(COMMANDS[_name])
