"""The server's life cycle: SIGTERM/SIGINT drains (in-flight requests finish, new ones get 503 +
Retry-After, /health 503, exit 0), the drain deadline aborts what remains (each client still gets
a final chunk or response), the native engine's death (LLMCORE_FAULT_INJECT) fails in-flight
requests and exits non-zero, a --tensor-parallel-size that cannot split the model refused cleanly (exit 2), and a non-streamed
request whose client hangs up is aborted in the engine.

Signals, exit codes and the CLI run the real `python -m llmcore.server` in a subprocess on the
tiny llama_gqa checkpoint (CPU). Expected values come from the requests sent here (max_tokens,
prompt counts) and the engine's own counters; "in flight at the signal" is shown by responses
that arrive after a 503 for new work was already answered.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

import fixtures
from conftest import DEFAULT_LLM_KWARGS

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from server_util import free_port, serve, assert_openai_error  # noqa: E402  (needs uvicorn)

MAX_MODEL_LEN = 512
# max_tokens of a long request (EOS ignored): 0.3-0.8 s for one sequence alone on the CPU, ~2 s
# for 16 side by side. Leaves room for a ChatML prompt (~100 tokens) within MAX_MODEL_LEN.
LONG = 400
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}"
          "{% endif %}")


# -- helpers ---------------------------------------------------------------------------------------
class ServerProcess:
    """`python -m llmcore.server` on a free port; the log is kept in a file."""

    def __init__(self, model_dir, tmp_path, *flags: str, env_extra=None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"server-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if k != "LLMCORE_FAULT_INJECT"}
        env.update(env_extra or {})
        cmd = [sys.executable, "-m", "llmcore.server", "--model", str(model_dir), "--device", "cpu",
               "--dtype", "float32", "--port", str(self.port), "--max-model-len", str(MAX_MODEL_LEN),
               "--num-gpu-blocks-override", "1024", *flags]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}: {self.text()}"
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server did not start: {self.text()}"
            time.sleep(0.1)

    def metrics(self) -> dict:
        """Gauge name (without labels) -> value, from /metrics."""
        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("llmcore:") and "{" in line:
                name = line.split("{", 1)[0]
                out[name] = float(line.rsplit(" ", 1)[1])
        return out

    def wait_engine_busy(self, num_seqs: int, timeout: float = 30.0) -> None:
        """Until the engine holds at least num_seqs sequences (running or waiting)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            if m["llmcore:num_requests_running"] + m["llmcore:num_requests_waiting"] >= num_seqs:
                return
            assert time.monotonic() < deadline, f"engine never got {num_seqs} sequences: {m}"
            time.sleep(0.01)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running {timeout} s later: {self.text()}")

    def text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def server_process(checkpoint, tmp_path):
    started = []

    def start(*flags: str, env_extra=None, wait: bool = True) -> ServerProcess:
        sp = ServerProcess(checkpoint("llama_gqa"), tmp_path, *flags, env_extra=env_extra)
        started.append(sp)
        if wait:
            sp.wait_healthy()
        return sp

    yield start
    for sp in started:
        sp.close()


class StreamReader(threading.Thread):
    """Reads one SSE stream in the background: status, the data events and when each came."""

    def __init__(self, url: str, path: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.body = url, path, dict(body, stream=True)
        self.status = None
        self.events = []  # (monotonic time, payload string)
        self.error = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url + self.path, json=self.body, timeout=120) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append((time.monotonic(), line[len("data: "):]))
        except Exception as e:  # noqa: BLE001  (reported by the test)
            self.error = e

    def payloads(self) -> list:
        return [e for _, e in self.events]


class Poster(threading.Thread):
    """One non-streamed POST in the background; keeps the response and when it came."""

    def __init__(self, url: str, path: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.body = url, path, body
        self.response = None
        self.at = None
        self.error = None

    def run(self) -> None:
        try:
            self.response = httpx.post(self.url + self.path, json=self.body, timeout=120)
            self.at = time.monotonic()
        except Exception as e:  # noqa: BLE001
            self.error = e




def _content_chunks(events: list) -> list:
    assert events and events[-1] == "[DONE]", events[-3:]
    return [json.loads(e) for e in events[:-1]]


# -- 1. drain on SIGTERM / SIGINT ------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_in_flight_requests_then_exits_0(server_process, sig):
    sp = server_process("--shutdown-timeout", "60", "--chat-template", CHATML)
    # Eight streamed sequences and eight non-streamed ones: seconds of engine work.
    stream = StreamReader(sp.url, "/v1/completions", {"prompt": "The cat walks to", "max_tokens": LONG,
                                                      "ignore_eos": True, "n": 8})
    plain = Poster(sp.url, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Tell me about the river"}], "max_tokens": LONG,
        "ignore_eos": True, "n": 8})
    stream.start()
    plain.start()
    sp.wait_engine_busy(16)

    sp.proc.send_signal(sig)
    # New work is refused while the drain runs; probes see 503 too.
    deadline = time.monotonic() + 10
    while True:
        refused = httpx.post(sp.url + "/v1/completions", json={"prompt": "late", "max_tokens": 2}, timeout=10)
        if refused.status_code != 200:
            break
        assert time.monotonic() < deadline, "the server never started draining"
        time.sleep(0.01)
    refused_at = time.monotonic()
    err = assert_openai_error(refused, 503)
    assert err["code"] == "shutting_down"
    assert int(refused.headers["retry-after"]) >= 1
    assert httpx.get(sp.url + "/health", timeout=10).status_code == 503

    stream.join(timeout=60)
    plain.join(timeout=60)
    assert not stream.is_alive() and not plain.is_alive(), "an in-flight request hung"
    assert stream.error is None and plain.error is None, (stream.error, plain.error)
    # Both were still running when the 503 was answered, and finished in full.
    assert stream.status == 200
    assert stream.events[-1][0] > refused_at
    chunks = _content_chunks(stream.payloads())
    finishes = {c["choices"][0]["index"]: c["choices"][0]["finish_reason"] for c in chunks
                if c["choices"] and c["choices"][0]["finish_reason"]}
    assert finishes == {j: "length" for j in range(8)}
    assert plain.at > refused_at
    assert plain.response.status_code == 200, plain.response.text
    body = plain.response.json()
    assert [c["finish_reason"] for c in body["choices"]] == ["length"] * 8
    assert body["usage"]["completion_tokens"] == 8 * LONG

    assert sp.wait_exit(30) == 0
    # The two calls were in flight when the signal came (a polling request may have been too).
    drained = re.search(r"draining (\d+) request\(s\)", sp.text())
    assert drained and int(drained.group(1)) >= 2, sp.text()


def test_drain_deadline_aborts_what_remains(server_process):
    # One sequence at a time: the eight queued prompts need seconds, the drain allows 0.5.
    sp = server_process("--shutdown-timeout", "0.5", "--max-num-seqs", "1")
    prompts = ["a dog", "the farmer", "a bird", "the river"] * 2
    plain = Poster(sp.url, "/v1/completions", {"prompt": prompts, "max_tokens": LONG, "ignore_eos": True})
    plain.start()
    sp.wait_engine_busy(8)
    stream = StreamReader(sp.url, "/v1/completions", {"prompt": "The cat", "max_tokens": LONG,
                                                      "ignore_eos": True})
    stream.start()
    sp.wait_engine_busy(9)

    t0 = time.monotonic()
    sp.proc.send_signal(signal.SIGTERM)
    code = sp.wait_exit(30)
    elapsed = time.monotonic() - t0
    assert code == 0
    assert 0.5 <= elapsed < 15, elapsed
    stream.join(timeout=30)
    plain.join(timeout=30)
    assert stream.error is None and plain.error is None, (stream.error, plain.error)

    # The non-streamed call is answered, with the unfinished prompts marked "abort".
    assert plain.response.status_code == 200, plain.response.text
    reasons = [c["finish_reason"] for c in plain.response.json()["choices"]]
    assert len(reasons) == 8 and "abort" in reasons and set(reasons) <= {"length", "abort"}
    # The stream (queued behind them) gets a final chunk and [DONE].
    assert stream.status == 200
    chunks = _content_chunks(stream.payloads())
    assert chunks[-1]["choices"][0]["finish_reason"] == "abort"
    assert "aborted" in sp.text()


def test_second_signal_ends_the_drain_at_once(server_process):
    sp = server_process("--shutdown-timeout", "120", "--max-num-seqs", "1")
    plain = Poster(sp.url, "/v1/completions", {"prompt": ["a dog"] * 8, "max_tokens": LONG, "ignore_eos": True})
    plain.start()
    sp.wait_engine_busy(8)
    t0 = time.monotonic()
    sp.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    sp.proc.send_signal(signal.SIGTERM)
    assert sp.wait_exit(30) == 0
    assert time.monotonic() - t0 < 15  # nowhere near the 120 s drain
    plain.join(timeout=30)
    assert plain.response.status_code == 200
    assert "abort" in [c["finish_reason"] for c in plain.response.json()["choices"]]


def test_idle_server_exits_0_at_once_on_sigterm(server_process):
    sp = server_process()
    t0 = time.monotonic()
    sp.proc.send_signal(signal.SIGTERM)
    assert sp.wait_exit(20) == 0
    assert time.monotonic() - t0 < 10


# -- 2. engine death ---------------------------------------------------------------------------------
def test_engine_death_fails_in_flight_requests_and_exits_nonzero(server_process):
    # The step loop throws at its 300th step: the stream below is mid-generation by then, and
    # the chat call is sent once the stream has output, well before that step.
    sp = server_process(env_extra={"LLMCORE_FAULT_INJECT": "step=300"})
    stream = StreamReader(sp.url, "/v1/completions", {"prompt": "The cat", "max_tokens": LONG, "ignore_eos": True})
    stream.start()
    deadline = time.monotonic() + 30
    while len(stream.events) < 2:
        assert time.monotonic() < deadline and stream.error is None, stream.error
        time.sleep(0.002)
    plain = Poster(sp.url, "/v1/completions", {"prompt": "Hi", "max_tokens": LONG, "ignore_eos": True})
    plain.start()
    code = sp.wait_exit(30)
    assert code == 4, sp.text()
    stream.join(timeout=30)
    plain.join(timeout=30)
    assert stream.error is None and plain.error is None, (stream.error, plain.error)

    # The stream had started; it gets an error event, then [DONE].
    assert stream.status == 200
    events = stream.payloads()
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["error"]["type"] == "server_error"
    assert "fault injected at step 300" in last["error"]["message"]
    assert len(events) > 3  # some text came before the failure
    # The non-streamed call gets an OpenAI error object with 503 (before or at the death).
    err = assert_openai_error(plain.response, 503)
    assert err["type"] == "server_error"
    assert "engine has stopped" in sp.text()


def test_engine_death_turns_health_and_new_requests_503(llmcore, checkpoint, monkeypatch):
    """In process (no exit): what clients see once the engine is dead."""
    from llmcore.server import create_app

    monkeypatch.setenv("LLMCORE_FAULT_INJECT", "step=5")
    llm = llmcore.LLM(model=str(checkpoint("llama_gqa")), **dict(DEFAULT_LLM_KWARGS, max_model_len=MAX_MODEL_LEN))
    monkeypatch.delenv("LLMCORE_FAULT_INJECT")
    try:
        app = create_app(llm, served_model_names=["tiny"], chat_template=CHATML)
        with serve(app) as url:
            assert httpx.get(url + "/health", timeout=10).status_code == 200
            r = httpx.post(url + "/v1/completions", json={"prompt": "The cat", "max_tokens": 50}, timeout=30)
            err = assert_openai_error(r, 503)
            assert "fault injected at step 5" in err["message"]
            assert not llm.llm_engine.is_healthy()
            assert httpx.get(url + "/health", timeout=10).status_code == 503
            again = httpx.post(url + "/v1/chat/completions", timeout=30,
                               json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5})
            assert_openai_error(again, 503)
    finally:
        llm.shutdown()


@pytest.mark.parametrize("spec", ["step=0", "step=x", "rank=1", "step"])
def test_bad_fault_injection_spec_is_refused(llmcore, checkpoint, monkeypatch, spec):
    monkeypatch.setenv("LLMCORE_FAULT_INJECT", spec)
    with pytest.raises(ValueError, match="LLMCORE_FAULT_INJECT"):
        llmcore.LLM(model=str(checkpoint("llama_gqa")), **DEFAULT_LLM_KWARGS)


# -- 3. clients that hang up on non-streamed requests -------------------------------------------------
@pytest.fixture(scope="module")
def slow_llm(llmcore, checkpoint):
    # Each call below runs 16 sequences of LONG tokens side by side: seconds of work.
    llm = llmcore.LLM(model=str(checkpoint("llama_gqa")),
                      **dict(DEFAULT_LLM_KWARGS, max_model_len=MAX_MODEL_LEN, max_num_seqs=16))
    yield llm
    llm.shutdown()


@pytest.mark.parametrize("kind", ["completion", "chat_with_api_key"])
def test_non_streamed_request_aborted_when_client_leaves(slow_llm, kind):
    from llmcore.server import create_app

    key = "k-123" if kind == "chat_with_api_key" else None
    app = create_app(slow_llm, served_model_names=["tiny"], api_key=key, chat_template=CHATML)
    if kind == "completion":
        path, body, num_requests = "/v1/completions", {"prompt": ["The cat"] * 16, "max_tokens": LONG,
                                                       "ignore_eos": True}, 16
    else:
        path, body, num_requests = "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": LONG, "ignore_eos": True, "n": 16}, 1
    num_seqs = 16
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    before = fixtures.wait_idle(slow_llm, 20)
    with serve(app) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + path, json=body, headers=headers, timeout=httpx.Timeout(30, read=0.3))
        left_at = time.monotonic()
        after = fixtures.assert_all_blocks_free(slow_llm, timeout_s=20)
        freed_in = time.monotonic() - left_at
        assert app.state.serving.num_in_flight == 0
    finished = after["num_requests_finished"] - before["num_requests_finished"]
    aborted = after["num_requests_aborted"] - before["num_requests_aborted"]
    generated = after["num_generation_tokens"] - before["num_generation_tokens"]
    # Every engine request of the call finished by abort, short of its max_tokens.
    assert finished == num_requests and aborted == num_requests
    assert 0 < generated < num_seqs * LONG, generated
    assert freed_in < 5, freed_in


# -- 4. --tensor-parallel-size ---------------------------------------------------------------------
def test_tensor_parallel_size_that_cannot_split_the_model_exits_2(checkpoint, tmp_path):
    """llama_gqa has 4 attention heads: 3 ranks cannot share them. The server exits 2 with the
    engine's message naming the field (serving with --tensor-parallel-size 2 is tested in
    test_tensor_parallel.py)."""
    port = str(free_port())
    r = subprocess.run([sys.executable, "-m", "llmcore.server", "--model", str(checkpoint("llama_gqa")),
                        "--device", "cpu", "--port", port, "--tensor-parallel-size", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "num_attention_heads (4) must be divisible by tensor_parallel_size (3)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_negative_shutdown_timeout_exits_2(checkpoint):
    r = subprocess.run([sys.executable, "-m", "llmcore.server", "--model", str(checkpoint("llama_gqa")),
                        "--device", "cpu", "--port", str(free_port()), "--shutdown-timeout", "-1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "shutdown_timeout" in r.stderr and "Traceback" not in r.stderr


# -- the state machine, with a stand-in engine ----------------------------------------------------
class _FakeEngine:
    def __init__(self) -> None:
        self.healthy = True
        self.num_abort_calls = 0

    def is_healthy(self) -> bool:
        return self.healthy

    def abort_all(self) -> int:
        self.num_abort_calls += 1
        return 1

    class native:  # noqa: N801  (mimics LLMEngine.native)
        @staticmethod
        def error() -> str:
            return "boom"


def test_lifecycle_state_machine():
    from llmcore.server.lifecycle import ENGINE_DEAD_EXIT_CODE, FINAL_GRACE_S, ServerLifecycle

    eng = _FakeEngine()
    lc = ServerLifecycle(eng, shutdown_timeout=10)
    assert not lc.poll(now=0.0) and lc.healthy()
    lc.num_active = 2
    lc.request_drain("SIGTERM")
    assert not lc.poll(now=1.0)  # drain begins; deadline 11
    assert not lc.accepting and not lc.healthy()
    assert lc.refusal().status == 503 and lc.refusal().headers["Retry-After"] == "1"
    assert not lc.poll(now=10.9) and eng.num_abort_calls == 0
    assert not lc.poll(now=11.0) and eng.num_abort_calls == 1  # deadline: abort, keep waiting
    assert not lc.poll(now=11.5) and eng.num_abort_calls == 2  # and again for late arrivals
    assert lc.poll(now=11.0 + FINAL_GRACE_S)  # stragglers do not hold the exit forever
    assert lc.exit_code == 0

    lc = ServerLifecycle(_FakeEngine(), shutdown_timeout=10)
    lc.num_active = 1
    lc.request_drain("SIGTERM")
    assert not lc.poll(now=0.0)
    lc.num_active = 0
    assert lc.poll(now=0.1) and lc.exit_code == 0  # drained before the deadline

    eng = _FakeEngine()
    lc = ServerLifecycle(eng, shutdown_timeout=10)
    lc.num_active = 1
    lc.request_drain("SIGTERM")
    lc.request_drain("SIGTERM")
    assert not lc.poll(now=0.0) and eng.num_abort_calls == 1  # the second signal: deadline now

    eng = _FakeEngine()
    lc = ServerLifecycle(eng)
    lc.num_active = 1
    eng.healthy = False
    assert not lc.poll(now=0.0)
    assert lc.exit_code == ENGINE_DEAD_EXIT_CODE and lc.refusal().code == "engine_dead"
    lc.num_active = 0
    assert lc.poll(now=0.1)

    with pytest.raises(ValueError, match="shutdown_timeout"):
        ServerLifecycle(_FakeEngine(), shutdown_timeout=-1)
