"""Running the server for tests and benchmarks: in a thread, or as a real process on a free
loopback port (its socket is bound here and handed to uvicorn with --fd, so no port race).

    url, stop = serve_in_thread(app)                             # any ASGI app, same process
    with ServerProcess("apps.server:create_app", env={"MOE_SUITE_PRELOAD": "chat"}) as server:
        server.url, server.pid, server.rss_bytes(); server.kill()  # kill -9; server.start() again
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]  # the repository: `python -m` finds apps/ and tests/ from here


def loopback_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1 (not yet listening)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def serve_in_thread(app: Any, timeout: float = 30) -> tuple[str, Callable[[], None]]:
    """Serve `app` with uvicorn in a daemon thread on a free loopback port: (base URL, stop)."""
    import uvicorn

    sock = loopback_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` (psutil when installed, else /proc/<pid>/status VmRSS)."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for process {pid}") from None
    return psutil.Process(pid).memory_info().rss


class ServerProcess:
    """`python -m uvicorn --factory <factory>` in a child process on a free loopback port.

    `env` is added to this process's environment (settings as MOE_SUITE_* variables); the child's
    output goes to `log` (a file path) or is discarded. `start()` waits until GET `wait_path`
    answers 200."""

    def __init__(self, factory: str = "apps.server:create_app", env: Mapping[str, str] | None = None,
                 log: str | Path | None = None, wait_path: str = "/healthz", start_timeout: float = 120,
                 extra_path: list[str | Path] = ()):
        self.factory, self.env, self.log = factory, dict(env or {}), log
        self.wait_path, self.start_timeout = wait_path, start_timeout
        self.extra_path = [str(p) for p in extra_path]
        self.proc: subprocess.Popen | None = None
        self.url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> ServerProcess:
        sock = loopback_socket()
        sock.listen(128)
        env = os.environ | self.env
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *self.extra_path, env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep)
        env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", self.factory, "--fd", str(sock.fileno()),
                 "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "5"],
                cwd=ROOT, env=env, pass_fds=[sock.fileno()], stdout=out, stderr=subprocess.STDOUT)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        sock.close()  # the child holds its own copy
        self._wait()
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode} while starting"
                                   + (f"; see {self.log}" if self.log else ""))
            try:
                if httpx.get(self.url + self.wait_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer {self.wait_path} within {self.start_timeout} s")

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def kill(self) -> None:
        """kill -9, no clean-up of any kind."""
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None or self.proc.poll() is not None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
