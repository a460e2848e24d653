"""Chat templates, the HF-style Tokenizer and LLM.chat, with transformers as the reference.

The tokenizer is a sentencepiece BPE trained here (identity normalization, the chat control
tokens of ChatML and Llama-3 as user-defined pieces, declared special in tokenizer_config.json).
The reference is transformers' LlamaTokenizer built from the same model file (vocabulary and
merges read with sentencepiece, legacy=True: each text segment between special tokens gets the
sentencepiece dummy prefix, as the native tokenizer encodes them). Template strings are the
public ones of Llama-2-chat, Llama-3-Instruct, ChatML and Qwen2.5, plus templates written here
to reach the rest of what transformers' Jinja environment offers.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import pytest

import fixtures

jinja2 = pytest.importorskip("jinja2")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

BIG_BIAS = 100.0  # a logit_bias far above the fixture model's logit spread: the token always wins
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
               "<|end_header_id|>", "<|eot_id|>"]

# -- templates (data) ----------------------------------------------------------------------------

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Written here: namespace, loop controls, {% generation %}, strftime_now, tojson's arguments,
# dict(), tools, documents and caller variables, with block tags indented over several lines so
# trim_blocks / lstrip_blocks decide the whitespace.
FEATURES = """{%- set ns = namespace(system='', count=0) %}
{%- if date_string is not defined %}
    {%- set date_string = strftime_now("%Y") %}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- set ns.system = message['content'] %}
        {%- continue %}
    {%- endif %}
    {%- set ns.count = ns.count + 1 %}
    {%- if max_turns is defined and ns.count > max_turns %}
        {%- break %}
    {%- endif %}
    <{{ message['role'] }}>{% generation %}{{ message['content'] }}{% endgeneration %}</{{ message['role'] }}>
{% endfor %}
system={{ ns.system }} year={{ date_string }} turns={{ ns.count }}
{%- if tools is not none %}
tools:
{%- for t in tools %}
{{ t | tojson(indent=4) }}
{{ t | tojson }}
{%- endfor %}
{%- endif %}
{%- if documents %}
{%- for d in documents %}
[{{ loop.index }}] {{ d['title'] }}: {{ d['text'] }}
{%- endfor %}
{%- endif %}
{{ dict(a=1, b=[1, 2]) | tojson(sort_keys=True, separators=(',', ':')) }} {{ bos_token }}|{{ eos_token }}|{{ unk_token }}
{% for message in messages %}
    {% if message['role'] == 'user' %}
    U{{ loop.index }}
    {% endif %}
{% endfor %}
{%- if add_generation_prompt %}
<assistant>
{%- endif %}
"""

# Content as a string or as a list of parts, as multimodal templates read it.
PARTS = """{%- for message in messages %}
{%- if message['content'] is string %}{{ message['role'] }}: {{ message['content'] }}
{% else %}{{ message['role'] }}:{% for part in message['content'] %}{% if part['type'] == 'text' %} {{ part['text'] }}{% elif part['type'] == 'image' %} <image>{% endif %}{% endfor %}
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}assistant:{% endif %}"""

# Tools, documents and variables given to chat(): short enough for the fixture model's 512
# positions.
SHORT_EXTRAS = ("{% if tools %}tools:{% for t in tools %} {{ t.function.name }}{% endfor %}\n{% endif %}"
                "{% for d in documents or [] %}[{{ d.title }}] {{ d.text }}\n{% endfor %}"
                "{% if greeting is defined %}{{ greeting }}\n{% endif %}") + CHATML

TEMPLATES = {"llama2": LLAMA2, "llama3": LLAMA3, "chatml": CHATML, "qwen25": QWEN25,
             "features": FEATURES, "parts": PARTS}
# Templates whose token ids are compared too. FEATURES renders runs of spaces at the start of a
# text segment, where sentencepiece and transformers' Metaspace tokenize differently (a
# tokenizer question, not a template one), so only its text is compared.
IDS_TEMPLATES = ("llama2", "llama3", "chatml", "qwen25", "parts")

# -- conversations -------------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "The cat walks to the house."}],
    "system": [SYSTEM, {"role": "user", "content": "What time is it?"}],
    "multi_turn": [
        SYSTEM,
        {"role": "user", "content": "The old man looks at the blue sea."},
        {"role": "assistant", "content": "  Yes, of course.  It was a good day.  "},
        {"role": "user", "content": "Ünïcode 日本 🙂 and \"quotes\" <tags> & more?"},
    ],
    "no_system_multi_turn": [
        {"role": "user", "content": "Hello, world!"},
        {"role": "assistant", "content": "One, two, three."},
        {"role": "user", "content": "Then they went home.\nNobody knew why."},
    ],
}
# Ends with the start of the assistant's answer, for continue_final_message.
PREFILL = [SYSTEM, {"role": "user", "content": "Tell me about the cat."},
           {"role": "assistant", "content": "The cat walks"}]

TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city <now> & 'later'",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "Zürich or 東京"}},
                   "required": ["city"]}}}
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "{\"temp\": 21}"},
    {"role": "tool", "content": "{\"sky\": \"clear\"}"},
]
DOCUMENTS = [{"title": "Cats", "text": "Cats sleep a lot."}, {"title": "Dogs", "text": "Dogs bark."}]


# -- tokenizers ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_tokenizer_dir(tmp_path_factory) -> Path:
    """A sentencepiece tokenizer (512 pieces, as the fixture models' vocabulary) whose control
    tokens include the chat tokens; no chat template."""
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("chat_tokenizer")
    corpus = out / "corpus.txt"
    corpus.write_text(fixtures.training_text(), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out / "spm"), model_type="bpe", vocab_size=fixtures.VOCAB_SIZE,
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2, input_sentence_size=0, shuffle_input_sentence=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        user_defined_symbols=CHAT_TOKENS)
    (out / "spm.model").rename(out / "tokenizer.model")
    (out / "spm.vocab").unlink()
    corpus.unlink()
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    added = {str(sp.piece_to_id(t)): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                      "normalized": False, "single_word": False} for t in CHAT_TOKENS}
    config = {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "legacy": True, "clean_up_tokenization_spaces": False,
        # AddedToken-dict spelling for BOS, plain strings for the others: both occur on the Hub.
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False,
                      "rstrip": False, "single_word": False},
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "added_tokens_decoder": added,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="module")
def hf_tok(chat_tokenizer_dir):
    """The transformers reference: a LlamaTokenizer over the same sentencepiece model."""
    from tokenizers import AddedToken
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    vocab, _, merges = SentencePieceExtractor(str(chat_tokenizer_dir / "tokenizer.model")).extract(None)
    tok = LlamaTokenizer(vocab=vocab, merges=merges, legacy=True, bos_token="<s>", eos_token="</s>",
                         unk_token="<unk>", add_bos_token=True, add_eos_token=False)
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, special=True, normalized=False) for t in CHAT_TOKENS]})
    return tok


@pytest.fixture(scope="module")
def tok(llmcore, chat_tokenizer_dir):
    return llmcore.Tokenizer.from_pretrained(chat_tokenizer_dir)


def _with_files(src: Path, dst: Path, files: dict, config_update: dict = None) -> Path:
    """A copy of tokenizer directory `src` with extra files ({relative path: text}) and
    tokenizer_config.json entries."""
    shutil.copytree(src, dst)
    for rel, text in files.items():
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_text(text, encoding="utf-8")
    if config_update:
        cfg = json.loads((dst / "tokenizer_config.json").read_text())
        cfg.update(config_update)
        (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return dst


def _hf_render(hf_tok, conversation, template, **kw):
    return hf_tok.apply_chat_template(conversation, chat_template=template, tokenize=False, **kw)


def _hf_ids(hf_tok, conversation, template, **kw):
    return list(hf_tok.apply_chat_template(conversation, chat_template=template, tokenize=True,
                                           return_dict=False, **kw))


# -- the tokenizer's HF-style surface --------------------------------------------------------------

def test_tokenizer_surface_matches_transformers(tok, hf_tok):
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", None)
    assert (tok.bos_token_id, tok.eos_token_id) == (hf_tok.bos_token_id, hf_tok.eos_token_id) == (1, 2)
    assert tok.special_tokens_map == hf_tok.special_tokens_map
    assert len(tok) == len(hf_tok) == tok.vocab_size == fixtures.VOCAB_SIZE
    assert tok.chat_template is None
    text = "<|im_start|>user\nThe cat walks to the house.<|im_end|>\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == hf_tok(text, add_special_tokens=False)["input_ids"]
    assert tok.encode(text) == hf_tok(text)["input_ids"] == [1] + ids
    assert tok.convert_ids_to_tokens(ids) == hf_tok.convert_ids_to_tokens(ids)
    assert tok.convert_ids_to_tokens(ids[0]) == hf_tok.convert_ids_to_tokens(ids[0])
    assert tok.convert_tokens_to_ids(CHAT_TOKENS) == hf_tok.convert_tokens_to_ids(CHAT_TOKENS)
    assert tok.decode(ids, skip_special_tokens=True) == hf_tok.decode(ids, skip_special_tokens=True)


# -- renderings identical to transformers ------------------------------------------------------

@pytest.mark.parametrize("add_generation_prompt", [False, True])
@pytest.mark.parametrize("conv_name", list(CONVERSATIONS))
@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_rendering_and_ids_match_transformers(tok, hf_tok, template_name, conv_name, add_generation_prompt):
    template, conversation = TEMPLATES[template_name], CONVERSATIONS[conv_name]
    if template_name == "llama2" and conversation[-1]["role"] != "user":
        pytest.skip("Llama-2's template requires alternating roles")
    kw = dict(add_generation_prompt=add_generation_prompt)
    expected = _hf_render(hf_tok, conversation, template, **kw)
    got = tok.apply_chat_template(conversation, chat_template=template, tokenize=False, **kw)
    assert got == expected
    if template_name in IDS_TEMPLATES:
        assert tok.apply_chat_template(conversation, chat_template=template, **kw) == _hf_ids(
            hf_tok, conversation, template, **kw)


def test_known_renderings(tok):
    """Anchors independent of transformers: the exact prompt formats, written out by hand."""
    conv = CONVERSATIONS["system"]
    assert tok.apply_chat_template(conv, chat_template=LLAMA2, tokenize=False) == (
        "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nWhat time is it? [/INST]")
    assert tok.apply_chat_template(conv, chat_template=LLAMA3, tokenize=False, add_generation_prompt=True) == (
        "<s><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat time is it?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.apply_chat_template(conv, chat_template=CHATML, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat time is it?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("template_name", ["llama2", "llama3", "chatml", "qwen25", "features", "parts"])
def test_continue_final_message_matches_transformers(tok, hf_tok, template_name):
    template = TEMPLATES[template_name]
    conv = PREFILL if template_name != "llama2" else PREFILL[1:]
    expected = _hf_render(hf_tok, conv, template, continue_final_message=True)
    got = tok.apply_chat_template(conv, chat_template=template, tokenize=False, continue_final_message=True)
    assert got == expected
    assert got.rstrip().endswith("The cat walks")
    if template_name in IDS_TEMPLATES:
        assert tok.apply_chat_template(conv, chat_template=template, continue_final_message=True) == _hf_ids(
            hf_tok, conv, template, continue_final_message=True)


def test_continue_final_message_content_parts(tok, hf_tok):
    conv = [{"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "I see a"}, {"type": "image"}]}]
    expected = _hf_render(hf_tok, conv, PARTS, continue_final_message=True)
    assert tok.apply_chat_template(conv, chat_template=PARTS, tokenize=False, continue_final_message=True) == expected
    assert expected.endswith("I see a")


def test_continue_final_message_with_generation_prompt_is_an_error(tok, hf_tok):
    with pytest.raises(ValueError):
        hf_tok.apply_chat_template(PREFILL, chat_template=CHATML, tokenize=False,
                                   continue_final_message=True, add_generation_prompt=True)
    with pytest.raises(ValueError, match="continue_final_message and add_generation_prompt"):
        tok.apply_chat_template(PREFILL, chat_template=CHATML, tokenize=False,
                                continue_final_message=True, add_generation_prompt=True)


def test_raise_exception_surfaces(llmcore, tok, hf_tok):
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(jinja2.TemplateError) as hf_err:
        _hf_render(hf_tok, bad, LLAMA2)
    with pytest.raises(llmcore.ChatTemplateError) as err:
        tok.apply_chat_template(bad, chat_template=LLAMA2, tokenize=False)
    assert str(err.value) == str(hf_err.value) == "Conversation roles must alternate user/assistant/user/assistant/..."
    assert isinstance(err.value, ValueError) and isinstance(err.value, jinja2.TemplateError)


def test_tools_documents_and_kwargs_match_transformers(tok, hf_tok):
    for template, conv, kw in [
        (QWEN25, TOOL_CHAT, dict(tools=[TOOL], add_generation_prompt=True)),
        (QWEN25, TOOL_CHAT, dict(add_generation_prompt=True)),
        (FEATURES, CONVERSATIONS["multi_turn"], dict(tools=[TOOL], documents=DOCUMENTS, max_turns=1,
                                                     date_string="26 Jul 2024")),
        (FEATURES, CONVERSATIONS["multi_turn"], dict(bos_token="<override>")),
    ]:
        expected = _hf_render(hf_tok, conv, template, **kw)
        assert tok.apply_chat_template(conv, chat_template=template, tokenize=False, **kw) == expected
    # The None-valued content of the tool-calling message is dropped, not rendered as "None".
    probe = "{% for m in messages %}{{ m.role }}{% if m.content is defined %}={{ m.content }}{% endif %};{% endfor %}"
    got = tok.apply_chat_template(TOOL_CHAT, chat_template=probe, tokenize=False)
    assert got == _hf_render(hf_tok, TOOL_CHAT, probe)
    assert got == 'user=Weather in Paris?;assistant;tool={"temp": 21};tool={"sky": "clear"};'


def test_strftime_now_renders_the_current_date(tok):
    before = datetime.datetime.now().strftime("%Y-%m-%d")
    got = tok.apply_chat_template(CONVERSATIONS["single"], chat_template="{{ strftime_now('%Y-%m-%d') }}",
                                  tokenize=False)
    after = datetime.datetime.now().strftime("%Y-%m-%d")
    assert got in (before, after)


def test_sandbox_refuses_underscore_attributes(tok):
    with pytest.raises(jinja2.exceptions.SecurityError):
        tok.apply_chat_template(CONVERSATIONS["single"], tokenize=False,
                                chat_template="{% set ns = namespace(_x=1) %}{{ ns._x }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        tok.apply_chat_template(CONVERSATIONS["single"], tokenize=False,
                                chat_template="{{ messages.__class__.__mro__ }}{{ ''.__class__.mro() }}")


def test_batched_conversations(tok, hf_tok):
    convs = [CONVERSATIONS["single"], CONVERSATIONS["multi_turn"]]
    assert tok.apply_chat_template(convs, chat_template=CHATML, tokenize=False, add_generation_prompt=True) == (
        _hf_render(hf_tok, convs, CHATML, add_generation_prompt=True))
    assert tok.apply_chat_template(convs, chat_template=LLAMA3, add_generation_prompt=True) == [
        _hf_ids(hf_tok, c, LLAMA3, add_generation_prompt=True) for c in convs]


def test_empty_conversation_is_an_error(tok):
    with pytest.raises(ValueError, match="empty conversation"):
        tok.apply_chat_template([], chat_template=CHATML)


# -- where templates come from -------------------------------------------------------------------

def test_no_template_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="no chat template") as err:
        tok.apply_chat_template(CONVERSATIONS["single"])
    assert "chat_template=" in str(err.value)


def test_template_from_jinja_file_wins_over_config(llmcore, tmp_path, chat_tokenizer_dir, hf_tok):
    d = _with_files(chat_tokenizer_dir, tmp_path / "t", {"chat_template.jinja": LLAMA3},
                    {"chat_template": CHATML})
    t = llmcore.Tokenizer.from_pretrained(d)
    assert t.chat_template == LLAMA3
    conv = CONVERSATIONS["multi_turn"]
    assert t.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) == _hf_render(
        hf_tok, conv, LLAMA3, add_generation_prompt=True)


def test_template_from_tokenizer_config_string(llmcore, tmp_path, chat_tokenizer_dir, hf_tok):
    d = _with_files(chat_tokenizer_dir, tmp_path / "t", {}, {"chat_template": QWEN25})
    t = llmcore.Tokenizer.from_pretrained(d)
    conv = CONVERSATIONS["system"]
    assert t.apply_chat_template(conv, add_generation_prompt=True) == _hf_ids(
        hf_tok, conv, QWEN25, add_generation_prompt=True)


def test_named_templates_from_tokenizer_config(llmcore, tmp_path, chat_tokenizer_dir, hf_tok):
    named = [{"name": "default", "template": CHATML}, {"name": "tool_use", "template": QWEN25},
             {"name": "llama3", "template": LLAMA3}]
    d = _with_files(chat_tokenizer_dir, tmp_path / "t", {}, {"chat_template": named})
    t = llmcore.Tokenizer.from_pretrained(d)
    assert t.chat_template == {e["name"]: e["template"] for e in named}
    hf_tok_named = _hf_copy_with_templates(hf_tok, t.chat_template)
    conv = CONVERSATIONS["system"]
    for kw in [dict(), dict(tools=[TOOL]), dict(chat_template="llama3"), dict(chat_template="tool_use"),
               dict(chat_template=LLAMA2)]:
        expected = hf_tok_named.apply_chat_template(conv, tokenize=False, add_generation_prompt=True, **kw)
        assert t.apply_chat_template(conv, tokenize=False, add_generation_prompt=True, **kw) == expected
    # Spot checks that the selection is the one intended, not just the same as transformers'.
    assert t.get_chat_template() == CHATML
    assert t.get_chat_template(tools=[TOOL]) == QWEN25
    assert t.get_chat_template("llama3") == LLAMA3


def test_named_templates_without_default(llmcore, tmp_path, chat_tokenizer_dir):
    d = _with_files(chat_tokenizer_dir, tmp_path / "t", {},
                    {"chat_template": [{"name": "rag", "template": CHATML}, {"name": "tool_use", "template": QWEN25}]})
    t = llmcore.Tokenizer.from_pretrained(d)
    with pytest.raises(ValueError, match=r"\['rag', 'tool_use'\]"):
        t.apply_chat_template(CONVERSATIONS["single"])
    assert t.get_chat_template(tools=[TOOL]) == QWEN25
    assert t.get_chat_template("rag") == CHATML


def test_named_template_files(llmcore, tmp_path, chat_tokenizer_dir):
    d = _with_files(chat_tokenizer_dir, tmp_path / "t",
                    {"chat_template.jinja": CHATML, "chat_templates/tool_use.jinja": QWEN25})
    t = llmcore.Tokenizer.from_pretrained(d)
    assert t.chat_template == {"default": CHATML, "tool_use": QWEN25}


def test_chat_template_setter(llmcore, chat_tokenizer_dir, hf_tok):
    t = llmcore.Tokenizer.from_pretrained(chat_tokenizer_dir)
    t.chat_template = [{"name": "default", "template": LLAMA3}]
    assert t.chat_template == {"default": LLAMA3}
    conv = CONVERSATIONS["single"]
    assert t.apply_chat_template(conv) == _hf_ids(hf_tok, conv, LLAMA3)


def _hf_copy_with_templates(hf_tok, templates):
    import copy

    other = copy.deepcopy(hf_tok)
    other.chat_template = templates
    return other


# -- LLM.chat end to end -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory, checkpoint, chat_tokenizer_dir) -> Path:
    """The llama_gqa fixture model with the chat tokenizer (same 512-id vocabulary) and the
    Llama-3 template as chat_template.jinja."""
    d = tmp_path_factory.mktemp("chat_ckpt") / "model"
    shutil.copytree(checkpoint("llama_gqa"), d)
    (d / "special_tokens_map.json").unlink()
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(chat_tokenizer_dir / f, d / f)
    (d / "chat_template.jinja").write_text(LLAMA3, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def chat_llm(llmcore, chat_checkpoint):
    from conftest import DEFAULT_LLM_KWARGS

    llm = llmcore.LLM(model=str(chat_checkpoint), **DEFAULT_LLM_KWARGS)
    yield llm
    llm.shutdown()


def _greedy(llmcore, n=6):
    return llmcore.SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def test_llm_chat_prompt_ids_equal_transformers(llmcore, chat_llm, hf_tok):
    conv = CONVERSATIONS["multi_turn"]
    (out,) = chat_llm.chat(conv, _greedy(llmcore))
    assert out.prompt_token_ids == _hf_ids(hf_tok, conv, LLAMA3, add_generation_prompt=True)
    assert out.prompt == _hf_render(hf_tok, conv, LLAMA3, add_generation_prompt=True)
    # BOS once: the template writes it and chat() adds none of its own.
    assert out.prompt_token_ids.count(chat_llm.get_tokenizer().bos_token_id) == 1
    # The same prompt through generate() gives the same tokens: chat() only changed the prompt.
    (ref,) = chat_llm.generate({"prompt_token_ids": out.prompt_token_ids}, _greedy(llmcore))
    assert out.outputs[0].token_ids == ref.outputs[0].token_ids
    assert len(out.outputs[0].token_ids) == 6


def test_llm_chat_batch_keeps_order(llmcore, chat_llm, hf_tok):
    convs = [CONVERSATIONS["single"], CONVERSATIONS["system"], CONVERSATIONS["no_system_multi_turn"]]
    outs = chat_llm.chat(convs, _greedy(llmcore, 3), use_tqdm=False)
    assert [o.prompt_token_ids for o in outs] == [
        _hf_ids(hf_tok, c, LLAMA3, add_generation_prompt=True) for c in convs]


def test_llm_chat_options(llmcore, chat_llm, hf_tok):
    conv = CONVERSATIONS["system"]
    cases = [
        (dict(chat_template=CHATML), CHATML, dict(add_generation_prompt=True)),
        (dict(add_generation_prompt=False), LLAMA3, dict()),
        (dict(add_generation_prompt=False, continue_final_message=True), LLAMA3, dict(continue_final_message=True)),
        (dict(chat_template=SHORT_EXTRAS, tools=[TOOL]), SHORT_EXTRAS, dict(tools=[TOOL], add_generation_prompt=True)),
        (dict(chat_template=SHORT_EXTRAS, chat_template_kwargs={"greeting": "Hi!", "documents": DOCUMENTS}),
         SHORT_EXTRAS, dict(greeting="Hi!", documents=DOCUMENTS, add_generation_prompt=True)),
    ]
    prompts = set()
    for chat_kw, template, hf_kw in cases:
        c = PREFILL if chat_kw.get("continue_final_message") else conv
        (out,) = chat_llm.chat(c, _greedy(llmcore, 2), **chat_kw)
        assert out.prompt_token_ids == _hf_ids(hf_tok, c, template, **hf_kw), chat_kw
        prompts.add(out.prompt)
    assert len(prompts) == len(cases)  # every option changed the prompt
    assert "tools: get_weather" in "".join(prompts) and "[Cats] Cats sleep a lot." in "".join(prompts)


def test_llm_chat_errors(llmcore, chat_llm):
    with pytest.raises(ValueError, match="continue_final_message and add_generation_prompt"):
        chat_llm.chat(PREFILL, _greedy(llmcore), continue_final_message=True)
    with pytest.raises(ValueError, match="chat_template_kwargs"):
        chat_llm.chat(PREFILL, _greedy(llmcore), chat_template_kwargs={"add_generation_prompt": False})
    with pytest.raises(llmcore.ChatTemplateError):
        chat_llm.chat([{"role": "assistant", "content": "x"}], _greedy(llmcore), chat_template=LLAMA2)
    with pytest.raises(ValueError, match="empty"):
        chat_llm.chat([], _greedy(llmcore))


def test_llm_chat_without_template_is_a_clear_error(make_llm):
    llm = make_llm("llama_gqa")  # the fixture checkpoints ship no chat template
    with pytest.raises(ValueError, match="no chat template"):
        llm.chat(CONVERSATIONS["single"])


# -- Llama-3 style: tokenizer.json, <|eot_id|> from generation_config.json -------------------------

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>", "<|im_start|>", "<|im_end|>"]


def _llama3_style_tokenizer(out: Path) -> dict:
    """Trains a byte-level BPE with Llama-3's split regex and special tokens; writes
    tokenizer.json and tokenizer_config.json (with the Llama-3 chat template) to `out`.
    Returns {special token: id}."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=LLAMA3_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(fixtures.training_text().splitlines(), trainer)
    ids = {t: tok.token_to_id(t) for t in LLAMA3_SPECIALS}
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ids[bos])])
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": "<|eot_id|>",
              "clean_up_tokenization_spaces": True, "chat_template": LLAMA3,
              "added_tokens_decoder": {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                                "normalized": False, "single_word": False}
                                       for t, i in ids.items()}}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return ids


@pytest.fixture(scope="module")
def bpe_tokenizer_dir(tmp_path_factory):
    """(directory, {special token: id}) of the Llama-3-style tokenizer.json tokenizer."""
    d = tmp_path_factory.mktemp("llama3_style_tokenizer")
    return d, _llama3_style_tokenizer(d)


def _hf_fast(directory: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"),
                                   bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")


@pytest.mark.parametrize("conv_name", list(CONVERSATIONS))
@pytest.mark.parametrize("template_name", list(TEMPLATES))
def test_ids_match_transformers_with_tokenizer_json(llmcore, bpe_tokenizer_dir, template_name, conv_name):
    """Token ids of every template through a byte-level tokenizer.json, against transformers'
    fast tokenizer (where whitespace runs tokenize the same on both sides)."""
    template, conversation = TEMPLATES[template_name], CONVERSATIONS[conv_name]
    if template_name == "llama2" and conversation[-1]["role"] != "user":
        pytest.skip("Llama-2's template requires alternating roles")
    d, _ = bpe_tokenizer_dir
    t, hf = llmcore.Tokenizer.from_pretrained(d), _hf_fast(d)
    assert t.special_tokens_map == hf.special_tokens_map
    kw = dict(add_generation_prompt=True, tools=[TOOL], documents=DOCUMENTS)
    assert t.apply_chat_template(conversation, chat_template=template, tokenize=False, **kw) == _hf_render(
        hf, conversation, template, **kw)
    assert t.apply_chat_template(conversation, chat_template=template, **kw) == _hf_ids(
        hf, conversation, template, **kw)


def test_llama3_style_model_stops_at_eot_id_from_generation_config(llmcore, tmp_path, checkpoint,
                                                                   bpe_tokenizer_dir):
    d = tmp_path / "llama3_style"
    shutil.copytree(checkpoint("llama_gqa"), d)
    for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (d / f).unlink()
    src, ids = bpe_tokenizer_dir
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, d / f)
    eot, end = ids["<|eot_id|>"], ids["<|end_of_text|>"]
    # config.json names <|end_of_text|> only; <|eot_id|> is listed in generation_config.json, as
    # in Meta-Llama-3-8B-Instruct (the tokenizer's eos is made <|end_of_text|> too, so that only
    # generation_config.json can make <|eot_id|> a stop token).
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(bos_token_id=ids["<|begin_of_text|>"], eos_token_id=end)
    (d / "config.json").write_text(json.dumps(cfg))
    tcfg = json.loads((d / "tokenizer_config.json").read_text())
    tcfg["eos_token"] = "<|end_of_text|>"
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
    (d / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids["<|begin_of_text|>"], "eos_token_id": [end, eot]}))

    from conftest import DEFAULT_LLM_KWARGS

    llm = llmcore.LLM(model=str(d), **DEFAULT_LLM_KWARGS)
    try:
        assert eot in llm.llm_engine.native.eos_token_ids
        conv = CONVERSATIONS["multi_turn"]
        params = llmcore.SamplingParams(temperature=0.0, max_tokens=10, logit_bias={eot: BIG_BIAS})
        (out,) = llm.chat(conv, params)
        hf = _hf_fast(d)
        assert out.prompt_token_ids == _hf_ids(hf, conv, LLAMA3, add_generation_prompt=True)
        o = out.outputs[0]
        assert (o.token_ids, o.finish_reason, o.stop_reason, o.text) == ([eot], "stop", None, "")
    finally:
        llm.shutdown()
