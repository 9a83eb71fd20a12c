"""``deploykit triton`` (model repositories) and ``deploykit serve`` (a real Triton Inference Server)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import BadInput, expected_got
from .common import command


@command("triton")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "repo", required=True, type=click.Path(file_okay=False),
              help="Model repository to write into (created if missing): one REPO/<name>/ per artifact.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "python", "python-graph"]), default=None,
              help="onnxruntime (.onnx) / tensorrt (.plan): Triton's native backends, the graph as exported. "
                   "python: deploykit's runtime in Triton's Python backend, pixels in, detections in original "
                   "pixels out (runs on the Triton bundled with nvidia-pytriton, CPU). python-graph: the native "
                   "interface on deploykit's runtime. Default: onnxruntime for .onnx, tensorrt for .plan.")
@click.option("--name", "names", multiple=True, help="Model name, once per artifact in order. Default: the file stem.")
@click.option("--version", default=1, show_default=True, type=int, help="Model version directory.")
@click.option("--max-batch-size", type=int, default=None,
              help="Largest batch Triton forms. Default: the graph's batch range max (native backends; a fixed "
                   "batch means no Triton batching), 8 for python.")
@click.option("--preferred-batch-size", "preferred", multiple=True, type=int,
              help="Dynamic batcher's preferred batch size (repeatable). Default: none (as large as ready).")
@click.option("--max-queue-delay-us", default=1000, show_default=True, type=int,
              help="How long the dynamic batcher waits to fill a batch (µs).")
@click.option("--instances", default=1, show_default=True, type=int, help="Model instances per GPU (or on the CPU).")
@click.option("--kind", type=click.Choice(["gpu", "cpu", "auto"]), default=None,
              help="Instance kind. Default: gpu for native backends, cpu for python.")
@click.option("--gpus", default=None, help="Comma-separated GPU ids for the instances. Default: all GPUs.")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="A model_warmup request with a sample input (files in REPO/<name>/warmup/).")
@click.option("--threads", type=int, default=None,
              help="Intra-op threads per instance (ONNX Runtime). Default: the runtime's (all cores).")
@click.option("--ort-tensorrt/--no-ort-tensorrt", default=True, show_default=True,
              help="onnxruntime backend: TensorRT execution accelerator (precision is the graph's own).")
@click.option("--trt-workspace-mb", default=1024, show_default=True, type=int,
              help="onnxruntime backend's TensorRT accelerator: workspace limit (MiB).")
@click.option("--trt-engine-cache", default=None, metavar="DIR",
              help="onnxruntime backend's TensorRT accelerator: engine cache directory on the server. Default: off.")
@click.option("--overwrite", is_flag=True, help="Replace model directories that exist.")
def triton_cmd(artifacts, repo, backend, names, version, max_batch_size, preferred, max_queue_delay_us, instances,
               kind, gpus, warmup, threads, ort_tensorrt, trt_workspace_mb, trt_engine_cache, overwrite):
    """Write a Triton Inference Server model repository from ARTIFACTS (.onnx / .plan with manifests).

    \b
    REPO/<name>/config.pbtxt   inputs/outputs with Triton types and dims (batch axis -> max_batch_size,
                               dynamic sides -> -1), dynamic_batching, instance_group, model_warmup
    REPO/<name>/labels.txt     detector class names
    REPO/<name>/1/model.onnx | model.plan | model.py (+ the artifact)
    Serve it with `deploykit serve REPO` (python backends, here) or NVIDIA's Triton container
    (docs/serving.md).
    """
    from ..serving.repository import RepositoryOptions, write_repository

    try:
        gpu_ids = tuple(int(g) for g in gpus.split(",")) if gpus else ()
    except ValueError:
        raise BadInput(expected_got("--gpus", "comma-separated integers such as 0,1", repr(gpus))) from None
    options = RepositoryOptions(backend=backend, version=version, max_batch_size=max_batch_size,
                                preferred_batch_sizes=tuple(preferred), max_queue_delay_us=max_queue_delay_us,
                                instances=instances, kind=kind, gpus=gpu_ids, warmup=warmup, threads=threads,
                                ort_tensorrt=ort_tensorrt, trt_workspace_mb=trt_workspace_mb,
                                trt_engine_cache=trt_engine_cache)
    for path in write_repository(list(artifacts), repo, names=list(names) or None, options=options,
                                 overwrite=overwrite):
        config = (path / "config.pbtxt").read_text()
        which = next((ln.split(":", 1)[1].strip().strip('"') for ln in config.splitlines()
                      if ln.startswith(("backend:", "platform:"))), "?")
        click.echo(f"wrote {path}/ ({which})")

@command("serve")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--http-port", default=8000, show_default=True, type=int, help="HTTP/REST port.")
@click.option("--grpc-port", default=8001, show_default=True, type=int, help="gRPC port.")
@click.option("--metrics-port", default=8002, show_default=True, type=int, help="Prometheus metrics port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, e.g. in a container).")
@click.option("--server", "binary", default="auto", show_default=True,
              help="auto: the Triton bundled with nvidia-pytriton when every model uses the Python backend, "
                   "else `tritonserver` on PATH; bundled; or a path to a tritonserver.")
@click.option("--threads", type=int, default=None, help="ARTIFACT sources: intra-op threads per instance.")
@click.option("--max-batch-size", type=int, default=8, show_default=True,
              help="ARTIFACT sources: largest batch the dynamic batcher forms.")
@click.option("--exit-timeout", default=30, show_default=True, type=int,
              help="On SIGINT/SIGTERM, seconds to let requests in flight complete.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="Write the server's log to this file (default: a temporary file).")
def serve_cmd(sources, http_port, grpc_port, metrics_port, host, binary, threads, max_batch_size, exit_timeout,
              log_path):
    """Serve SOURCES on a real Triton Inference Server until Ctrl-C / SIGTERM.

    \b
    SOURCES: one model repository (from `deploykit triton`), or artifacts (.onnx with manifests),
    which are served through Triton's Python backend on deploykit's runtime (CPU).
    Waits until every model is ready, prints the endpoints, stops cleanly: requests in
    flight complete. Needs `pip install 'deploykit[serving]'`; see docs/serving.md.
    """
    import shutil
    import tempfile

    from ..serving.repository import RepositoryOptions, write_repository
    from ..serving.server import TritonServer, serve_until_signal

    paths = [Path(s) for s in sources]
    workdir = None
    if len(paths) == 1 and paths[0].is_dir():
        repo = paths[0]
    elif any(p.is_dir() for p in paths):
        raise BadInput(expected_got("SOURCES", "one model repository or artifact files", "a mix or several folders"))
    else:
        workdir = Path(tempfile.mkdtemp(prefix="deploykit-serve-"))
        repo = workdir / "repository"
        write_repository(paths, repo, options=RepositoryOptions(backend="python", threads=threads,
                                                                max_batch_size=max_batch_size))
    try:
        server = TritonServer(repo, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, host=host,
                              binary=binary, exit_timeout=exit_timeout, log=log_path)
        code = serve_until_signal(server, lambda m: click.echo(m, err=m.startswith("error")))
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)
