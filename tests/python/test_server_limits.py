"""Server limits and metrics over real HTTP: the in-flight queue limit (503 + Retry-After), the
request-body size limit (413), /metrics through prometheus_client, and CORS only on request.

Each test builds its own app (own CollectorRegistry) and serves it with uvicorn in a background
thread on a free port, as test_server_openai.py does. Expected counter values come from the
requests this file makes (usage counts, request counts) and from the engine's own get_stats().
"""

from __future__ import annotations

import json
import threading

import pytest

from conftest import DEFAULT_LLM_KWARGS

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from server_util import serve, wait_idle, assert_openai_error  # noqa: E402  (needs uvicorn)
prom_parser = pytest.importorskip("prometheus_client.parser")

MODEL = "tiny"
MAX_MODEL_LEN = 512


def _new_llm(llmcore, checkpoint):
    kwargs = dict(DEFAULT_LLM_KWARGS, num_gpu_blocks_override=256, max_model_len=MAX_MODEL_LEN)
    return llmcore.LLM(model=str(checkpoint("llama_gqa")), **kwargs)


@pytest.fixture(scope="module")
def shared_llm(llmcore, checkpoint):
    llm = _new_llm(llmcore, checkpoint)
    yield llm
    llm.shutdown()






# -- 1. queue limit ------------------------------------------------------------------------------
def test_burst_over_queue_limit_gets_503_with_retry_after(shared_llm):
    from llmcore.server import create_app

    limit = 3
    burst = 4 * limit
    app = create_app(shared_llm, served_model_names=[MODEL], max_num_queued_requests=limit)
    serving = app.state.serving
    results = [None] * burst
    start = threading.Barrier(burst)
    # Accepted streams read their body only after every client has its status, so the accepted
    # requests still hold their slots while the overflow arrives.
    statuses_known = threading.Barrier(burst)

    with serve(app) as url:
        def client(k: int) -> None:
            body = {"model": MODEL, "prompt": f"Request number {k} says", "max_tokens": 200,
                    "ignore_eos": True, "stream": True}
            with httpx.Client(timeout=60) as c:
                start.wait()
                with c.stream("POST", url + "/v1/completions", json=body) as r:
                    status, headers = r.status_code, dict(r.headers)
                    statuses_known.wait()
                    raw = r.read().decode()
            results[k] = (status, headers, raw)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a client hung"

        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 503]
        assert len(ok) + len(refused) == burst, [r[0] for r in results]
        assert len(ok) == limit and len(refused) == burst - limit
        for _, headers, raw in ok:
            assert headers["content-type"].startswith("text/event-stream")
            events = [line[len("data: "):] for line in raw.split("\n") if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            text_chunks = [json.loads(e) for e in events[:-1]]
            assert text_chunks[-1]["choices"][0]["finish_reason"] == "length"
        for _, headers, raw in refused:
            assert int(headers["retry-after"]) >= 1
            assert headers["content-type"].startswith("application/json")  # no stream bytes
            err = json.loads(raw)["error"]
            assert err["code"] == "queue_full" and str(limit) in err["message"]

        assert httpx.get(url + "/health", timeout=10).status_code == 200
        wait_idle(shared_llm)
        assert serving.num_in_flight == 0
        # The freed slots are usable again.
        again = httpx.post(url + "/v1/completions", timeout=30,
                           json={"model": MODEL, "prompt": "After the burst", "max_tokens": 2})
        assert again.status_code == 200, again.text


def test_call_with_more_prompts_than_free_slots_is_refused_whole(shared_llm):
    from llmcore.server import create_app

    app = create_app(shared_llm, served_model_names=[MODEL], max_num_queued_requests=2)
    with serve(app) as url:
        r = httpx.post(url + "/v1/completions", timeout=30,
                       json={"model": MODEL, "prompt": ["a", "b", "c"], "max_tokens": 2})
        assert_openai_error(r, 503)
        assert r.headers["retry-after"] == "1"
        r = httpx.post(url + "/v1/completions", timeout=30,
                       json={"model": MODEL, "prompt": ["a", "b"], "max_tokens": 2})
        assert r.status_code == 200 and len(r.json()["choices"]) == 2
    assert app.state.serving.num_in_flight == 0


# -- 2. body size limit --------------------------------------------------------------------------
def test_oversized_body_gets_413(shared_llm):
    from llmcore.server import create_app

    limit = 4096
    app = create_app(shared_llm, served_model_names=[MODEL], max_request_body_bytes=limit)
    with serve(app) as url:
        big = json.dumps({"model": MODEL, "prompt": "x" * (2 * limit), "max_tokens": 1}).encode()
        r = httpx.post(url + "/v1/completions", content=big, timeout=30,
                       headers={"content-type": "application/json"})
        err = assert_openai_error(r, 413)
        assert str(limit) in err["message"]

        # Chunked transfer (no Content-Length) is counted as it arrives.
        def chunks():
            for k in range(0, len(big), 1000):
                yield big[k:k + 1000]

        r = httpx.post(url + "/v1/completions", content=chunks(), timeout=30,
                       headers={"content-type": "application/json"})
        assert_openai_error(r, 413)

        # A body just under the limit passes through the middleware intact.
        small = {"model": MODEL, "prompt": "y " * 20, "max_tokens": 1}
        padded = json.dumps(small).encode()
        padded += b" " * (limit - len(padded))
        assert len(padded) == limit
        r = httpx.post(url + "/v1/completions", content=padded, timeout=30,
                       headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert httpx.get(url + "/health", timeout=10).status_code == 200


# -- 3. /metrics ---------------------------------------------------------------------------------
def _scrape(url: str) -> dict:
    """{(sample name, frozenset(labels without model_name)): value} and the metric types."""
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200
    samples, types = {}, {}
    for fam in prom_parser.text_string_to_metric_families(r.text):
        types[fam.name] = fam.type
        for s in fam.samples:
            labels = {k: v for k, v in s.labels.items() if k != "model_name"}
            samples[(s.name, frozenset(labels.items()))] = s.value
    return samples, types


def test_metrics_match_engine_stats_and_requests(llmcore, checkpoint):
    from llmcore.server import create_app

    llm = _new_llm(llmcore, checkpoint)  # fresh engine: its counters start at 0
    try:
        app = create_app(llm, served_model_names=[MODEL])
        with serve(app) as url:
            requests = [("The first prompt here", 5, False), ("Another one", 7, True), ("Third text of all", 4, True)]
            prompt_tokens = completion_tokens = 0
            for prompt, max_tokens, stream in requests:
                body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
                        "stream": stream, "stream_options": {"include_usage": True} if stream else None}
                if stream:
                    raw = httpx.post(url + "/v1/completions", json=body, timeout=30).text
                    events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
                    assert events[-1] == "[DONE]"
                    usage = json.loads(events[-2])["usage"]
                else:
                    usage = httpx.post(url + "/v1/completions", json=body, timeout=30).json()["usage"]
                assert usage["completion_tokens"] == max_tokens
                prompt_tokens += usage["prompt_tokens"]
                completion_tokens += usage["completion_tokens"]
            two = httpx.post(url + "/v1/completions", timeout=30, json={
                "model": MODEL, "prompt": "Two samples of", "max_tokens": 3, "ignore_eos": True, "n": 2,
                "temperature": 1.0, "seed": 1}).json()
            assert two["usage"]["completion_tokens"] == 6
            prompt_tokens += two["usage"]["prompt_tokens"]
            completion_tokens += two["usage"]["completion_tokens"]
            num_requests = len(requests) + 1

            stats = wait_idle(llm)
            m, types = _scrape(url)

        assert types["llmcore:num_requests_running"] == "gauge"
        assert types["llmcore:prompt_tokens"] == "counter"
        assert types["llmcore:time_to_first_token_seconds"] == "histogram"
        none = frozenset()
        assert m[("llmcore:num_requests_running", none)] == 0
        assert m[("llmcore:num_requests_waiting", none)] == 0
        assert m[("llmcore:kv_cache_usage_perc", none)] == 0.0
        assert m[("llmcore:prompt_tokens_total", none)] == stats["num_prompt_tokens"]
        assert m[("llmcore:generation_tokens_total", none)] == stats["num_generation_tokens"]
        assert m[("llmcore:num_preemptions_total", none)] == stats["num_preemptions"]
        assert m[("llmcore:prefix_cache_queries_total", none)] == stats["prefix_cache_queries"]
        assert m[("llmcore:prefix_cache_hits_total", none)] == stats["prefix_cache_hits"]
        # The engine prefilled and generated exactly what the responses report (n=2 shares one
        # prompt prefill; every prompt is shorter than a KV block, so no prefix-cache hit).
        assert m[("llmcore:prefix_cache_hits_total", none)] == 0
        assert m[("llmcore:prompt_tokens_total", none)] == prompt_tokens
        assert m[("llmcore:generation_tokens_total", none)] == completion_tokens
        # 3 completions + 1 call with n=2: five sequences, all cut by max_tokens.
        length = frozenset({("finished_reason", "length")})
        assert m[("llmcore:request_success_total", length)] == len(requests) + 2
        for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds",
                     "request_queue_time_seconds", "time_per_output_token_seconds"):
            assert m[(f"llmcore:{hist}_count", none)] == num_requests, hist
            assert m[(f"llmcore:{hist}_sum", none)] >= 0.0
            assert m[(f"llmcore:{hist}_bucket", frozenset({("le", "+Inf")}))] == num_requests
        assert 0.0 < m[("llmcore:e2e_request_latency_seconds_sum", none)] < 60.0 * num_requests
    finally:
        llm.shutdown()


def test_kv_usage_gauge_rises_while_busy_and_returns_to_zero(shared_llm):
    from llmcore.server import create_app

    app = create_app(shared_llm, served_model_names=[MODEL])
    with serve(app) as url:
        body = {"model": MODEL, "prompt": "Keep going for a while", "max_tokens": 450, "ignore_eos": True,
                "stream": True}
        seen_busy = None
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            next(lines)  # the request is running now
            m, _ = _scrape(url)
            seen_busy = m[("llmcore:kv_cache_usage_perc", frozenset())]
            running = m[("llmcore:num_requests_running", frozenset())]
            for _ in lines:
                pass
        stats = shared_llm.llm_engine.get_stats()
        # One running request holds ceil(tokens / block_size) >= 1 block of the pool.
        assert 0.0 < seen_busy <= 1.0
        assert running == 1
        wait_idle(shared_llm)
        m, _ = _scrape(url)
        assert m[("llmcore:kv_cache_usage_perc", frozenset())] == 0.0
        assert stats["num_total_blocks"] == 256


def test_metrics_registries_are_per_app(shared_llm):
    from llmcore.server import create_app

    a = create_app(shared_llm, served_model_names=[MODEL])
    b = create_app(shared_llm, served_model_names=[MODEL])
    assert a.state.metrics.registry is not b.state.metrics.registry
    with serve(a) as url_a, serve(b) as url_b:
        r = httpx.post(url_a + "/v1/completions", timeout=30,
                       json={"model": MODEL, "prompt": "only on a", "max_tokens": 2})
        assert r.status_code == 200
        ma, _ = _scrape(url_a)
        mb, _ = _scrape(url_b)
    key = ("llmcore:e2e_request_latency_seconds_count", frozenset())
    assert ma[key] == 1 and mb[key] == 0


def test_metrics_open_without_api_key(shared_llm):
    from llmcore.server import create_app

    app = create_app(shared_llm, served_model_names=[MODEL], api_key="secret")
    with serve(app) as url:
        assert httpx.get(url + "/metrics", timeout=10).status_code == 200
        assert_openai_error(httpx.get(url + "/v1/models", timeout=10), 401)


# -- 4. CORS -------------------------------------------------------------------------------------
def test_no_cors_headers_unless_allowed_origins(shared_llm):
    from llmcore.server import create_app

    origin = "http://chat.example.com"
    with serve(create_app(shared_llm, served_model_names=[MODEL])) as url:
        r = httpx.get(url + "/v1/models", headers={"Origin": origin}, timeout=10)
        assert r.status_code == 200
        assert not any(k.lower().startswith("access-control-") for k in r.headers)
        pre = httpx.options(url + "/v1/completions", timeout=10, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        assert not any(k.lower().startswith("access-control-") for k in pre.headers)

    app = create_app(shared_llm, served_model_names=[MODEL], allowed_origins=[origin])
    with serve(app) as url:
        r = httpx.get(url + "/v1/models", headers={"Origin": origin}, timeout=10)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == origin
        pre = httpx.options(url + "/v1/completions", timeout=10, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == origin
        assert "POST" in pre.headers["access-control-allow-methods"]
        # Another origin is not granted.
        other = httpx.get(url + "/v1/models", headers={"Origin": "http://evil.example"}, timeout=10)
        assert "access-control-allow-origin" not in other.headers
