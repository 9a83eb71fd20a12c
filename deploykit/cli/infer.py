"""``deploykit infer``: run an artifact (or a model on a Triton server) on image files."""

from __future__ import annotations

import click

from .common import command


@command("infer")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the results (one file set per input).")
@click.option("--min-score", default=0.3, show_default=True, type=float,  # runtime.infer.DEFAULT_MIN_SCORE
              help="Detector: draw and list only detections at or above this score (deploykit-detect: the same).")
@click.option("--instances", multiple=True, type=click.Path(dir_okay=False),
              help="SPADE: instance-id PNG per label map (same order), for models with instance edges.")
@click.option("--resize", is_flag=True, help="SPADE: resize label maps of another size with nearest.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--server", default=None, metavar="URL",
              help="Run on a Triton server instead (http://HOST:8000 or grpc://HOST:8001); ARTIFACT is then the "
                   "model's name in its repository (see `deploykit serve`).")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="--server: seconds per request.")
def infer_cmd(artifact, inputs, output_dir, min_score, instances, resize, threads, server, timeout):
    """Run ARTIFACT (an exported .onnx with its manifest) on images or label maps.

    Detector: writes `<stem>.json` (boxes in original-image pixels, scores, labels; Mask R-CNN:
    each mask as COCO RLE in `segmentation`) and `<stem>.png` (boxes and masks drawn) per image. SPADE: writes `<stem>.png`, the generated image.
    With --server URL the model runs on a Triton server (same answers as the local runtime).
    """
    model = None
    if server is not None:
        from ..serving.client import Client

        model = Client(server, artifact, timeout=timeout)
        kind, source = model.kind, f"{server} {artifact}"
    else:
        from ..manifest import read_manifest

        kind, source = read_manifest(artifact)["kind"], artifact
    if kind == "detector":
        from ..runtime.infer import infer_detector

        written = infer_detector(source, list(inputs), output_dir, min_score=min_score, threads=threads,
                                 detector=model)
    else:
        from ..runtime.generator import infer_generator

        written = infer_generator(source, list(inputs), output_dir, instance_paths=list(instances) or None,
                                  resize=resize, generator=model)
    click.echo(f"wrote {len(written)} files to {output_dir}")
