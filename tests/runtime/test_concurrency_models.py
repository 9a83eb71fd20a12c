"""One Detector / Generator shared by 8 threads × 50 requests with distinct inputs: every answer
equals the single-threaded one (issue 5 §8), on the real exported demo models."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.data.splits import held_out_images
from deploykit.runtime import Detector, Generator

THREADS, REQUESTS = 8, 50


@pytest.mark.slow
def test_detector_8_threads_x_50_requests(demo_detector_onnx, run_in_threads):
    path = demo_detector_onnx  # fasterrcnn_demo at 320 x 320 (tests/conftest.py)
    base = held_out_images(40)
    # 400 distinct inputs: 40 held-out images in 10 flips/crops each
    inputs = [[np.ascontiguousarray(_variant(base[(t * REQUESTS + i) % 40], (t * REQUESTS + i) // 40))
               for i in range(REQUESTS)] for t in range(THREADS)]
    with Detector(path, threads=1) as det:
        want = [[det.predict(x) for x in row] for row in inputs]
        got = [[None] * REQUESTS for _ in range(THREADS)]

        def worker(t):
            for i, x in enumerate(inputs[t]):
                got[t][i] = det.predict(x)

        run_in_threads(worker, THREADS)
    for t in range(THREADS):
        for i in range(REQUESTS):
            np.testing.assert_array_equal(got[t][i].boxes, want[t][i].boxes, err_msg=f"thread {t} request {i}")
            np.testing.assert_array_equal(got[t][i].scores, want[t][i].scores)
            np.testing.assert_array_equal(got[t][i].labels, want[t][i].labels)


@pytest.mark.slow
def test_generator_8_threads_x_50_requests(demo_generator_onnx, run_in_threads):
    from deploykit.data.spade_scenes import make_sample

    path = demo_generator_onnx
    samples = [make_sample(i, size=128, split="heldout") for i in range(THREADS * REQUESTS)]
    with Generator(path, threads=1) as gen:
        want = [gen.generate(s.label, s.instance) for s in samples]
        got = [None] * len(samples)

        def worker(t):
            for i in range(REQUESTS):
                k = t * REQUESTS + i
                got[k] = gen.generate(samples[k].label, samples[k].instance)

        run_in_threads(worker, THREADS)
    for k in range(len(samples)):
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"request {k}")


def _variant(img: np.ndarray, k: int) -> np.ndarray:
    """Distinct but valid inputs from one image: flips and a shrinking crop."""
    out = img[:, ::-1] if k % 2 else img
    out = out[::-1] if (k // 2) % 2 else out
    c = 2 * (k // 4)
    return out[c:out.shape[0] - c, c:out.shape[1] - c]
