"""Serving fixtures: model repositories from the session's demo exports, real Triton servers on loopback.

Server tests need the Triton bundled with nvidia-pytriton (`.ci/run` installs it) and
tritonclient (the `serving` extra); they skip with the reason where those are missing.
"""

from __future__ import annotations

import numpy as np
import pytest


def server_missing() -> str | None:
    """Why a bundled Triton server cannot run here, or None."""
    from deploykit.errors import BadInput
    from deploykit.serving.server import bundled_server, interpreter_libdir

    try:
        bundled_server()
        interpreter_libdir()
    except BadInput as e:
        return str(e)
    return None


@pytest.fixture(scope="module")
def triton():
    """``triton(repo, **kw) -> TritonServer``: started on free loopback ports; all stopped at module end."""
    pytest.importorskip("tritonclient.http", reason="tritonclient not installed (pip install 'deploykit[serving]')")
    reason = server_missing()
    if reason:
        pytest.skip(reason)
    from deploykit.serving.server import TritonServer, free_port

    started = []

    def start(repo, **kw):
        ports = dict(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        ports.update(kw.pop("ports", {}))
        server = TritonServer(repo, **ports, **kw)
        started.append(server)
        return server.start(timeout=180)

    yield start
    for server in started:
        server.stop(timeout=30)


@pytest.fixture(scope="session")
def same_detections():
    """``same_detections(got, want, what)``: assert exact equality of two Detections."""
    return _same_detections


def _same_detections(got, want, what=""):
    """Exact equality of two Detections (boxes, scores, labels, class names)."""
    assert len(got) == len(want), f"{what}: {len(got)} vs {len(want)} detections"
    np.testing.assert_array_equal(got.boxes, want.boxes, err_msg=what)
    np.testing.assert_array_equal(got.scores, want.scores, err_msg=what)
    np.testing.assert_array_equal(got.labels, want.labels, err_msg=what)
    assert got.boxes.dtype == want.boxes.dtype and got.labels.dtype == want.labels.dtype
    assert got.class_names == want.class_names
    assert (got.masks is None) == (want.masks is None), what
    if want.masks is not None:
        np.testing.assert_array_equal(got.masks, want.masks, err_msg=f"{what} masks")
