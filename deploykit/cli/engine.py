"""``deploykit check`` (TensorRT readiness on the CPU) and ``deploykit build`` (a TensorRT 11 engine)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import expected_got
from .common import command, parse_size


@command("check")
@click.argument("onnx_model", metavar="MODEL.onnx", type=click.Path())
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the report (ops, plugins, every violation) as JSON to this file.")
def check_cmd(onnx_model, json_path):
    """Check MODEL.onnx for TensorRT, without TensorRT: every node's op, element types and
    attributes inside the TensorRT ONNX parser's support matrix, shape tensors computed from
    shapes only, no data-dependent output shapes, and (from the manifest) no --ort-lowering graph.

    Exit 0 when ready, 1 listing every violation (node, op, what, expected, got), 2 for bad
    input. The table and its source version: docs/tensorrt.md.
    """
    from ..errors import CheckFailed
    from ..export.trt_support import check_file, report_text
    from ..fileio import write_json_atomic

    readiness = check_file(onnx_model)
    for line in report_text(readiness, Path(onnx_model).name):
        click.echo(line)
    if json_path:
        write_json_atomic(json_path, {"file": str(onnx_model), **readiness.to_json()})
    if not readiness.ok:
        raise CheckFailed(expected_got(f"ONNX model {onnx_model}", "a graph ready for TensorRT",
                                       f"{len(readiness.violations)} violation(s), listed above"))

@command("build")
@click.argument("onnx_model", metavar="MODEL.onnx", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="Engine to write (MODEL.plan or MODEL.engine); its manifest goes beside it (MODEL.plan.json).")
@click.option("--workspace-mb", default=1024, show_default=True, type=int, help="TensorRT workspace limit (MiB).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Timing cache file: read if it exists, written after the build (reuse it across builds).")
@click.option("--verbose", is_flag=True, help="TensorRT's verbose log.")
@click.option("--opt-image-size", default=None, metavar="HxW",
              help="Dynamic-size detectors: the profile's opt image size (default: the manifest's, "
                   "preprocessing.image_size_range.opt); min and max are the manifest's range.")
def build_cmd(onnx_model, out, workspace_mb, timing_cache, verbose, opt_image_size):
    """Compile MODEL.onnx (exported by deploykit, with its manifest) into a TensorRT 11 engine.

    Strongly typed: the precision is the ONNX graph's. The optimisation profile comes
    from the manifest: its batch range and, for dynamic-size detectors, its image size
    range (min/opt/max; --opt-image-size sets opt). The graph is first checked for TensorRT on the CPU
    (as `deploykit check` does): a graph TensorRT's parser would refuse, or an --ort-lowering
    graph (ONNX Runtime CPU only), stops with exit 1 before TensorRT is needed. Needs
    `pip install 'deploykit[tensorrt]'` and an NVIDIA GPU.
    """
    from ..engine.build import build_engine

    plan = build_engine(onnx_model, out, workspace_mb=workspace_mb, timing_cache=timing_cache, verbose=verbose,
                        echo=lambda m: click.echo(m, err=True),
                        opt_image_size=parse_size(opt_image_size, "--opt-image-size"))
    click.echo(f"wrote {plan}")
