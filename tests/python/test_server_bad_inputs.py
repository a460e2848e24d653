"""Bad requests over real HTTP (httpx against the in-process uvicorn server), each with the exact
status and OpenAI error object {"error": {"message", "type", "param", "code"}} it must get, the
server still healthy after every one, and the same engine generating the same greedy text at the
end as at the start.

Expected answers follow OpenAI's API and vLLM's OpenAI server: 400 (not FastAPI's 422) for every
invalid value or type, naming the field in `param` (OpenAI's "messages[0].content" style); vLLM's
SamplingParams ranges (temperature >= 0, top_p in (0, 1], top_k -1/0 or >= 1, min_p in [0, 1],
penalties in [-2, 2], repetition_penalty > 0, logprobs and top_logprobs in [0, 20] = vLLM's default
max_logprobs, seed a signed 64-bit integer, max_tokens >= 1 and within max_model_len with the
prompt); vLLM's cross-field rules (stream_options only with stream, top_logprobs only with
logprobs, best_of >= n, "auto" tool choice needs a tool-call parser); OpenAI's roles and typed
fields ("5" is not an integer); 404 model_not_found for an unknown model; 401 invalid_api_key.
Transport: 413 for a body over --max-request-body-bytes, 415 for a body not sent as
application/json (FastAPI parses only JSON bodies; text/plain and form posts are what browsers send
cross-site without a CORS preflight), 405 with Allow for a wrong method, 400 for bytes that are not
UTF-8 or JSON.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import DEFAULT_LLM_KWARGS

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
from server_util import serve  # noqa: E402  (needs uvicorn)

MODEL = "tiny"
API_KEY = "secret-key-1"
MAX_MODEL_LEN = 128
MAX_NUM_SEQS = 4
VOCAB = 512  # fixtures.VOCAB_SIZE; checked against the engine in the fixture
BODY_LIMIT = 64 * 1024
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}"
          "{% endif %}")
GREEDY = {"model": MODEL, "prompt": "The cat walks to", "max_tokens": 6, "temperature": 0, "ignore_eos": True}

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
TOKENIZE, DETOKENIZE = "/tokenize", "/detokenize"
HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
LONG_TEXT = "the cat walks to the house " * 40  # well over MAX_MODEL_LEN tokens


def completion(**fields):
    return {"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}


def chat(**fields):
    return {"model": MODEL, "messages": HI, "max_tokens": 2, **fields}


def raw(text: str) -> bytes:
    """A JSON body written out by hand (for NaN, Infinity, duplicate keys, escapes)."""
    return text.encode("utf-8")


JSON = {"content-type": "application/json"}

# (id, path, body: dict (sent as JSON) or bytes, extra headers, status, param, code)
CASES = [
    # -- sampling parameters out of vLLM's ranges --------------------------------------------------
    ("temperature-negative", COMPLETIONS, completion(temperature=-0.5), None, 400, "temperature", None),
    ("top_p-zero", COMPLETIONS, completion(top_p=0), None, 400, "top_p", None),
    ("top_p-over-one", COMPLETIONS, completion(top_p=1.5), None, 400, "top_p", None),
    ("top_k-below-minus-one", COMPLETIONS, completion(top_k=-2), None, 400, "top_k", None),
    ("min_p-negative", COMPLETIONS, completion(min_p=-0.1), None, 400, "min_p", None),
    ("min_p-over-one", COMPLETIONS, completion(min_p=1.5), None, 400, "min_p", None),
    ("presence_penalty-over-two", COMPLETIONS, completion(presence_penalty=2.5), None, 400, "presence_penalty", None),
    ("frequency_penalty-under-minus-two", COMPLETIONS, completion(frequency_penalty=-2.5), None, 400,
     "frequency_penalty", None),
    ("repetition_penalty-zero", COMPLETIONS, completion(repetition_penalty=0), None, 400, "repetition_penalty", None),
    ("max_tokens-zero", COMPLETIONS, completion(max_tokens=0), None, 400, "max_tokens", None),
    ("max_tokens-negative", COMPLETIONS, completion(max_tokens=-1), None, 400, "max_tokens", None),
    ("min_tokens-over-max_tokens", COMPLETIONS, completion(min_tokens=5), None, 400, "min_tokens", None),
    ("min_tokens-negative", COMPLETIONS, completion(min_tokens=-1), None, 400, "min_tokens", None),
    ("n-zero", COMPLETIONS, completion(n=0), None, 400, "n", None),
    ("n-huge", COMPLETIONS, completion(n=10 ** 6), None, 400, "n", None),
    ("n-beyond-int64", COMPLETIONS, completion(n=2 ** 70), None, 400, "n", None),
    ("best_of-below-n", COMPLETIONS, completion(n=2, best_of=1), None, 400, "best_of", None),
    ("logprobs-over-20", COMPLETIONS, completion(logprobs=21), None, 400, "logprobs", None),
    ("logprobs-negative", COMPLETIONS, completion(logprobs=-1), None, 400, "logprobs", None),
    ("logprobs-beyond-int32", COMPLETIONS, completion(logprobs=2 ** 40), None, 400, "logprobs", None),
    ("max_tokens-below-int32", COMPLETIONS, completion(max_tokens=-(2 ** 40)), None, 400, "max_tokens", None),
    ("top_k-below-int32", COMPLETIONS, completion(top_k=-(2 ** 40)), None, 400, "top_k", None),
    ("seed-over-int64", COMPLETIONS, completion(seed=2 ** 64), None, 400, "seed", None),
    ("seed-under-int64", COMPLETIONS, completion(seed=-(2 ** 63) - 1), None, 400, "seed", None),
    ("logit_bias-over-100", COMPLETIONS, completion(logit_bias={"5": 101}), None, 400, "logit_bias", None),
    ("logit_bias-key-not-integer", COMPLETIONS, completion(logit_bias={"abc": 1}), None, 400, "logit_bias", None),
    ("logit_bias-key-not-plain-digits", COMPLETIONS, completion(logit_bias={"5_0": 1}), None, 400, "logit_bias",
     None),
    ("logit_bias-key-outside-vocab", COMPLETIONS, completion(logit_bias={str(VOCAB): 1}), None, 400, "logit_bias",
     None),
    ("logit_bias-key-huge", COMPLETIONS, completion(logit_bias={"9" * 20: 1}), None, 400, "logit_bias", None),
    ("logit_bias-value-string", COMPLETIONS, completion(logit_bias={"5": "x"}), None, 400, "logit_bias", None),
    ("stop-empty-string", COMPLETIONS, completion(stop=[""]), None, 400, "stop", None),
    ("stop_token_ids-outside-vocab", COMPLETIONS, completion(stop_token_ids=[VOCAB]), None, 400, "stop_token_ids",
     None),
    ("stop_token_ids-beyond-int32", COMPLETIONS, completion(stop_token_ids=[2 ** 40]), None, 400, "stop_token_ids",
     None),
    ("stream_options-without-stream", COMPLETIONS, completion(stream_options={"include_usage": True}), None, 400,
     "stream_options", None),
    # -- non-finite numbers (Python's json writes and reads these literals) --------------------------
    ("temperature-NaN", COMPLETIONS, raw('{"prompt": "hi", "max_tokens": 2, "temperature": NaN}'), JSON, 400,
     "temperature", None),
    ("temperature-Infinity", COMPLETIONS, raw('{"prompt": "hi", "max_tokens": 2, "temperature": Infinity}'), JSON,
     400, "temperature", None),
    ("top_p-minus-Infinity", COMPLETIONS, raw('{"prompt": "hi", "max_tokens": 2, "top_p": -Infinity}'), JSON, 400,
     "top_p", None),
    ("presence_penalty-NaN", COMPLETIONS, raw('{"prompt": "hi", "max_tokens": 2, "presence_penalty": NaN}'), JSON,
     400, "presence_penalty", None),
    ("temperature-overflows-to-inf", COMPLETIONS, raw('{"prompt": "hi", "max_tokens": 2, "temperature": 1e999}'),
     JSON, 400, "temperature", None),
    ("logit_bias-NaN", COMPLETIONS, raw('{"prompt": "hi", "max_tokens": 2, "logit_bias": {"5": NaN}}'), JSON, 400,
     "logit_bias", None),
    # -- wrong types ----------------------------------------------------------------------------------
    ("max_tokens-string", COMPLETIONS, completion(max_tokens="5"), None, 400, "max_tokens", None),
    ("max_tokens-fraction", COMPLETIONS, completion(max_tokens=2.5), None, 400, "max_tokens", None),
    ("temperature-list", COMPLETIONS, completion(temperature=[1]), None, 400, "temperature", None),
    ("temperature-string", COMPLETIONS, completion(temperature="0.5"), None, 400, "temperature", None),
    ("n-boolean", COMPLETIONS, completion(n=True), None, 400, "n", None),
    ("stream-string", COMPLETIONS, completion(stream="true"), None, 400, "stream", None),
    ("echo-number", COMPLETIONS, completion(echo=1), None, 400, "echo", None),
    ("stop-number", COMPLETIONS, completion(stop=5), None, 400, "stop", None),
    ("seed-string", COMPLETIONS, completion(seed="1"), None, 400, "seed", None),
    ("prompt-object", COMPLETIONS, completion(prompt={"text": "hi"}), None, 400, "prompt", None),
    ("prompt-mixed-list", COMPLETIONS, completion(prompt=[1, "a"]), None, 400, "prompt", None),
    ("prompt-null", COMPLETIONS, completion(prompt=None), None, 400, "prompt", None),
    ("prompt-missing", COMPLETIONS, {"model": MODEL, "max_tokens": 2}, None, 400, "prompt", None),
    ("stream_options-include_usage-string", COMPLETIONS, completion(stream=True, stream_options={"include_usage": "y"}),
     None, 400, "stream_options.include_usage", None),
    # -- prompts: empty, outside the vocabulary, too long ----------------------------------------------
    ("prompt-empty-list", COMPLETIONS, completion(prompt=[]), None, 400, "prompt", None),
    ("prompt-empty-token-list", COMPLETIONS, completion(prompt=[[]]), None, 400, "prompt", None),
    ("prompt-token-negative", COMPLETIONS, completion(prompt=[1, -1]), None, 400, "prompt", None),
    ("prompt-token-equal-vocab", COMPLETIONS, completion(prompt=[VOCAB]), None, 400, "prompt", None),
    ("prompt-token-huge-in-batch", COMPLETIONS, completion(prompt=[[1, 2], [10 ** 12]]), None, 400, "prompt", None),
    ("prompt-too-long", COMPLETIONS, completion(prompt=LONG_TEXT), None, 400, "prompt", "context_length_exceeded"),
    ("prompt-plus-max_tokens-over-max_model_len", COMPLETIONS, completion(prompt=[1, 2, 3], max_tokens=MAX_MODEL_LEN),
     None, 400, "max_tokens", "context_length_exceeded"),
    ("max_tokens-beyond-int64", COMPLETIONS, completion(max_tokens=10 ** 20), None, 400, "max_tokens",
     "context_length_exceeded"),
    ("prompt-lone-surrogate", COMPLETIONS, raw('{"prompt": "a \\ud800 b", "max_tokens": 2}'), JSON, 400, "prompt",
     None),
    ("unknown-model", COMPLETIONS, completion(model="no-such-model"), None, 404, "model", "model_not_found"),
    # -- chat ------------------------------------------------------------------------------------------
    ("chat-messages-empty", CHAT, chat(messages=[]), None, 400, "messages", None),
    ("chat-messages-missing", CHAT, {"model": MODEL}, None, 400, "messages", None),
    ("chat-messages-string", CHAT, chat(messages="hi"), None, 400, "messages", None),
    ("chat-role-unknown", CHAT, chat(messages=[{"role": "wizard", "content": "hi"}]), None, 400, "messages[0].role",
     None),
    ("chat-role-missing", CHAT, chat(messages=[{"content": "hi"}]), None, 400, "messages[0].role", None),
    ("chat-user-content-null", CHAT, chat(messages=[{"role": "user", "content": None}]), None, 400,
     "messages[0].content", None),
    ("chat-content-empty-parts", CHAT, chat(messages=[{"role": "user", "content": []}]), None, 400,
     "messages[0].content", None),
    ("chat-content-part-without-type", CHAT, chat(messages=[{"role": "user", "content": [{"text": "hi"}]}]), None, 400,
     "messages[0].content", None),
    ("chat-content-part-image", CHAT, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}}]}]), None, 400,
     "messages[0].content[0].type", None),
    ("chat-content-text-part-without-text", CHAT, chat(messages=[{"role": "user", "content": [{"type": "text"}]}]),
     None, 400, "messages[0].content[0].text", None),
    ("chat-content-number", CHAT, chat(messages=[{"role": "user", "content": 5}]), None, 400, "messages[0].content",
     None),
    ("chat-second-message-bad", CHAT, chat(messages=HI + [{"role": "assistant", "content": [1]}]), None, 400,
     "messages[1].content", None),
    ("chat-top_logprobs-without-logprobs", CHAT, chat(top_logprobs=3), None, 400, "top_logprobs", None),
    ("chat-top_logprobs-over-20", CHAT, chat(logprobs=True, top_logprobs=21), None, 400, "top_logprobs", None),
    ("chat-top_logprobs-negative", CHAT, chat(logprobs=True, top_logprobs=-1), None, 400, "top_logprobs", None),
    ("chat-top_logprobs-beyond-int32", CHAT, chat(logprobs=True, top_logprobs=2 ** 40), None, 400, "top_logprobs",
     None),
    ("chat-logprobs-string", CHAT, chat(logprobs="true"), None, 400, "logprobs", None),
    ("chat-max_completion_tokens-zero", CHAT, chat(max_completion_tokens=0), None, 400, "max_completion_tokens",
     None),
    ("chat-max_completion_tokens-over-context", CHAT, chat(max_completion_tokens=MAX_MODEL_LEN), None, 400,
     "max_completion_tokens", "context_length_exceeded"),
    ("chat-messages-too-long", CHAT, chat(messages=[{"role": "user", "content": LONG_TEXT}]), None, 400, "messages",
     "context_length_exceeded"),
    ("chat-temperature-negative", CHAT, chat(temperature=-1), None, 400, "temperature", None),
    ("chat-stream_options-without-stream", CHAT, chat(stream_options={"include_usage": True}), None, 400,
     "stream_options", None),
    ("chat-tools-auto", CHAT, chat(tools=[TOOL]), None, 400, "tools", None),
    ("chat-tools-required", CHAT, chat(tools=[TOOL], tool_choice="required"), None, 400, "tool_choice", None),
    ("chat-tool_choice-without-tools", CHAT, chat(tool_choice="auto"), None, 400, "tool_choice", None),
    ("chat-functions", CHAT, chat(functions=[TOOL["function"]]), None, 400, "functions", None),
    ("chat-function_call", CHAT, chat(function_call="auto"), None, 400, "function_call", None),
    ("chat-response_format-json_schema", CHAT, chat(response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}), None, 400,
     "response_format", None),
    ("chat-response_format-json_object", CHAT, chat(response_format={"type": "json_object"}), None, 400,
     "response_format", None),
    ("chat-template-kwargs-reserved", CHAT, chat(chat_template_kwargs={"tokenize": True}), None, 400,
     "chat_template_kwargs", None),
    ("chat-template-kwargs-not-object", CHAT, chat(chat_template_kwargs="x"), None, 400, "chat_template_kwargs",
     None),
    ("chat-content-lone-surrogate", CHAT, raw('{"messages": [{"role": "user", "content": "\\udfff"}]}'), JSON, 400,
     "messages[0].content", None),
    ("chat-unknown-model", CHAT, chat(model="gpt-4o"), None, 404, "model", "model_not_found"),
    # -- tokenizer endpoints ------------------------------------------------------------------------
    ("tokenize-neither", TOKENIZE, {}, None, 400, "prompt", None),
    ("tokenize-both", TOKENIZE, {"prompt": "hi", "messages": HI}, None, 400, "prompt", None),
    ("tokenize-messages-empty", TOKENIZE, {"messages": []}, None, 400, "messages", None),
    ("tokenize-prompt-number", TOKENIZE, {"prompt": 5}, None, 400, "prompt", None),
    ("tokenize-unknown-model", TOKENIZE, {"model": "x", "prompt": "hi"}, None, 404, "model", "model_not_found"),
    ("detokenize-negative", DETOKENIZE, {"tokens": [1, -1]}, None, 400, "tokens", None),
    ("detokenize-equal-vocab", DETOKENIZE, {"tokens": [VOCAB]}, None, 400, "tokens", None),
    ("detokenize-fraction", DETOKENIZE, {"tokens": [1.5]}, None, 400, "tokens[0]", None),
    ("detokenize-string", DETOKENIZE, {"tokens": "1 2"}, None, 400, "tokens", None),
    ("detokenize-missing", DETOKENIZE, {}, None, 400, "tokens", None),
    # -- bodies and transport -----------------------------------------------------------------------
    ("json-truncated", COMPLETIONS, raw('{"prompt": "hi",'), JSON, 400, None, None),
    ("json-array", COMPLETIONS, raw("[]"), JSON, 400, None, None),
    ("json-null", COMPLETIONS, raw("null"), JSON, 400, None, None),
    ("body-empty", COMPLETIONS, b"", JSON, 400, None, None),
    ("body-not-utf8", COMPLETIONS, b'{"prompt": "\xff\xfe", "max_tokens": 2}', JSON, 400, None, None),
    ("body-nested-too-deep", COMPLETIONS, b"[" * 20000, JSON, 400, None, None),
    ("content-type-text-plain", COMPLETIONS, raw(json.dumps(completion())), {"content-type": "text/plain"}, 415,
     None, "unsupported_media_type"),
    ("content-type-form", COMPLETIONS, raw(json.dumps(completion())),
     {"content-type": "application/x-www-form-urlencoded"}, 415, None, "unsupported_media_type"),
    ("content-type-missing", COMPLETIONS, raw(json.dumps(completion())), {}, 415, None, "unsupported_media_type"),
    ("body-over-limit", COMPLETIONS, raw(json.dumps(completion(prompt="x" * BODY_LIMIT))), JSON, 413, None,
     "request_too_large"),
]


@pytest.fixture(scope="module")
def served(llmcore, checkpoint, tmp_path_factory):
    """(url, url of the same engine behind an API key, llm)."""
    from llmcore.server import create_app

    model_dir = tmp_path_factory.mktemp("bad_inputs") / "llama_chat"
    shutil.copytree(checkpoint("llama_gqa"), model_dir)
    (model_dir / "chat_template.jinja").write_text(CHATML)
    kwargs = dict(DEFAULT_LLM_KWARGS, num_gpu_blocks_override=64, max_model_len=MAX_MODEL_LEN,
                  max_num_seqs=MAX_NUM_SEQS)
    llm = llmcore.LLM(model=str(model_dir), **kwargs)
    assert llm.llm_engine.native.vocab_size == VOCAB
    app = create_app(llm, served_model_names=[MODEL], max_request_body_bytes=BODY_LIMIT)
    keyed = create_app(llm, served_model_names=[MODEL], api_key=API_KEY)
    with serve(app) as url, serve(keyed) as keyed_url:
        yield url, keyed_url, llm
    llm.shutdown()


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served[0], timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def greedy_before(client):
    """The greedy text before any bad request, to compare with the one after them all."""
    r = client.post(COMPLETIONS, json=GREEDY)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def assert_openai_error(r, status: int, param, code=None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error", err
    assert err["param"] == param, err
    assert err["code"] == code, err
    return err


def test_at_least_fifty_cases():
    assert len(CASES) >= 50
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("path,body,headers,status,param,code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request(client, greedy_before, path, body, headers, status, param, code):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers=headers or {})
    else:
        r = client.post(path, json=body)
    err = assert_openai_error(r, status, param, code)
    assert "Traceback" not in err["message"]
    assert client.get("/health").status_code == 200


def test_error_messages_name_the_limits(client):
    """The numbers a client needs to fix the request are in the message."""
    tokens = client.post(TOKENIZE, json={"prompt": LONG_TEXT}).json()["count"]
    msg = client.post(COMPLETIONS, json=completion(prompt=LONG_TEXT)).json()["error"]["message"]
    assert str(tokens) in msg and str(MAX_MODEL_LEN) in msg
    msg = client.post(COMPLETIONS, json=completion(prompt=[1, 2, 3], max_tokens=MAX_MODEL_LEN)).json()["error"]["message"]
    assert str(3 + MAX_MODEL_LEN) in msg and str(MAX_MODEL_LEN) in msg
    msg = client.post(COMPLETIONS, json=completion(n=10 ** 6)).json()["error"]["message"]
    assert str(10 ** 6) in msg and str(MAX_NUM_SEQS) in msg
    msg = client.post(CHAT, json=chat(logprobs=True, top_logprobs=21)).json()["error"]["message"]
    assert msg.startswith("top_logprobs") and "20" in msg
    msg = client.post(COMPLETIONS, content=b'{"prompt": "\xff"}', headers=JSON).json()["error"]["message"]
    assert "UTF-8" in msg
    msg = client.post(COMPLETIONS, json=completion(prompt=[VOCAB])).json()["error"]["message"]
    assert str(VOCAB) in msg


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
                                     {"Authorization": f"Basic {API_KEY}"}],
                         ids=["missing", "wrong", "no-bearer", "basic"])
def test_api_key_missing_or_wrong_is_401(served, headers):
    _, keyed_url, _ = served
    r = httpx.post(keyed_url + COMPLETIONS, json=completion(), headers=headers, timeout=30)
    assert_openai_error(r, 401, None, "invalid_api_key")
    assert httpx.get(keyed_url + "/health", timeout=10).status_code == 200
    ok = httpx.post(keyed_url + COMPLETIONS, json=completion(), timeout=30,
                    headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200, ok.text


def test_wrong_method_is_405_with_allow(client):
    r = client.get(COMPLETIONS)
    assert_openai_error(r, 405, None)
    assert r.headers["allow"] == "POST"


ACCEPTED = [
    # OpenAI: "" is a valid prompt (the model sees only BOS here); vLLM takes it too.
    ("empty-prompt", COMPLETIONS, completion(prompt=""), None),
    ("empty-content", CHAT, chat(messages=[{"role": "user", "content": ""}]), None),
    # An assistant turn may omit content (OpenAI).
    ("assistant-without-content", CHAT,
     chat(messages=HI + [{"role": "assistant", "content": None}, {"role": "user", "content": "and?"}]), None),
    # vLLM has no limit on the number of stop strings (OpenAI's is 4).
    ("six-stops", COMPLETIONS, completion(stop=["a", "b", "c", "d", "e", "f"]), None),
    # Any top_k >= 1 means "at most k" (vLLM), also beyond the vocabulary and 32 bits.
    ("top_k-huge", COMPLETIONS, completion(top_k=2 ** 40), None),
    ("seed-int64-min", COMPLETIONS, completion(seed=-(2 ** 63)), None),
    ("best_of-equal-n", COMPLETIONS, completion(n=2, best_of=2), None),
    # tool_choice "none": the tools go to the chat template and no calls are parsed (vLLM).
    ("tools-with-tool_choice-none", CHAT, chat(tools=[TOOL], tool_choice="none"), None),
    ("response_format-text", CHAT, chat(response_format={"type": "text"}), None),
    # Fields of newer API versions are ignored, as OpenAI clients expect.
    ("unknown-field", COMPLETIONS, completion(some_future_field={"x": 1}), None),
    ("json-with-charset", COMPLETIONS, raw(json.dumps(completion())), {"content-type": "application/json; charset=utf-8"}),
]


@pytest.mark.parametrize("path,body,headers", [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_edge_values_that_are_accepted(client, path, body, headers):
    r = client.post(path, content=body, headers=headers) if isinstance(body, bytes) else client.post(path, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_same_engine_still_generates_the_same(client, served, greedy_before):
    """After every bad request: healthy, nothing left running, and the greedy text unchanged."""
    _, _, llm = served
    assert client.get("/health").status_code == 200
    r = client.post(COMPLETIONS, json=GREEDY)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == greedy_before
    assert r.json()["usage"]["completion_tokens"] == GREEDY["max_tokens"]
    stats = llm.llm_engine.get_stats()
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
