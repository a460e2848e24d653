"""What the server tests share: running an app in-process (uvicorn on a free loopback port in a
background thread), waiting for the engine to go idle, and checking OpenAI-shaped errors."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app, timeout: float = 20.0):
    """Yields the base URL (http://127.0.0.1:PORT) while `app` serves; stops it afterwards."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_idle(llm, timeout: float = 20.0) -> dict:
    """Engine stats once nothing runs or waits and every KV block is free again."""
    deadline = time.monotonic() + timeout
    while True:
        s = llm.llm_engine.get_stats()
        if s["num_running"] == 0 and s["num_waiting"] == 0 and s["num_free_blocks"] == s["num_total_blocks"]:
            return s
        assert time.monotonic() < deadline, f"engine not idle: {s}"
        time.sleep(0.02)


def assert_openai_error(resp, status: int) -> dict:
    """The error object of an OpenAI-shaped error response with this status."""
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return err
