"""A real ``mlflow server`` on loopback, for the tests that need one (REST API, UI in a browser,
Ray workers logging directly). One start-and-wait loop, so a change to how the server is started
or probed is made once."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from metallmix import config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


@contextmanager
def serve_mlflow(log_path: Path, *, artifacts: bool = True, timeout: float = 180) -> Iterator[str]:
    """Serve this test's tracking store on a free loopback port; yield its URL; stop it after.

    ``artifacts`` serves the store's ``artifacts/`` folder as the default artifact root (what
    ``make mlflow-ui`` does). Skips where the ``mlflow`` CLI is missing; fails with the server's
    log when it exits or is not healthy within ``timeout`` seconds.
    """
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if exe is None:
        pytest.skip("mlflow CLI not on PATH")
    port = free_port()
    store = config.tracking_uri()
    command = [exe, "server", "--backend-store-uri", store, "--host", "127.0.0.1"]
    if artifacts:
        root = Path(store.removeprefix("sqlite:///")).parent / "artifacts"
        command += ["--default-artifact-root", str(root)]
    command += ["--port", str(port), "--workers", "1"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"mlflow server exited:\n{log_path.read_text()[-3000:]}")
                try:
                    if get(f"{url}/health").strip() == b"OK":
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"mlflow server not up:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
