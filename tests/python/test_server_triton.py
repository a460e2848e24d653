"""The Triton (TensorRT-LLM backend) endpoints over real HTTP: /v2/models/{model}/generate,
generate_stream, stats, metadata and health, on a tiny llama checkpoint on the CPU.

Expected texts come from LLM.generate on the same engine (an independent path: no server, no
Triton field mapping), with greedy parameters because a Triton request without top_k/top_p is
greedy in TensorRT-LLM. bad_words are checked against a reference built here step by step: one
LLM.generate call per token, with logit_bias -100 on every token that would complete a bad word
given the tokens before it (prompt included), which is what a per-step ban does. Statistics are
checked against the requests this file makes and the durations its client measures.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import DEFAULT_LLM_KWARGS

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from server_util import serve  # noqa: E402  (needs uvicorn)

MODEL = "tiny-trt"
API_KEY = "triton-key"
MAX_MODEL_LEN = 512
PROMPT = "The cat walks to the house"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def llm(llmcore, checkpoint):
    kwargs = dict(DEFAULT_LLM_KWARGS, num_gpu_blocks_override=256, max_model_len=MAX_MODEL_LEN)
    llm = llmcore.LLM(model=str(checkpoint("llama_gqa")), **kwargs)
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def url(llm):
    from llmcore.server import create_app

    app = create_app(llm, served_model_names=[MODEL], api_key=API_KEY)
    with serve(app) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:
        yield c


def _greedy(llm, llmcore, prompt, max_tokens, **kw):
    sp = llmcore.SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)
    return llm.generate(prompt, sp, use_tqdm=False)[0]


def _events(resp) -> list:
    """The JSON objects of an SSE body; every event must be exactly `data: {json}\\n\\n`."""
    body = resp.text
    assert body.endswith("\n\n"), body[-50:]
    events = []
    for chunk in body[:-2].split("\n\n"):
        assert chunk.startswith("data: "), chunk
        assert chunk != "data: [DONE]"  # Triton sends no sentinel
        events.append(json.loads(chunk[len("data: "):]))
    return events


def _stream(client, body, path=f"/v2/models/{MODEL}/generate_stream") -> list:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return _events(r)


def _assert_triton_error(resp, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return body["error"]


# -- generate / generate_stream -------------------------------------------------------------------
def test_generate_matches_llm_generate_and_includes_the_prompt(client, llm, llmcore):
    exp = _greedy(llm, llmcore, PROMPT, 12).outputs[0].text
    assert exp
    r = client.post(f"/v2/models/{MODEL}/generate", json={"text_input": PROMPT, "max_tokens": 12})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    # TensorRT-LLM's default (exclude_input_in_output=false): the prompt, then the output.
    assert body == {"model_name": MODEL, "model_version": "1", "text_output": PROMPT + exp}
    r = client.post(f"/v2/models/{MODEL}/generate",
                    json={"text_input": PROMPT, "max_tokens": 12, "exclude_input_in_output": True})
    assert r.json()["text_output"] == exp


def test_stream_deltas_concatenate_to_the_output(client, llm, llmcore):
    exp = _greedy(llm, llmcore, PROMPT, 16).outputs[0].text
    events = _stream(client, {"text_input": PROMPT, "max_tokens": 16})
    assert len(events) > 1
    for e in events:
        assert set(e) == {"model_name", "model_version", "text_output"}
        assert e["model_name"] == MODEL and e["model_version"] == "1"
    # Streamed events never repeat the input, whatever exclude_input_in_output says.
    assert "".join(e["text_output"] for e in events) == exp
    full = client.post(f"/v2/models/{MODEL}/generate",
                       json={"text_input": PROMPT, "max_tokens": 16, "exclude_input_in_output": True})
    assert full.json()["text_output"] == exp


def test_generate_stream_with_stream_false_sends_one_event(client, llm, llmcore):
    exp = _greedy(llm, llmcore, PROMPT, 8).outputs[0].text
    events = _stream(client, {"text_input": PROMPT, "max_tokens": 8, "stream": False})
    assert events == [{"model_name": MODEL, "model_version": "1", "text_output": PROMPT + exp}]


def test_parameters_object_unknown_fields_and_form_content_type(client, llm, llmcore):
    exp = _greedy(llm, llmcore, PROMPT, 6).outputs[0].text
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 6, "exclude_input_in_output": True,
                                                 "some_backend_parameter": 3},
            "sequence_id": 0, "unknown_input": [1, 2]}
    # `curl -d` (the TensorRT-LLM docs' example) sends application/x-www-form-urlencoded.
    r = client.post(f"/v2/models/{MODEL}/generate", content=json.dumps(body),
                    headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert r.json()["text_output"] == exp
    # One-element lists, as Triton tensors of shape [1] are often written.
    r = client.post(f"/v2/models/{MODEL}/generate",
                    json={"text_input": [PROMPT], "max_tokens": [6], "exclude_input_in_output": [True]})
    assert r.json()["text_output"] == exp


def test_sampling_follows_tensorrt_llm_top_k_top_p(client, llm, llmcore):
    # top_k > 0 turns sampling on (temperature defaults to 1.0); same seed, same sample.
    sp = llmcore.SamplingParams(temperature=1.0, top_k=20, seed=1234, max_tokens=10)
    exp = llm.generate(PROMPT, sp, use_tqdm=False)[0].outputs[0].text
    body = {"text_input": PROMPT, "max_tokens": 10, "top_k": 20, "random_seed": 1234,
            "exclude_input_in_output": True}
    assert client.post(f"/v2/models/{MODEL}/generate", json=body).json()["text_output"] == exp
    # Without top_k and top_p, TensorRT-LLM decodes greedily whatever the temperature.
    greedy = _greedy(llm, llmcore, PROMPT, 10).outputs[0].text
    assert greedy != exp
    body = {"text_input": PROMPT, "max_tokens": 10, "temperature": 1.5, "exclude_input_in_output": True}
    assert client.post(f"/v2/models/{MODEL}/generate", json=body).json()["text_output"] == greedy


def test_return_log_probs_match_generate(client, llm, llmcore):
    out = _greedy(llm, llmcore, PROMPT, 6, logprobs=0).outputs[0]
    exp = [pos[t].logprob for t, pos in zip(out.token_ids, out.logprobs)]
    r = client.post(f"/v2/models/{MODEL}/generate",
                    json={"text_input": PROMPT, "max_tokens": 6, "return_log_probs": True})
    body = r.json()
    assert body["output_log_probs"] == pytest.approx(exp, abs=1e-5)
    assert body["cum_log_probs"] == pytest.approx(sum(exp), abs=1e-4)
    events = _stream(client, {"text_input": PROMPT, "max_tokens": 6, "return_log_probs": True})
    assert [x for e in events for x in e["output_log_probs"]] == pytest.approx(exp, abs=1e-5)
    assert events[-1]["cum_log_probs"] == pytest.approx(sum(exp), abs=1e-4)


def test_stop_words_end_the_output_after_the_word(client, llm, llmcore):
    exp = _greedy(llm, llmcore, PROMPT, 24).outputs[0].text
    words = exp.split()
    word = next(w for w in words[2:] if w.isalpha() and len(w) >= 3)
    cut = exp[:exp.index(word) + len(word)]  # TensorRT-LLM keeps the stop word's tokens
    assert len(cut) < len(exp)
    body = {"text_input": PROMPT, "max_tokens": 24, "stop_words": ["zzzqqq", word], "exclude_input_in_output": True}
    assert client.post(f"/v2/models/{MODEL}/generate", json=body).json()["text_output"] == cut
    assert "".join(e["text_output"] for e in _stream(client, body)) == cut
    # A single string is one stop word; "" is no word at all (the TensorRT-LLM docs send it).
    body.update(stop_words=word, bad_words="")
    assert client.post(f"/v2/models/{MODEL}/generate", json=body).json()["text_output"] == cut


def _banned_reference(llm, llmcore, prompt_ids, words, max_tokens):
    """Greedy output with each token that would complete a word (after the tokens before it,
    prompt included) biased by -100 at that step: one LLM.generate call per token."""
    out = []
    for _ in range(max_tokens):
        ctx = prompt_ids + out
        banned = {w[-1] for w in words if ctx[len(ctx) - (len(w) - 1):] == w[:-1]}
        sp = llmcore.SamplingParams(temperature=0.0, max_tokens=1, logit_bias={t: -100.0 for t in banned})
        o = llm.generate({"prompt_token_ids": ctx}, sp, use_tqdm=False)[0].outputs[0]
        out.extend(o.token_ids)
        if o.finish_reason == "stop":
            break
    return out


def _generates(prompt_ids, out, word_ids) -> bool:
    """Whether the output completes word_ids (its last token generated, the rest may be prompt)."""
    seq = prompt_ids + out
    n = len(word_ids)
    return any(seq[i:i + n] == word_ids for i in range(max(len(prompt_ids) - n + 1, 0), len(seq) - n + 1))


def _roundtrip_words(tok, seq, start, length):
    """Words of `length` consecutive tokens of seq (from index start) that encode back to them."""
    found = []
    for i in range(start, len(seq) - length + 1):
        ids = seq[i:i + length]
        word = tok.decode(ids)
        if word.strip() and tok.encode(word, add_special_tokens=False) == ids:
            found.append((word, ids))
    return found


@pytest.mark.parametrize("prompt, where", [("The cat walks to the house", "output"),
                                           ("The teacher reads about the bridge", "prompt end")])
def test_bad_words_are_never_generated(client, llm, llmcore, prompt, where):
    tok = llm.get_tokenizer()
    max_tokens = 20
    prompt_ids = tok.encode(prompt)
    free = list(_greedy(llm, llmcore, prompt, max_tokens).outputs[0].token_ids)
    seq = prompt_ids + free
    # A two-token word the unbanned greedy run does generate: inside the output, or made of the
    # prompt's last token and the first output token (banned there too, as in TensorRT-LLM).
    start = len(prompt_ids) if where == "output" else len(prompt_ids) - 1
    pairs = [p for p in _roundtrip_words(tok, seq, start, 2) if where == "output" or p[1][0] == prompt_ids[-1]]
    assert pairs, f"no two-token word to ban in {tok.decode(free)!r}"
    word, word_ids = pairs[0]
    words = [(word, word_ids)]
    if where == "output":  # and a one-token word generated later on
        later = [w for w in _roundtrip_words(tok, free, 0, 1)
                 if w[1][0] not in word_ids and free.index(w[1][0]) > seq.index(word_ids[-1]) - len(prompt_ids)]
        assert later
        words.append(later[0])
    for _, ids in words:
        assert _generates(prompt_ids, free, ids)

    banned = _banned_reference(llm, llmcore, prompt_ids, [ids for _, ids in words], max_tokens)
    for _, ids in words:
        assert not _generates(prompt_ids, banned, ids)
    assert banned != free
    full = tok.decode(prompt_ids + banned)
    head = tok.decode(prompt_ids)
    assert full.startswith(head)
    exp = full[len(head):]

    body = {"text_input": prompt, "max_tokens": max_tokens, "bad_words": [w for w, _ in words],
            "exclude_input_in_output": True}
    r = client.post(f"/v2/models/{MODEL}/generate", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["text_output"] == exp
    assert "".join(e["text_output"] for e in _stream(client, body)) == exp

    if where != "output":
        return
    # A stop word straddling the first banned position (text before it and the replacement's).
    k = next(i for i, (a, b) in enumerate(zip(free, banned)) if a != b)
    at = len(tok.decode(prompt_ids + banned[:k])) - len(head)
    stop = exp[max(at - 3, 0):at + 3]
    assert len(stop) >= 4 and exp.find(stop) == max(at - 3, 0)
    body["stop_words"] = [stop]
    cut = exp[:exp.find(stop) + len(stop)]
    assert client.post(f"/v2/models/{MODEL}/generate", json=body).json()["text_output"] == cut
    assert "".join(e["text_output"] for e in _stream(client, body)) == cut


def test_multi_token_bad_words_refuse_output_only_penalties(client):
    r = client.post(f"/v2/models/{MODEL}/generate",
                    json={"text_input": PROMPT, "max_tokens": 4, "bad_words": ["under b"], "presence_penalty": 0.5})
    assert "presence_penalty" in _assert_triton_error(r, 400)


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, needle", [
    ({"text_input": PROMPT, "beam_width": 2}, "beam_width"),
    ({"text_input": PROMPT, "num_return_sequences": 3}, "num_return_sequences"),
    ({"max_tokens": 4}, "text_input"),
    ({"text_input": PROMPT, "max_tokens": "4"}, "max_tokens"),
    ({"text_input": PROMPT, "max_tokens": MAX_MODEL_LEN}, "max_model_len"),
    ({"text_input": PROMPT, "top_p": 1.5}, "top_p"),
    ({"text_input": PROMPT, "temperature": -1.0, "top_k": 5}, "temperature"),
    ({"text_input": PROMPT, "end_id": 10 ** 6}, "end_id"),
    ({"text_input": PROMPT, "stream": True}, "generate_stream"),
    ({"text_input": PROMPT, "seed": 1, "random_seed": 2}, "seed"),
])
def test_bad_parameters_are_400(client, body, needle):
    r = client.post(f"/v2/models/{MODEL}/generate", json=body)
    assert needle in _assert_triton_error(r, 400)


def test_invalid_json_is_400(client):
    r = client.post(f"/v2/models/{MODEL}/generate", content=b"{not json")
    assert "JSON" in _assert_triton_error(r, 400)


@pytest.mark.parametrize("method, path", [
    ("POST", "/v2/models/nope/generate"), ("POST", "/v2/models/nope/generate_stream"),
    ("GET", "/v2/models/nope/stats"), ("GET", "/v2/models/nope"), ("GET", "/v2/models/nope/ready"),
    ("POST", f"/v2/models/{MODEL}/versions/2/generate"), ("GET", f"/v2/models/{MODEL}/versions/7"),
])
def test_unknown_model_or_version_is_404(client, method, path):
    r = client.request(method, path, json={"text_input": PROMPT, "max_tokens": 2})
    assert "nope" in _assert_triton_error(r, 404) or "version" in r.json()["error"]


def test_known_version_is_served(client, llm, llmcore):
    exp = _greedy(llm, llmcore, PROMPT, 3).outputs[0].text
    r = client.post(f"/v2/models/{MODEL}/versions/1/generate",
                    json={"text_input": PROMPT, "max_tokens": 3, "exclude_input_in_output": True})
    assert r.json()["text_output"] == exp


# -- statistics --------------------------------------------------------------------------------------
def _model_stats(client) -> dict:
    r = client.get(f"/v2/models/{MODEL}/stats")
    assert r.status_code == 200, r.text
    (s,) = r.json()["model_stats"]
    assert s["name"] == MODEL and s["version"] == "1"
    assert client.get("/v2/models/stats").json()["model_stats"] == [s]
    return s


def test_stats_count_exactly_the_requests_made(client):
    before = _model_stats(client)
    t0 = time.time()
    client_ns = 0
    for body, streaming in [({"max_tokens": 4}, False), ({"max_tokens": 5}, False), ({"max_tokens": 6}, True)]:
        start = time.perf_counter_ns()
        if streaming:
            _stream(client, {"text_input": PROMPT, **body})
        else:
            assert client.post(f"/v2/models/{MODEL}/generate", json={"text_input": PROMPT, **body}).status_code == 200
        client_ns += time.perf_counter_ns() - start
    r = client.post(f"/v2/models/{MODEL}/generate", json={"text_input": PROMPT, "beam_width": 4})
    _assert_triton_error(r, 400)
    t1 = time.time()
    after = _model_stats(client)

    def delta(key):
        return {k: after["inference_stats"][key][k] - before["inference_stats"][key][k] for k in ("count", "ns")}

    assert after["inference_count"] - before["inference_count"] == 3
    assert after["execution_count"] - before["execution_count"] == 3
    assert delta("success")["count"] == 3 and delta("fail")["count"] == 1
    parts = ("queue", "compute_input", "compute_infer", "compute_output")
    for key in parts:
        assert delta(key)["count"] == 3
        assert delta(key)["ns"] >= 0
    assert delta("compute_infer")["ns"] > 0 and delta("fail")["ns"] > 0
    # The server's time is inside the client's, and the parts add up to the whole.
    assert 0 < delta("success")["ns"] <= client_ns
    assert sum(delta(k)["ns"] for k in parts) == delta("success")["ns"]
    assert int(t0 * 1000) <= after["last_inference"] <= int(t1 * 1000) + 1
    assert delta("cache_hit") == {"count": 0, "ns": 0}


# -- health, metadata, auth, queue limit --------------------------------------------------------------
def test_health_metadata_and_api_key(url, client):
    with httpx.Client(base_url=url, timeout=30) as anon:  # health probes need no key
        assert anon.get("/v2/health/live").status_code == 200
        assert anon.get("/v2/health/ready").status_code == 200
        assert anon.post(f"/v2/models/{MODEL}/generate", json={"text_input": PROMPT}).status_code == 401
        assert anon.get(f"/v2/models/{MODEL}/stats").status_code == 401
    assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200
    server = client.get("/v2").json()
    assert server["name"] == "llmcore" and "generate" in server["extensions"] and "statistics" in server["extensions"]
    meta = client.get(f"/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["text_input"]["datatype"] == "BYTES" and {"max_tokens", "bad_words", "stop_words"} <= set(inputs)
    assert [o["name"] for o in meta["outputs"]][0] == "text_output"


def test_queue_limit_and_disconnect_abort_apply(llm):
    from llmcore.server import create_app

    app = create_app(llm, served_model_names=[MODEL], max_num_queued_requests=1)
    serving = app.state.serving
    long_body = {"text_input": PROMPT, "max_tokens": 480, "end_id": 0}  # id 0 (unk) is never sampled here
    burst = 4
    results = [None] * burst
    start = threading.Barrier(burst)
    with serve(app) as base:
        def call(k: int) -> None:
            with httpx.Client(base_url=base, timeout=60) as c:
                start.wait()
                r = c.post(f"/v2/models/{MODEL}/generate", json=long_body)
                results[k] = (r.status_code, r.headers.get("retry-after"), r.json())

        threads = [threading.Thread(target=call, args=(k,)) for k in range(burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        statuses = sorted(code for code, _, _ in results)
        assert statuses[0] == 200 and statuses[-1] == 503, statuses
        for code, retry_after, body in results:
            if code == 503:
                assert retry_after == "1" and list(body) == ["error"] and "overloaded" in body["error"]
        assert serving.num_in_flight == 0

        # A client leaving a stream aborts its engine request and returns its slot.
        aborted = llm.llm_engine.get_stats()["num_requests_aborted"]
        with httpx.Client(base_url=base, timeout=60) as c:
            with c.stream("POST", f"/v2/models/{MODEL}/generate_stream", json=long_body) as r:
                assert r.status_code == 200
                next(r.iter_lines())
        deadline = time.monotonic() + 20
        while serving.num_in_flight or llm.llm_engine.get_stats()["num_running"]:
            assert time.monotonic() < deadline, "the abandoned stream still holds the engine"
            time.sleep(0.02)
        assert llm.llm_engine.get_stats()["num_requests_aborted"] == aborted + 1


def test_engine_death_is_503_and_health_turns_503(llmcore, checkpoint, monkeypatch):
    from llmcore.server import create_app

    monkeypatch.setenv("LLMCORE_FAULT_INJECT", "step=5")  # the native step loop dies at step 5
    dead = llmcore.LLM(model=str(checkpoint("llama_gqa")),
                       **dict(DEFAULT_LLM_KWARGS, num_gpu_blocks_override=32, max_model_len=64))
    monkeypatch.delenv("LLMCORE_FAULT_INJECT")
    try:
        app = create_app(dead, served_model_names=[MODEL])
        with serve(app) as base, httpx.Client(base_url=base, timeout=30) as c:
            assert c.get("/v2/health/live").status_code == 200
            r = c.post(f"/v2/models/{MODEL}/generate", json={"text_input": PROMPT, "max_tokens": 20})
            assert "fault injected" in _assert_triton_error(r, 503)
            assert not dead.llm_engine.is_healthy()
            for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready"):
                assert c.get(path).status_code == 503, path
    finally:
        dead.shutdown()
