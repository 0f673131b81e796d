"""Start kembed servers as real processes on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    http_port: int
    grpc_port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(
    module: str,
    args: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    ready_path: str | None = None,
    timeout: float = 120,
    poll_interval: float = 0.2,
    http_port: int | None = None,
) -> Server:
    """Runs `python -m module` with kserve's port flags and waits for `ready_path` to say 200
    (polled every `poll_interval` seconds: small when the start itself is being timed). `http_port`:
    one chosen beforehand (free_port()), for a peer started at the same time that must know it."""
    http_port, grpc_port = http_port or free_port(), free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--http_port", str(http_port), "--grpc_port", str(grpc_port), *args],
        cwd=ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(process, f"http://127.0.0.1:{http_port}", http_port, grpc_port, log_path)
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1) as client:  # one client: a new one per poll costs the starting server CPU
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{module} exited with {process.returncode}:\n{server.log()[-4000:]}")
            try:
                if client.get(server.url + (ready_path or "/v2/health/ready")).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(poll_interval)
    server.stop(signal.SIGKILL)
    raise TimeoutError(f"{module} not ready in {timeout}s:\n{server.log()[-4000:]}")
