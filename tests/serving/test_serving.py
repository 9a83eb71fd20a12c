"""A real Triton server (the one bundled with nvidia-pytriton) on loopback answers as the local runtime:
held-out images over HTTP and gRPC give exactly the in-process Detector's detections and Generator's
images, for the Python-backend pipeline and for the native interface run on deploykit's Session;
bad requests get Triton's error, only they, and the server keeps serving."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deploykit.cli import main
from deploykit.data.spade_scenes import make_sample
from deploykit.data.splits import held_out_images
from deploykit.errors import BadInput
from deploykit.runtime import Detector, Generator
from deploykit.serving import Client
from deploykit.serving.repository import RepositoryOptions, write_repository

N_IMAGES, N_LABEL_MAPS = 20, 8
PROTOCOLS = ("http", "grpc")


@pytest.fixture(scope="module")
def server(triton, demo_detector_onnx, demo_detector_pixels_onnx, demo_generator_onnx, demo_maskrcnn_onnx,
           tmp_path_factory):
    """det / pix / gen / mask: deploykit's pipeline in the Python backend; *_graph: the graphs' own interface
    (what Triton's ONNX Runtime backend takes), run by deploykit's Session in the Python backend."""
    repo = tmp_path_factory.mktemp("repository")
    artifacts = [demo_detector_onnx, demo_detector_pixels_onnx, demo_generator_onnx, demo_maskrcnn_onnx]
    write_repository(artifacts, repo, names=["det", "pix", "gen", "mask"],
                     options=RepositoryOptions(backend="python", threads=1))
    write_repository(artifacts, repo, names=["det_graph", "pix_graph", "gen_graph", "mask_graph"],
                     options=RepositoryOptions(backend="python-graph", threads=1))
    return triton(repo)


def url(server, protocol):
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.fixture(scope="module")
def images():
    return held_out_images(N_IMAGES)


@pytest.fixture(scope="module")
def answers(demo_detector_onnx, demo_detector_pixels_onnx, images):
    """The in-process answers per artifact: same file, same backend (ONNX Runtime CPU), same thread count."""
    out = {}
    for key, artifact in (("det", demo_detector_onnx), ("pix", demo_detector_pixels_onnx)):
        with Detector(artifact, threads=1) as det:
            out[key] = [det.predict(image) for image in images]
    return out


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["mask", "mask_graph"])
def test_masks_over_the_wire_equal_the_in_process_detector(server, demo_maskrcnn_onnx, protocol, model,
                                                          same_detections):
    """Mask R-CNN: the pipeline sends each request's own masks (its detections, its image size); the graph
    interface sends the graph's pasted masks. Both give the in-process Detector's masks exactly."""
    photos = held_out_images(4)
    with Detector(demo_maskrcnn_onnx, threads=1) as det, Client(url(server, protocol), model) as client:
        for i, image in enumerate(photos):
            want = det.predict(image)
            assert want.masks is not None and len(want) > 0
            same_detections(client.predict(image), want, f"{protocol} {model} image {i} {image.shape}")


@pytest.fixture(scope="module")
def want(answers):
    return answers["det"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model, mode", [("det", "pixels"), ("det_graph", "tensor"), ("pix", "pixels"),
                                         ("pix_graph", "pixels")])
def test_held_out_detections_equal_the_in_process_detector(server, images, answers, protocol, model, mode,
                                                           same_detections):
    """`det`: pixels to the server, deploykit's pipeline there. `det_graph`: a tensor-input graph's own
    interface (the client preprocesses and maps boxes back, as it must for ONNX Runtime's backend).
    `pix` / `pix_graph`: a pixels-in graph, through the pipeline and as the native backend would run it
    (the image as it is, nothing done around the graph)."""
    want = answers[model.split("_")[0]]
    with Client(url(server, protocol), model) as client:
        assert client.kind == "detector" and client.mode == mode
        for i, image in enumerate(images):
            same_detections(client.predict(image), want[i], f"{protocol} {model} image {i} {image.shape}")
        for got, w in zip(client.predict(images[:3]), want[:3]):  # a list, as Detector.predict takes
            same_detections(got, w, "list")
    assert sum(len(w) for w in want) > 3 * N_IMAGES  # real detections were compared, not empty lists


def test_gray_and_rgba_images_convert_as_in_the_runtime(server, demo_detector_onnx, images, same_detections):
    gray = np.ascontiguousarray(images[0][:, :, 1])
    rgba = np.dstack([images[1], np.full(images[1].shape[:2], 7, np.uint8)])
    with Detector(demo_detector_onnx, threads=1) as det, Client(server.grpc_url, "det") as client:
        for image in (gray, rgba):
            same_detections(client.predict(image), det.predict(image), f"shape {image.shape}")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["gen", "gen_graph"])
def test_held_out_label_maps_give_the_in_process_images(server, demo_generator_onnx, protocol, model):
    samples = [make_sample(i, size=128, split="heldout") for i in range(N_LABEL_MAPS)]
    with Generator(demo_generator_onnx, threads=1) as gen, Client(url(server, protocol), model) as client:
        for i, s in enumerate(samples):
            got = client.generate(s.label, s.instance)
            assert got.dtype == np.uint8 and got.shape == (128, 128, 3)
            np.testing.assert_array_equal(got, gen.generate(s.label, s.instance), err_msg=f"label map {i}")
        small = make_sample(0, size=96, split="heldout")  # resized with nearest, as the runtime does
        np.testing.assert_array_equal(client.generate(small.label, small.instance, resize=True),
                                      gen.generate(small.label, small.instance, resize=True))
        with pytest.raises(BadInput, match="labels 0..9 or 255"):
            client.generate(np.full((128, 128), 42, np.uint8), samples[0].instance)


def test_infer_server_writes_what_local_infer_writes(server, demo_detector_onnx, images, tmp_path):
    for i in range(3):
        Image.fromarray(images[i]).save(tmp_path / f"img{i}.png")
    paths = [str(tmp_path / f"img{i}.png") for i in range(3)]
    runner = CliRunner()
    local = runner.invoke(main, ["infer", str(demo_detector_onnx), *paths, "-o", str(tmp_path / "local"),
                                 "--threads", "1"])
    remote = runner.invoke(main, ["infer", "det", *paths, "-o", str(tmp_path / "remote"),
                                  "--server", server.grpc_url])
    assert local.exit_code == 0 and remote.exit_code == 0, (local.output, remote.output)
    for i in range(3):
        a, b = (json.loads((tmp_path / d / f"img{i}.json").read_text()) for d in ("local", "remote"))
        assert a["detections"] == b["detections"] and a["detections"]
        assert np.array_equal(np.asarray(Image.open(tmp_path / "local" / f"img{i}.png")),
                              np.asarray(Image.open(tmp_path / "remote" / f"img{i}.png")))
    missing = runner.invoke(main, ["infer", "nosuchmodel", paths[0], "-o", str(tmp_path / "x"),
                                   "--server", server.http_url])
    assert missing.exit_code == 2 and "nosuchmodel" in missing.stderr and "Traceback" not in missing.output


BAD_REQUESTS = {
    "wrong dtype": ({"image": np.zeros((1, 64, 64, 3), np.float32)}, "FP32"),
    "wrong shape": ({"image": np.zeros((1, 64, 64, 4), np.uint8)}, "unexpected shape"),
    "wrong rank": ({"image": np.zeros((1, 64, 3), np.uint8)}, "unexpected shape"),
    "missing input": ({}, "expected 1 inputs but got 0"),
    "unknown input": ({"images": np.zeros((1, 64, 64, 3), np.uint8)}, "images"),
    # valid for Triton, refused by deploykit's pipeline in the Python backend (no side >= 1 px after resizing)
    "degenerate image": ({"image": np.zeros((1, 1, 4000, 3), np.uint8)}, "both sides >= 1 pixel"),
}


def test_bad_requests_fail_alone_and_the_server_keeps_serving(server, images, want, same_detections):
    """Bad requests interleaved with good ones from 4 other clients (so the dynamic batcher may group
    them): each bad one gets Triton's (or deploykit's) one-line error; every good one its right answer."""
    errors: dict[str, str] = {}
    good: list[Exception] = []
    stop = threading.Event()

    def good_client(t: int) -> None:
        try:
            with Client(server.http_url if t % 2 else server.grpc_url, "det") as client:
                k = 0
                while not stop.is_set() and k < 40:
                    i = (t * 7 + k) % len(images)
                    same_detections(client.predict(images[i]), want[i], f"good client {t} request {k}")
                    k += 1
        except Exception as e:  # noqa: BLE001 (reported below)
            good.append(e)

    threads = [threading.Thread(target=good_client, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    try:
        for protocol in PROTOCOLS:
            with Client(url(server, protocol), "det") as bad:
                for what, (feed, words) in BAD_REQUESTS.items():
                    with pytest.raises(BadInput) as info:
                        bad.infer(feed)
                    message = str(info.value)
                    assert words in message and "\n" not in message, (protocol, what, message)
                    errors[f"{protocol} {what}"] = message
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not good, good
    assert len(errors) == 2 * len(BAD_REQUESTS)
    assert server.alive()
    with Client(server.http_url, "det") as client:
        same_detections(client.predict(images[0]), want[0], "after the bad requests")
