"""The OpenAI-compatible server, driven by the official `openai` SDK over real HTTP.

One uvicorn server (in a background thread, on a free port of 127.0.0.1) serves a tiny llama
checkpoint on the CPU with a ChatML template added. Expected texts and token counts come from
LLM.generate on the same engine, and from a ChatML prompt rendered by hand in this file.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest

import fixtures
from conftest import DEFAULT_LLM_KWARGS

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from server_util import serve  # noqa: E402  (needs uvicorn)

API_KEY = "test-key-123"
MODEL = "tiny-chat"
MAX_MODEL_LEN = 512
CHATML = fixtures.CHATML


@pytest.fixture(scope="module")
def served(llmcore, checkpoint, tmp_path_factory):
    """(base_url, llm): the server on a copy of llama_gqa with chat_template.jinja added."""
    from llmcore.server import create_app

    model_dir = tmp_path_factory.mktemp("server") / "llama_chat"
    shutil.copytree(checkpoint("llama_gqa"), model_dir)
    (model_dir / "chat_template.jinja").write_text(CHATML)
    kwargs = dict(DEFAULT_LLM_KWARGS, num_gpu_blocks_override=256, max_model_len=MAX_MODEL_LEN)
    llm = llmcore.LLM(model=str(model_dir), **kwargs)
    app = create_app(llm, served_model_names=[MODEL], api_key=API_KEY, model_path=str(model_dir))
    with serve(app) as base_url:
        yield base_url, llm
    llm.shutdown()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key=API_KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def llm(served):
    return served[1]


def _greedy(llmcore, max_tokens, **kw):
    return llmcore.SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)


def _chatml(messages) -> str:
    """The ChatML rendering, written out independently of the template engine."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


# -- models and completions ----------------------------------------------------------------------
def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model"


def test_completion_greedy_matches_generate(client, llm, llmcore):
    prompt = "The cat walks to the house"
    exp = llm.generate(prompt, _greedy(llmcore, 10, ignore_eos=True), use_tqdm=False)[0]
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-")
    assert len(resp.choices) == 1
    assert resp.choices[0].text == exp.outputs[0].text
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.prompt_tokens == len(exp.prompt_token_ids) == len(llm.get_tokenizer().encode(prompt))
    assert resp.usage.completion_tokens == 10
    assert resp.usage.total_tokens == len(exp.prompt_token_ids) + 10


def test_completion_batch_and_token_prompts(client, llm, llmcore):
    tok = llm.get_tokenizer()
    prompts = ["A dog looks at", "Numbers like 12"]
    exp = llm.generate(prompts, _greedy(llmcore, 6, ignore_eos=True), use_tqdm=False)
    resp = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert [c.index for c in resp.choices] == [0, 1]
    assert [c.text for c in resp.choices] == [e.outputs[0].text for e in exp]
    assert resp.usage.prompt_tokens == sum(len(tok.encode(p)) for p in prompts)
    assert resp.usage.completion_tokens == 12
    # Token ids give the same completion as the text they encode; a list of id lists is a batch.
    ids = [tok.encode(p) for p in prompts]
    one = client.completions.create(model=MODEL, prompt=ids[0], max_tokens=6, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert one.choices[0].text == exp[0].outputs[0].text
    both = client.completions.create(model=MODEL, prompt=ids, max_tokens=6, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert [c.text for c in both.choices] == [e.outputs[0].text for e in exp]


def test_completion_stream_with_usage(client, llm, llmcore):
    prompt = "The teacher reads about"
    exp = llm.generate(prompt, _greedy(llmcore, 12, ignore_eos=True), use_tqdm=False)[0]
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == exp.outputs[0].text
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == len(exp.prompt_token_ids)
    assert chunks[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_stream_ends_with_done_on_the_wire(served):
    url, _ = served
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    for e in events[:-1]:
        assert json.loads(e[len("data: "):])["object"] == "text_completion"


def test_completion_n_and_echo(client, llm):
    prompt = "The river"
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, n=3, temperature=1.0, seed=7,
                                     extra_body={"ignore_eos": True})
    assert sorted(c.index for c in resp.choices) == [0, 1, 2]
    assert resp.usage.completion_tokens == 15
    assert resp.usage.prompt_tokens == len(llm.get_tokenizer().encode(prompt))
    echoed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, echo=True)
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0)
    assert echoed.choices[0].text == prompt + plain.choices[0].text


def test_completion_logprobs_shape(client, llm, llmcore):
    prompt = "The old man finds"
    exp = llm.generate(prompt, _greedy(llmcore, 6, ignore_eos=True, logprobs=3), use_tqdm=False)[0].outputs[0]
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=3,
                                     extra_body={"ignore_eos": True})
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    # Offsets are the running sum of the token texts' lengths.
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    assert math.isclose(sum(lp.token_logprobs), exp.cumulative_logprob, rel_tol=1e-6, abs_tol=1e-6)
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0.0
        assert 1 <= len(top) <= 4  # the top 3 plus the chosen token (greedy: one of them)
        assert math.isclose(max(top.values()), chosen, abs_tol=1e-6)  # greedy picks the most likely


# -- chat ----------------------------------------------------------------------------------------
def test_chat_matches_generate_on_rendered_prompt(client, llm, llmcore):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    tok = llm.get_tokenizer()
    ids = tok.encode(_chatml(messages), add_special_tokens=False)
    exp = llm.generate({"prompt_token_ids": ids}, _greedy(llmcore, 8, ignore_eos=True), use_tqdm=False)[0]
    resp = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=8, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == exp.outputs[0].text
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.prompt_tokens == len(ids)
    assert resp.usage.completion_tokens == 8
    # Content given as text parts is the same message.
    parts = [messages[0], {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    again = client.chat.completions.create(model=MODEL, messages=parts, max_completion_tokens=8, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert again.choices[0].message.content == exp.outputs[0].text


def test_chat_stream_role_first_and_usage(client):
    messages = [{"role": "user", "content": "Tell me about the sea"}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                          extra_body={"ignore_eos": True})
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    body = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in body) == full.choices[0].message.content
    assert body[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_chat_n_and_logprobs(client):
    messages = [{"role": "user", "content": "Hi"}]
    resp = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=4, temperature=0,
                                          logprobs=True, top_logprobs=2, n=2, extra_body={"ignore_eos": True})
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.usage.completion_tokens == 8
    for choice in resp.choices:
        content = choice.logprobs.content
        assert len(content) == 4
        for entry in content:
            assert len(entry.top_logprobs) == 2
            assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
            # Greedy: the chosen token is the most likely one.
            assert entry.top_logprobs[0].token == entry.token
            assert math.isclose(entry.top_logprobs[0].logprob, entry.logprob, abs_tol=1e-6)
            assert entry.bytes == list(entry.token.encode("utf-8"))


# -- tokenizer and info endpoints ------------------------------------------------------------------
def test_tokenize_detokenize_health_version(served, llm):
    url, _ = served
    auth = {"Authorization": f"Bearer {API_KEY}"}
    text = "The cat walks to the house"
    r = httpx.post(url + "/tokenize", json={"prompt": text}, headers=auth)
    assert r.status_code == 200
    assert r.json() == {"count": len(llm.get_tokenizer().encode(text)), "max_model_len": MAX_MODEL_LEN,
                        "tokens": llm.get_tokenizer().encode(text)}
    r = httpx.post(url + "/detokenize", json={"tokens": r.json()["tokens"]}, headers=auth)
    assert r.status_code == 200 and r.json()["prompt"] == text
    r = httpx.post(url + "/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}, headers=auth)
    assert r.json()["tokens"] == llm.get_tokenizer().encode(_chatml([{"role": "user", "content": "Hi"}]),
                                                            add_special_tokens=False)
    import llmcore
    assert httpx.get(url + "/version").json() == {"version": llmcore.__version__}
    assert httpx.get(url + "/health").status_code == 200


# -- errors --------------------------------------------------------------------------------------
def _error(exc_info):
    body = exc_info.value.body
    return body.get("error", body) if isinstance(body, dict) and "error" in body else body


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=2)
    assert e.value.status_code == 404
    err = _error(e)
    assert err["param"] == "model" and "no-such-model" in err["message"]


@pytest.mark.parametrize("kwargs,param", [
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=1.5), "top_p"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(n=0), "n"),
    (dict(logprobs=99), "logprobs"),
    (dict(extra_body={"top_k": -5}), "top_k"),
    (dict(logit_bias={"abc": 1.0}), "logit_bias"),
    (dict(logit_bias={"100000": 1.0}), "logit_bias"),
])
def test_bad_completion_parameters_are_400(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hi", **{"max_tokens": 2, **kwargs})
    err = _error(e)
    assert e.value.status_code == 400
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error"
    assert set(err) == {"message", "type", "param", "code"}


def test_bad_chat_parameters_name_the_chat_field(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       logprobs=True, top_logprobs=50)
    assert _error(e)["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                       max_completion_tokens=0)
    assert _error(e)["param"] == "max_completion_tokens"


def test_too_long_prompt_is_400_with_counts(client, llm):
    tok = llm.get_tokenizer()
    prompt = "the cat walks to the house " * 120
    n = len(tok.encode(prompt))
    assert n > MAX_MODEL_LEN
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    err = _error(e)
    assert err["param"] == "prompt" and err["code"] == "context_length_exceeded"
    assert str(n) in err["message"] and str(MAX_MODEL_LEN) in err["message"]
    # A prompt that fits but leaves too little room for max_tokens: both counts are named.
    short = tok.encode("Hello")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=short, max_tokens=MAX_MODEL_LEN)
    msg = _error(e)["message"]
    assert str(len(short)) in msg and str(MAX_MODEL_LEN + len(short)) in msg


def test_validation_errors_are_400_in_openai_shape(served):
    url, _ = served
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": "many"}, headers=auth)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(url + "/v1/chat/completions", json={"model": MODEL}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(url + "/v1/completions", content=b'{"prompt": "hi",', headers=auth)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": [7, 100000]}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_api_key_required_health_open(served):
    url, _ = served
    for key in ("wrong-key", API_KEY + "x"):
        bad = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
        assert e.value.status_code == 401 and _error(e)["code"] == "invalid_api_key"
    r = httpx.post(url + "/v1/completions", json={"model": MODEL, "prompt": "hi"})  # no header at all
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(url + "/health").status_code == 200


# -- disconnects -----------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
def test_abandoned_stream_frees_its_blocks(served, llm, endpoint):
    """A client that leaves mid-stream aborts its request: every KV block comes back and the
    engine generates far fewer tokens than the request asked for."""
    url, _ = served
    idle = fixtures.assert_all_blocks_free(llm)
    max_tokens = MAX_MODEL_LEN // 2
    body = {"model": MODEL, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    if endpoint == "/v1/completions":
        body["prompt"] = "The children"
    else:
        body["messages"] = [{"role": "user", "content": "The children"}]
    with httpx.stream("POST", url + endpoint, json=body, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        received = 0
        for line in lines:
            if line.startswith("data: "):
                received += 1
                if received == 3:
                    break
        busy = llm.llm_engine.get_stats()
        assert busy["num_running"] == 1 and busy["num_free_blocks"] < busy["num_total_blocks"]
    # Leaving the `with` closes the connection.
    after = fixtures.assert_all_blocks_free(llm)
    generated = after["num_generation_tokens"] - idle["num_generation_tokens"]
    assert generated < max_tokens, f"the request ran to completion ({generated} tokens): it was not aborted"
