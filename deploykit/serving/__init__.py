"""Serving on NVIDIA Triton Inference Server (docs/serving.md).

- :func:`write_repository` (``deploykit triton``): a Triton model repository from artifacts;
- :class:`TritonServer` (``deploykit serve``): a real tritonserver on a repository;
- :class:`Client`: ``predict(image)`` / ``generate(label_map)`` over tritonclient (HTTP or gRPC),
  answering what the local :class:`~deploykit.runtime.Detector` / :class:`~deploykit.runtime.Generator` answer.

Imports nothing heavy: tritonclient is loaded when a Client is created.
"""

from .client import Client
from .repository import RepositoryOptions, write_repository
from .server import ServerError, TritonServer

__all__ = ["Client", "RepositoryOptions", "write_repository", "TritonServer", "ServerError"]
