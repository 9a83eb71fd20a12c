"""Run a real NVIDIA Triton Inference Server on a model repository: ``deploykit serve``.

Two servers are used:

- the ``tritonserver`` that the ``nvidia-pytriton`` wheel bundles (Triton 2.51 with the Python
  backend and its stubs for Python 3.8–3.13, no other backends): for repositories whose models
  all use the Python backend, such as ``deploykit triton --backend python`` writes;
- a ``tritonserver`` on ``PATH`` (NVIDIA's container) for repositories needing native backends.

For the bundled server this module prepares what PyTriton's own launcher prepares, and one thing
more: a backends directory holding the Python backend with the stub for the running interpreter's
Python version; ``LD_LIBRARY_PATH`` with the running interpreter's own ``lib`` folder first (else
the stub loads the first ``libpython3.X`` the loader finds, e.g. Debian's 3.11.2 under a pyenv
3.11.7, and models fail to load with ``'_thread.RLock' object has no attribute
'_recursion_count'``), then the wheel's libraries; ``PYTHONPATH`` with the running interpreter's
import path, so a ``model.py`` imports deploykit, numpy and onnxruntime from this environment.
Shared-memory regions get a per-server prefix and are removed after the server exits, however it
exits.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import BadInput, DeployKitError, expected_got

INSTALL_HINT = "pip install 'deploykit[serving]'"
SERVER_INSTALL_HINT = "pip install --no-deps nvidia-pytriton==0.7.0"


class ServerError(DeployKitError):
    """The server could not start, became unreachable or failed a request. Exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Bundled:
    """The pieces of the nvidia-pytriton wheel a server needs."""

    binary: Path
    python_backend: Path
    stub: Path
    libs: Path


def bundled_server() -> Bundled:
    """Locate the tritonserver inside the installed nvidia-pytriton wheel; BadInput with the fix if missing."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(expected_got("Triton Inference Server", f"the nvidia-pytriton package ({SERVER_INSTALL_HINT}: "
                                    "its bundled tritonserver, without its numpy<2 pin)", "not installed"))
    root = Path(list(spec.submodule_search_locations)[0])
    dist = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = Bundled(dist / "bin" / "tritonserver", dist / "backends" / "python",
                    dist / "python_backend_stubs" / version / "triton_python_backend_stub",
                    root.parent / "nvidia_pytriton.libs")
    for what, path in (("tritonserver binary", found.binary), ("Python backend", found.python_backend),
                       (f"Python {version} backend stub", found.stub), ("bundled libraries", found.libs)):
        if not path.exists():
            raise BadInput(expected_got(f"nvidia-pytriton {what}", str(path), "missing (a different wheel layout? "
                                        "nvidia-pytriton 0.7 bundles stubs for Python 3.8-3.13)"))
    return found


def interpreter_libdir() -> Path:
    """The folder holding the running interpreter's ``libpython3.X.so`` (BadInput if it has none)."""
    libdir = Path(sysconfig.get_config_var("LIBDIR") or Path(sys.base_prefix) / "lib")
    name = sysconfig.get_config_var("LDLIBRARY") or f"libpython{sys.version_info.major}.{sys.version_info.minor}.so"
    if not (libdir / name).exists() and not list(libdir.glob(f"libpython{sys.version_info.major}."
                                                             f"{sys.version_info.minor}*.so*")):
        raise BadInput(expected_got("the running Python's shared library", f"{name} in {libdir} (the Python "
                                    "backend stub links libpython)", "none (a Python built without "
                                    "--enable-shared; use one with a shared libpython)"))
    return libdir


def _import_path() -> list[str]:
    """The running interpreter's import path (absolute folders only), deploykit's own folder first."""
    import deploykit

    here = str(Path(deploykit.__file__).resolve().parent.parent)
    paths = [here] + [p for p in sys.path if p and os.path.isabs(p) and os.path.isdir(p)]
    return list(dict.fromkeys(paths))


def server_environment(bundled: Bundled, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the bundled tritonserver and its Python stubs (see the module docstring)."""
    env = dict(os.environ if base is None else base)

    def prepend(key: str, *values: str) -> None:
        old = [p for p in env.get(key, "").split(os.pathsep) if p]
        env[key] = os.pathsep.join(list(dict.fromkeys([*values, *old])))

    prepend("LD_LIBRARY_PATH", str(interpreter_libdir()), str(bundled.libs))
    prepend("PYTHONPATH", *_import_path())
    prepend("PATH", str(Path(sys.executable).parent))
    env.pop("PYTHONHOME", None)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def repository_backends(repo: str | os.PathLike) -> dict[str, str]:
    """``{model name: backend or platform}`` from each ``REPO/<model>/config.pbtxt`` (top-level fields)."""
    repo = Path(repo)
    found = {}
    for config in sorted(repo.glob("*/config.pbtxt")):
        text = config.read_text(errors="replace")
        m = re.search(r'^(?:backend|platform)\s*:\s*"([^"]*)"', text, re.M)
        found[config.parent.name] = m.group(1) if m else "?"
    return found


class TritonServer:
    """A tritonserver process on ``repository``; use as a context manager or call :meth:`start` / :meth:`stop`.

    Args:
        repository: the model repository directory.
        http_port, grpc_port, metrics_port: ports to listen on (8000, 8001, 8002).
        host: address to listen on (127.0.0.1; 0.0.0.0 for every interface).
        binary: ``"bundled"`` (nvidia-pytriton's), ``"auto"`` (bundled when every model uses the Python
            backend, else ``tritonserver`` on PATH), or a path to a ``tritonserver``.
        exit_timeout: seconds Triton waits for in-flight requests when stopped (30).
        log: file for the server's output (a temporary file by default; see :attr:`log_path`).
    """

    def __init__(self, repository: str | os.PathLike, *, http_port: int = 8000, grpc_port: int = 8001,
                 metrics_port: int = 8002, host: str = "127.0.0.1", binary: str = "auto", exit_timeout: int = 30,
                 log: str | os.PathLike | None = None, extra_args: Sequence[str] = ()) -> None:
        self.repository = Path(repository)
        if not self.repository.is_dir():
            raise BadInput(expected_got(f"model repository {repository}", "a directory", "no such directory"))
        self.models = repository_backends(self.repository)
        if not self.models:
            raise BadInput(expected_got(f"model repository {repository}", "<model>/config.pbtxt entries "
                                        "(from deploykit triton)", "none"))
        ports = {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
        for flag, port in ports.items():
            if not isinstance(port, int) or not 0 < port < 65536:
                raise BadInput(expected_got(flag, "a port 1..65535", repr(port)))
        if len(set(ports.values())) != 3:
            raise BadInput(expected_got("ports", "three different ports", sorted(ports.values())))
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        self.exit_timeout = exit_timeout
        self.extra_args = list(extra_args)
        self._binary_choice = binary
        self._log_choice = Path(log) if log else None
        self.process: subprocess.Popen | None = None
        self._workspace: Path | None = None
        self._shm_prefix = f"deploykit_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.log_path: Path | None = None
        self._log_text = ""
        self.kind = ""

    # -- endpoints ---------------------------------------------------------------------------
    @property
    def client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        return f"http://{self.client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.client_host}:{self.metrics_port}/metrics"

    # -- lifecycle ---------------------------------------------------------------------------
    def _command(self) -> tuple[list[str], dict[str, str]]:
        native = sorted(f"{m} ({b})" for m, b in self.models.items() if b != "python")
        choice = self._binary_choice
        if choice == "auto":
            choice = "path" if native else "bundled"
        self._workspace = Path(tempfile.mkdtemp(prefix="deploykit-triton-"))
        common = [f"--model-repository={self.repository.resolve()}", f"--http-address={self.host}",
                  f"--grpc-address={self.host}", f"--metrics-address={self.host}", f"--http-port={self.http_port}",
                  f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}",
                  "--disable-auto-complete-config", f"--exit-timeout-secs={self.exit_timeout}",
                  f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}"]
        if choice == "bundled":
            if native:
                raise BadInput(expected_got(f"models of {self.repository}", "only Python-backend models for the "
                                            "Triton bundled with nvidia-pytriton (it has no other backend)",
                                            f"{', '.join(native)}: run them on NVIDIA's Triton container "
                                            "(docs/serving.md) or put its tritonserver on PATH"))
            bundled = bundled_server()
            backends = self._workspace / "backends"
            python = backends / "python"
            python.mkdir(parents=True)
            for item in bundled.python_backend.iterdir():
                if item.is_file():
                    shutil.copy2(item, python / item.name)
            shutil.copy2(bundled.stub, python / "triton_python_backend_stub")
            self.kind = "Triton 2.51 bundled with nvidia-pytriton (Python backend)"
            return [str(bundled.binary), *common, f"--backend-directory={backends}"], server_environment(bundled)
        binary = shutil.which("tritonserver") if choice == "path" else choice
        if not binary or not Path(binary).is_file():
            raise BadInput(expected_got("tritonserver", "a Triton Inference Server on PATH for "
                                        + (", ".join(native) or "this repository"),
                                        "none found (NVIDIA's container has one: see docs/serving.md)"))
        self.kind = f"{binary}"
        return [binary, *common], dict(os.environ)

    def start(self, timeout: float = 120.0) -> "TritonServer":
        """Start the server and wait until it reports ready (all models loaded); ServerError on failure."""
        if self.process is not None:
            raise BadInput(expected_got("server", "not started yet", "already started"))
        for port in (self.http_port, self.grpc_port, self.metrics_port):
            if _listening(self.client_host, port):
                raise ServerError(expected_got(f"port {port} on {self.client_host}", "free", "in use"))
        command, env = self._command()
        self.log_path = self._log_choice or self._workspace / "tritonserver.log"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop(timeout=10)
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll() if self.process else None
            if code is not None:
                raise ServerError(expected_got(f"tritonserver on {self.repository}", "ready",
                                               f"exited with code {code}: {self.failure()}"))
            if _ready(f"{self.http_url}/v2/health/ready"):
                return
            if time.monotonic() > deadline:
                raise ServerError(expected_got(f"tritonserver on {self.repository}", f"ready within {timeout:g} s",
                                               f"not ready: {self.failure() or 'no error logged'}"))
            time.sleep(0.2)

    def failure(self) -> str:
        """The server log's error lines, in one line (why a model did not load)."""
        lines = self.log().splitlines()
        errors = [ln for ln in lines if ln.startswith("E") and "CudaDriverHelper" not in ln
                  or "failed to load" in ln or ln.startswith("error:")]
        text = " | ".join(dict.fromkeys(e.split('] ', 1)[-1].strip() for e in errors))
        return text[:1500]

    def log(self) -> str:
        """The server's output so far (kept after :meth:`stop`)."""
        if self.log_path is not None and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return self._log_text

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM and return: Triton stops taking requests and finishes those in flight. It exits
        once no model has work left and clients have closed their HTTP connections, or after
        ``exit_timeout`` s (exit code 1, "Exit timeout expired"). :meth:`stop` waits for that."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float | None = None) -> int | None:
        """:meth:`terminate`, wait for the exit (SIGKILL after ``timeout``, default exit_timeout + 15 s), remove
        the workspace, shared memory and any leftover stub. Returns tritonserver's exit code."""
        code = None
        if self.process is not None:
            self.terminate()
            try:
                code = self.process.wait(timeout=self.exit_timeout + 15 if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        self._cleanup()
        return code

    def kill(self) -> None:
        """SIGKILL the tritonserver process (a crash: no clean shutdown; for fault tests). :meth:`stop`
        then removes what it left: its Python stubs and shared memory."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _cleanup(self) -> None:
        if self.process is not None:  # stubs the server left behind (it crashed or was killed) go too
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            deadline = time.monotonic() + 10
            while group_members(self.process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        for region in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
            try:
                region.unlink()
            except OSError:
                pass
        if self._workspace is not None:
            if self.log_path is not None and self.log_path.is_relative_to(self._workspace) and self.log_path.exists():
                self._log_text = self.log_path.read_text(errors="replace")  # still readable after stop
            shutil.rmtree(self._workspace, ignore_errors=True)
            self._workspace = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``, from /proc (Linux)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux), so no server outlives deploykit."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serve_until_signal(server: TritonServer, echo, timeout: float = 300.0) -> int:
    """Start ``server``, print its endpoints, run until SIGINT/SIGTERM, then stop it cleanly.

    Returns the exit code for the CLI: 0 after a signal, 2 when the server died by itself.
    """
    import threading

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, frame):  # noqa: ARG001
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        echo(f"starting {server.kind or 'tritonserver'} on {server.repository} ...")
        server.start(timeout=timeout)
        echo(f"ready: {server.kind}")
        echo(f"  HTTP     {server.http_url}")
        echo(f"  gRPC     {server.grpc_url}")
        echo(f"  metrics  {server.metrics_url}")
        for name, backend in server.models.items():
            echo(f"  model    {name} ({backend})")
        echo(f"  e.g.     deploykit infer --server {server.http_url} {next(iter(server.models))} IMAGE... -o out/")
        echo("Ctrl-C or SIGTERM stops it; requests in flight complete first.")
        while not stop.wait(0.5):
            if not server.alive():
                echo(f"error: tritonserver exited with code {server.process.returncode}: {server.failure()}")
                return 2
        echo(f"stopping ({signal.Signals(received[0]).name}): requests in flight complete; clients' open HTTP "
             f"connections are waited for up to {server.exit_timeout} s ...")
        code = server.stop()
        echo(f"stopped (tritonserver exit code {code}" + (": exit timeout expired" if code == 1 else "") + ")")
        return 0
    finally:
        server.stop(timeout=10)  # idempotent; kills what a crash left behind
        for s, handler in previous.items():
            signal.signal(s, handler)
