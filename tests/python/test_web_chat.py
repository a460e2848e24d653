"""The web chat page at GET / in a real browser: Playwright for Python driving Debian's Chromium
(/usr/bin/chromium; Playwright cannot download its own browser offline) against the app served
in-process.

Expected values come from other paths: the reply the page renders must equal what a direct,
non-streamed /v1/chat/completions call returns for the same conversation with greedy sampling;
the history the page sends is checked against the messages typed and the replies shown; Stop is
checked on the engine itself (every KV block free, fewer tokens generated than asked for).

The model is built here: a random Llama as tiny as the other test checkpoints in vocabulary (the
test tokenizer's 512 pieces) but wider (hidden 512, 2 layers), so a CPU engine streams tokens at
a pace a browser keeps up with, and with 4096 positions and a zero lm_head row for EOS: EOS's
logit is exactly 0 and greedy decoding never picks it (some of the other 511 logits are
positive), so a reply runs to max_tokens unless it is stopped.
"""

from __future__ import annotations

import os
import shutil

import pytest

import fixtures
from conftest import DEFAULT_LLM_KWARGS

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from server_util import serve, wait_idle  # noqa: E402  (needs uvicorn)

try:
    from playwright import sync_api
    from playwright.sync_api import expect
except ImportError:  # the browser tests skip; the page-serving test still runs
    sync_api = expect = None
CHROMIUM = os.environ.get("LLMCORE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

MODEL = "tiny-chat"
API_KEY = "web-key-42"
MAX_MODEL_LEN = 4096
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}"
          "{% endif %}")
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def chat_checkpoint(tokenizer_dir, tmp_path_factory):
    """The model described above, with a ChatML chat template and the test tokenizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("web") / "llama_wide"
    config = transformers.LlamaConfig(
        vocab_size=fixtures.VOCAB_SIZE, bos_token_id=fixtures.BOS_ID, eos_token_id=fixtures.EOS_ID,
        hidden_size=512, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=MAX_MODEL_LEN, rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[fixtures.EOS_ID].zero_()
    model.save_pretrained(str(out), safe_serialization=True)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    (out / "chat_template.jinja").write_text(CHATML)
    return out


@pytest.fixture(scope="module")
def llm(llmcore, chat_checkpoint):
    kwargs = dict(DEFAULT_LLM_KWARGS, num_gpu_blocks_override=MAX_MODEL_LEN // 16, max_model_len=MAX_MODEL_LEN)
    engine = llmcore.LLM(model=str(chat_checkpoint), **kwargs)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def url(llm):
    from llmcore.server import create_app

    with serve(create_app(llm, served_model_names=[MODEL])) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def browser():
    if sync_api is None:
        pytest.skip("playwright is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no chromium binary at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _open(page, base_url: str, temperature: str = "0", max_tokens: str = "16") -> None:
    page.goto(base_url + "/")
    expect(page.locator("#model option")).to_have_count(1)
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)


def _is_chat_post(request) -> bool:
    return request.method == "POST" and request.url.endswith("/v1/chat/completions")


def _send(page, text: str, key: str = "click"):
    """Sends `text` (by the Send button or the Enter key); returns the request the page made."""
    page.fill("#prompt", text)
    with page.expect_request(_is_chat_post) as info:
        if key == "click":
            page.click("#send")
        else:
            page.press("#prompt", "Enter")
    return info.value


def _finished_reply(page, index: int):
    reply = page.locator("#log .msg.assistant").nth(index)
    expect(reply).to_have_attribute("aria-busy", "false")
    return reply


def _direct(base_url: str, messages, max_tokens: int) -> dict:
    r = httpx.post(base_url + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": messages, "temperature": 0, "max_tokens": max_tokens})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]




# -- serving the page ----------------------------------------------------------------------------
def test_page_and_assets_are_open_and_outside_the_schema(llm):
    from llmcore.server import create_app

    with serve(create_app(llm, served_model_names=[MODEL], api_key=API_KEY)) as base_url:
        page = httpx.get(base_url + "/", timeout=10)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<script src="/static/app.js"' in page.text and 'href="/static/style.css"' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
            r = httpx.get(f"{base_url}/static/{asset}", timeout=10)
            assert r.status_code == 200 and kind in r.headers["content-type"], asset
        missing = httpx.get(base_url + "/static/nope.js", timeout=10)
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
        # The API itself still needs the key.
        assert httpx.get(base_url + "/v1/models", timeout=10).status_code == 401
        paths = httpx.get(base_url + "/openapi.json", timeout=10,
                          headers={"Authorization": f"Bearer {API_KEY}"}).json()["paths"]
        assert "/v1/chat/completions" in paths
        assert not [p for p in paths if p == "/" or p.startswith("/static")]


# -- chatting ------------------------------------------------------------------------------------
def test_greedy_reply_matches_the_api_and_history_is_sent(page, url):
    _open(page, url)
    assert page.locator("#model option").evaluate_all("os => os.map(o => o.value)") == [MODEL]

    first = "Hello <b>there</b> & <img src=x onerror=alert(1)>"
    req1 = _send(page, first)
    body1 = req1.post_data_json
    assert body1 == {"model": MODEL, "messages": [{"role": "user", "content": first}], "stream": True,
                     "temperature": 0, "max_tokens": 16}
    reply1 = _finished_reply(page, 0)
    text1 = reply1.locator(".text").text_content()
    expected1 = _direct(url, body1["messages"], 16)
    assert text1 == expected1["message"]["content"] and text1
    assert reply1.get_attribute("data-finish") == expected1["finish_reason"] == "length"
    # Text is rendered as text: the markup typed shows literally and creates no elements.
    user1 = page.locator("#log .msg.user").nth(0)
    assert user1.locator(".text").text_content() == first
    assert page.locator("#log b, #log img").count() == 0

    second = "Tell me more."
    body2 = _send(page, second, key="Enter").post_data_json
    assert body2["messages"] == [{"role": "user", "content": first}, {"role": "assistant", "content": text1},
                                 {"role": "user", "content": second}]
    text2 = _finished_reply(page, 1).locator(".text").text_content()
    assert text2 == _direct(url, body2["messages"], 16)["message"]["content"]
    assert page.locator("#prompt").input_value() == ""

    # New chat forgets the history.
    page.click("#new-chat")
    expect(page.locator("#log .msg")).to_have_count(0)
    body3 = _send(page, second).post_data_json
    assert body3["messages"] == [{"role": "user", "content": second}]
    assert _finished_reply(page, 0).locator(".text").text_content() == \
        _direct(url, body3["messages"], 16)["message"]["content"]


def test_stop_aborts_the_request_in_the_engine(page, url, llm):
    max_tokens = MAX_MODEL_LEN - 64
    _open(page, url, max_tokens=str(max_tokens))
    before = wait_idle(llm)
    _send(page, "Go on and on")
    reply = page.locator("#log .msg.assistant").nth(0)
    # Streamed: text shows while the reply is still running.
    page.wait_for_function(
        "() => { const m = document.querySelector('#log .msg.assistant');"
        " return m.getAttribute('aria-busy') === 'true' && m.querySelector('.text').textContent.length > 0; }")
    expect(page.locator("#stop")).to_be_enabled()
    page.click("#stop")
    expect(reply).to_have_attribute("aria-busy", "false")
    assert reply.get_attribute("data-finish") == "abort"
    expect(reply.locator(".note")).to_have_text("Stopped.")
    expect(page.locator("#stop")).to_be_disabled()

    after = wait_idle(llm, timeout=10.0)
    generated = after["num_generation_tokens"] - before["num_generation_tokens"]
    assert 0 < generated < max_tokens, generated
    assert after["num_requests_finished"] == before["num_requests_finished"] + 1

    # The stopped reply stays in the history as far as it got.
    shown = reply.locator(".text").text_content()
    page.fill("#max-tokens", "4")
    body = _send(page, "Next").post_data_json
    assert body["messages"][1] == {"role": "assistant", "content": shown}
    _finished_reply(page, 1)


def test_error_objects_are_shown_and_the_turn_is_not_kept(page, url):
    _open(page, url, max_tokens=str(10 * MAX_MODEL_LEN))
    body = _send(page, "Too long a reply").post_data_json
    reply = _finished_reply(page, 0)
    assert reply.get_attribute("data-finish") == "error"
    direct = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    assert direct.status_code == 400
    err = direct.json()["error"]
    note = reply.locator(".note.error").text_content()
    assert err["message"] in note and err["code"] in note
    assert page.locator("#prompt").input_value() == "Too long a reply"  # back in the box to edit

    page.fill("#max-tokens", "4")
    again = _send(page, "Short").post_data_json
    assert again["messages"] == [{"role": "user", "content": "Short"}]
    assert _finished_reply(page, 1).get_attribute("data-finish") == "length"


def test_api_key_field_sends_bearer_header(page, llm):
    from llmcore.server import create_app

    with serve(create_app(llm, served_model_names=[MODEL], api_key=API_KEY)) as base_url:
        page.goto(base_url + "/")
        # Without the key the page loads, but the model list is refused and nothing can be sent.
        expect(page.locator("#status")).to_contain_text("invalid_api_key")
        expect(page.locator("#model option")).to_have_count(0)
        expect(page.locator("#send")).to_be_disabled()

        page.fill("#api-key", API_KEY)
        page.press("#api-key", "Tab")  # `change` reloads the models with the key
        expect(page.locator("#model option")).to_have_count(1)
        expect(page.locator("#status")).to_have_text("")
        page.fill("#max-tokens", "6")  # temperature left empty: the server's default applies
        request = _send(page, "Hi")
        assert request.all_headers()["authorization"] == f"Bearer {API_KEY}"
        assert request.post_data_json == {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                          "stream": True, "max_tokens": 6}
        reply = _finished_reply(page, 0)
        assert reply.get_attribute("data-finish") in ("stop", "length")
        assert reply.locator(".note.error").count() == 0
