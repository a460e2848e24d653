"""Helper for the client examples' --launch flag: runs `python -m llmcore.server` (the demo model
unless --model is given) for the duration of a `with` block.

    with launched_server("http://127.0.0.1:8000", device="auto"):
        ...  # talk to the server

It waits until GET /health answers 200, and at the end sends SIGTERM, which makes the server
finish what is in flight and exit 0.
"""

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from typing import Iterator, Optional


@contextmanager
def launched_server(root_url: str, device: str = "auto", model: Optional[str] = None,
                    timeout: float = 120.0) -> Iterator[None]:
    """Serves on the host and port of root_url (http://HOST:PORT) until the block ends."""
    url = urllib.parse.urlsplit(root_url)
    cmd = [sys.executable, "-m", "llmcore.server", "--host", url.hostname or "127.0.0.1",
           "--port", str(url.port or 80), "--device", device, "--log-level", "warning"]
    if model:
        cmd += ["--model", model]
    print("launching: python", " ".join(cmd[1:]), flush=True)
    server = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(f"{url.scheme}://{url.netloc}/health"):
            if server.poll() is not None:
                raise RuntimeError(f"the server exited with code {server.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready after {timeout:.0f} s")
            time.sleep(0.2)
        yield
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)  # drains, then exits
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _healthy(health_url: str) -> bool:
    try:
        with urllib.request.urlopen(health_url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
