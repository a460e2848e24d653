"""The server against its own OpenAPI document, with schemathesis: every operation the schema lists
(OpenAI, tokenizer, health, version, the Triton /v2 endpoints) gets the examples the schema gives,
schemathesis's deterministic coverage cases (boundary and wrong-typed values, missing fields, other
HTTP methods, non-JSON bodies) and seeded fuzzing, over real HTTP against the in-process uvicorn
server.

Checks on every response: no 5xx (not_a_server_error), a status, content type, headers and body
the schema documents for it (response_schema_conformance and the other conformance checks),
schema-violating requests refused with a 4xx (negative_data_rejection), 405 + Allow for methods an
operation lacks. Beyond the document: JSON answers of the OpenAI endpoints parse as the
official `openai` SDK's types (as do streamed chat chunks; streamed completion chunks as the
declared model), streams end with [DONE] and carry no error event, and every OpenAI-path error is
an OpenAI error object. Not checked: that schema-valid requests succeed (positive_data_acceptance) - the
schema cannot know the runtime limits (vocabulary, context length, the served model's name) that
make many of them a correct 400/404.

Work per request is bounded by the engine's own limits, not by filtering the generated requests:
max_model_len 128 caps every generation, max_num_seqs 4 caps n, and any request taking longer than
REQUEST_TIMEOUT_S fails the test as a hang.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import DEFAULT_LLM_KWARGS

schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")
from hypothesis import HealthCheck, settings  # noqa: E402  (schemathesis brings hypothesis)
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from server_util import serve  # noqa: E402  (needs uvicorn)

MODEL = "tiny"
MAX_MODEL_LEN = 128
MAX_EXAMPLES = 25  # fuzzing cases per operation; the coverage phase adds its own fixed set
REQUEST_TIMEOUT_S = 30.0
MAX_STREAM_EVENTS = 5000
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}"
          "{% endif %}")
# The operations this file must cover (the schema may list more: the Triton /v2 ones).
REQUIRED_OPERATIONS = {"POST /v1/completions", "POST /v1/chat/completions", "POST /tokenize", "POST /detokenize",
                       "GET /v1/models", "GET /version", "GET /health"}


@pytest.fixture(scope="module")
def served(llmcore, checkpoint, tmp_path_factory):
    """(base URL, llm): llama_gqa with a ChatML template, small limits, served over HTTP."""
    from llmcore.server import create_app

    model_dir = tmp_path_factory.mktemp("schemathesis") / "llama_chat"
    shutil.copytree(checkpoint("llama_gqa"), model_dir)
    (model_dir / "chat_template.jinja").write_text(CHATML)
    kwargs = dict(DEFAULT_LLM_KWARGS, num_gpu_blocks_override=64, max_model_len=MAX_MODEL_LEN, max_num_seqs=4)
    llm = llmcore.LLM(model=str(model_dir), **kwargs)
    app = create_app(llm, served_model_names=[MODEL], model_path=str(model_dir))
    with serve(app) as url:
        yield url, llm
    llm.shutdown()


@pytest.fixture(scope="module")
def api_schema(served):
    url, _ = served
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    # Path parameters name the served model (the Triton routes), so their cases reach the handlers
    # instead of all ending in 404.
    schema.config.update(base_url=url, request_timeout=REQUEST_TIMEOUT_S,
                         parameters={"path.model": MODEL, "path.version": "1"})
    # Read whole streams (schemathesis's default stops after 20 events): every event is checked.
    schema.config.max_stream_events = MAX_STREAM_EVENTS
    schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


def _content_type(response) -> str:
    return (response.headers.get("content-type") or [""])[0].split(";")[0].strip()


def _check_openai_shapes(case, response) -> None:
    """The OpenAI endpoints' answers as the official SDK reads them."""
    path = case.operation.path
    if path.startswith("/v2"):
        return  # Triton's protocol: {"error": "message"} and its own models (checked by the schema)
    status, ctype = response.status_code, _content_type(response)
    if status >= 400:
        assert ctype == "application/json", (status, ctype)
        err = json.loads(response.content)["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
        assert isinstance(err["message"], str) and err["message"]
        return
    if status != 200 or path not in ("/v1/completions", "/v1/chat/completions"):
        return
    chat = path == "/v1/chat/completions"
    if ctype == "text/event-stream":
        lines = response.content.decode("utf-8", errors="replace").split("\n")
        # A stream over max-stream-events is read only in part; its last line may be cut short.
        whole = not response.stream_cut_short and not response.is_truncated
        events = [line[len("data: "):] for line in (lines if whole else lines[:-1]) if line.startswith("data: ")]
        if whole:
            assert events and events[-1] == "[DONE]", events[-3:]
            events = events[:-1]
        # The SDK reads completion chunks as `Completion`, without validation: its finish_reason
        # is not nullable there, so those chunks are checked against the server's declared model.
        from llmcore.server.protocol import CompletionStreamResponse
        chunk_type = openai.types.chat.ChatCompletionChunk if chat else CompletionStreamResponse
        for event in events:
            payload = json.loads(event)
            assert "error" not in payload, payload  # the engine failed mid-stream
            chunk_type.model_validate(payload)
    else:
        assert ctype == "application/json", ctype
        body = json.loads(response.content)
        if not chat:
            # OpenAI (and vLLM) give an echoed prompt's first token null logprobs, which the SDK's
            # Completion type does not allow; logprobs are checked against the schema above.
            body["choices"] = [{**c, "logprobs": None} for c in body["choices"]]
        (openai.types.chat.ChatCompletion if chat else openai.types.Completion).model_validate(body)


def test_schema_lists_every_endpoint(api_schema):
    labels = {op.ok().label for op in api_schema.get_all_operations()}
    assert REQUIRED_OPERATIONS <= labels, REQUIRED_OPERATIONS - labels
    # The chat page and /metrics are not API operations.
    assert not any(label.split(" ", 1)[1] in ("/", "/metrics") or " /static" in label for label in labels), labels


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_api(case):
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
    _check_openai_shapes(case, response)


def test_still_serving_after_the_run(served):
    url, llm = served
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    r = httpx.post(url + "/v1/completions", timeout=30,
                   json={"model": MODEL, "prompt": "The cat", "max_tokens": 4, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 4
    stats = llm.llm_engine.get_stats()
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
