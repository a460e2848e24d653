"""Chat templates: found in a checkpoint directory and rendered with Jinja2 exactly as transformers'
``apply_chat_template`` renders them (same sandbox, same globals and filters, same whitespace
settings, same preparation of the messages), so a prompt built here tokenizes to the ids the
model was trained on.

Where a checkpoint keeps its templates, in transformers' order of precedence:
  1. ``chat_template.jinja`` (the default template) and ``chat_templates/<name>.jinja`` (named
     ones), as transformers 4.51+ saves them;
  2. ``tokenizer_config.json``'s ``chat_template``: one template string, or a list of
     ``{"name": ..., "template": ...}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime
from functools import lru_cache
from inspect import isfunction, ismethod
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "chat_templates"

# A message: {"role": ..., "content": str or [{"type": "text", "text": ...}, ...], ...}.
Message = Dict[str, Any]
Conversation = List[Message]
# What a tokenizer holds: no template, one template, or templates by name.
ChatTemplates = Union[None, str, Dict[str, str]]

# transformers appends this to the final message for continue_final_message, then cuts the
# rendering where it shows up; the trailing space tells whether the template kept spacing.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
# Names a message's reasoning goes under; templates read the first (gpt-oss ones "thinking").
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(jinja2.exceptions.TemplateError, ValueError):
    """Raised by a template's ``raise_exception(message)``: the conversation does not fit the
    template (roles out of order, an unsupported role, ...). A ValueError, and the
    ``jinja2.TemplateError`` that transformers raises in the same place."""


# -- finding templates --------------------------------------------------------------------------

def load_chat_templates(directory: Optional[str]) -> ChatTemplates:
    """The chat template(s) of a checkpoint or tokenizer directory: None, one template string,
    or a dict name -> template (the default one under "default")."""
    if not directory:
        return None
    files: Dict[str, str] = {}
    default_file = os.path.join(directory, CHAT_TEMPLATE_FILE)
    if os.path.isfile(default_file):
        files["default"] = _read_text(default_file)
    named_dir = os.path.join(directory, CHAT_TEMPLATE_DIR)
    if os.path.isdir(named_dir):
        for name in sorted(os.listdir(named_dir)):
            if name.endswith(".jinja"):
                files[name[: -len(".jinja")]] = _read_text(os.path.join(named_dir, name))
    if files:
        # Template files replace whatever tokenizer_config.json says, as in transformers.
        return files["default"] if list(files) == ["default"] else files
    config = read_tokenizer_config(directory)
    return parse_config_templates(config.get("chat_template"), os.path.join(directory, "tokenizer_config.json"))


def parse_config_templates(value: Any, origin: str) -> ChatTemplates:
    """tokenizer_config.json's ``chat_template`` value -> None, a string or a dict by name."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        templates: Dict[str, str] = {}
        for entry in value:
            if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                    and isinstance(entry.get("template"), str)):
                raise ValueError(
                    f"{origin}: each entry of the chat_template list must be "
                    f"{{'name': str, 'template': str}}; got {entry!r}")
            templates[entry["name"]] = entry["template"]
        return templates
    raise ValueError(
        f"{origin}: chat_template must be a string or a list of {{'name', 'template'}} entries; "
        f"got {type(value).__name__}")


def read_tokenizer_config(directory: Optional[str]) -> Dict[str, Any]:
    """directory/tokenizer_config.json as a dict ({} when absent)."""
    return _read_json(directory, "tokenizer_config.json")


def read_special_tokens_map(directory: Optional[str]) -> Dict[str, Any]:
    """directory/special_tokens_map.json as a dict ({} when absent)."""
    return _read_json(directory, "special_tokens_map.json")


def select_chat_template(templates: ChatTemplates, chat_template: Optional[str] = None,
                         tools: Optional[Sequence[Any]] = None, where: str = "this model") -> str:
    """The template source to render, as transformers' ``get_chat_template`` picks it:
    ``chat_template`` is a template name (when the model has named ones) or a template string;
    without it a model's named templates give "tool_use" when tools are passed and it exists,
    else "default"."""
    if isinstance(templates, dict):
        if chat_template is not None and chat_template in templates:
            return templates[chat_template]
        if chat_template is None:
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise ValueError(
                f"{where} has several chat templates and none named 'default': pass the name of "
                f"one as chat_template=..., one of {sorted(templates)}")
        return chat_template
    if chat_template is not None:
        return chat_template
    if templates is None:
        raise ValueError(
            f"{where} has no chat template: its directory has no {CHAT_TEMPLATE_FILE} and its "
            "tokenizer_config.json no 'chat_template'. Pass a Jinja template as chat_template=... "
            f"(or add a {CHAT_TEMPLATE_FILE} file to the model directory)")
    return templates


# -- rendering ----------------------------------------------------------------------------------

def render_chat(
    conversations: Sequence[Conversation],
    template: str,
    *,
    tools: Optional[Sequence[Union[Dict[str, Any], Callable]]] = None,
    documents: Optional[Sequence[Dict[str, Any]]] = None,
    add_generation_prompt: bool = False,
    continue_final_message: Union[bool, str] = False,
    template_vars: Optional[Mapping[str, Any]] = None,
) -> List[str]:
    """Renders each conversation with `template`, as transformers' ``apply_chat_template``
    (tokenize=False) does. `template_vars` are the extra template variables (special token
    strings, then the caller's keyword arguments).

    continue_final_message (True, or the name of the field to continue) leaves the final
    message open so the model continues it instead of starting a new one; it cannot be combined
    with add_generation_prompt."""
    if continue_final_message and add_generation_prompt:
        raise ValueError(
            "continue_final_message and add_generation_prompt cannot both be set: "
            "continue_final_message lets the model continue the final message, "
            "add_generation_prompt opens a new assistant message")
    compiled = _compile(template)
    tool_schemas = _plain(_tool_schemas(tools))
    if documents is not None:
        for document in documents:
            if not isinstance(document, dict):
                raise TypeError("documents must be a list of dicts with 'title' and 'text' keys; "
                                f"got {type(document).__name__}")
    documents = _plain(documents)
    variables = _plain(dict(template_vars or {}))
    reserved = {"messages", "tools", "documents", "add_generation_prompt"} & set(variables)
    if reserved:
        raise ValueError(f"template variables {sorted(reserved)} are set by the renderer itself; "
                         "pass them as their own arguments")

    rendered: List[str] = []
    for chat in conversations:
        chat = _prepare_messages(chat)
        continued: Optional[str] = None
        if continue_final_message:
            continued = _tag_final_message(chat, template, continue_final_message)
        text = compiled.render(messages=chat, tools=tool_schemas, documents=documents,
                               add_generation_prompt=add_generation_prompt, **variables)
        if continued is not None:
            text = _cut_at_tag(text, continued)
        rendered.append(text)
    return rendered


def _prepare_messages(chat: Any) -> Conversation:
    """A fresh, plain copy of one conversation as transformers hands it to the template: keys
    whose value is None dropped (OpenAI clients send content=None), reasoning aliased."""
    if hasattr(chat, "messages"):
        chat = chat.messages
    if not isinstance(chat, (list, tuple)):
        raise TypeError(f"a conversation must be a list of message dicts; got {type(chat).__name__}")
    messages = []
    for message in _plain(list(chat)):
        if not isinstance(message, dict):
            raise TypeError(f"chat messages must be dicts; got {message!r}")
        messages.append({k: v for k, v in message.items() if v is not None})
    return _alias_reasoning(messages)


def _alias_reasoning(chat: Conversation) -> Conversation:
    """Fills reasoning_content (what templates read) from its older names, and thinking (what
    gpt-oss templates read), when a message carries its reasoning under any of them."""
    out = []
    for message in chat:
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _tag_final_message(chat: Conversation, template: str, field: Union[bool, str]) -> str:
    """Appends the continue tag to the final message's text; returns that text (untagged)."""
    if not chat:
        raise ValueError("continue_final_message is set but the conversation is empty")
    field = field if isinstance(field, str) else "content"
    final = chat[-1].get(field)
    if final is None:
        raise ValueError(f"continue_final_message is set but the final message has no {field!r} to continue")
    fields = [field]
    if field in _REASONING_FIELDS:
        # Reasoning sits under several names; tag each copy and take whichever the template reads.
        fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == final]
    if not any(f in template for f in fields):
        raise ValueError(f"continue_final_message is set to {field!r} but the chat template never reads that field")
    if isinstance(final, (list, tuple)):
        for part in reversed(final):  # the last text part is the one to continue
            if isinstance(part, dict) and "text" in part:
                text = part["text"]
                part["text"] = text + _CONTINUE_TAG
                return text
        raise ValueError("continue_final_message is set but the final message has no text part to continue")
    for f in fields:
        chat[-1][f] = chat[-1][f] + _CONTINUE_TAG
    return final


def _cut_at_tag(rendered: str, final: str) -> str:
    """The rendering up to where the final message ends (its end-of-turn markup removed)."""
    tag = _CONTINUE_TAG.strip()
    if final.strip() not in rendered or tag not in rendered:
        raise ValueError(
            "continue_final_message is set but the final message does not appear in the rendered "
            "chat: the chat template changes or drops part of it. Final message: "
            f"{final.strip()!r}; rendered chat: {rendered!r}")
    at = rendered.rindex(tag)
    if rendered[at: at + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
        return rendered[:at]
    # The template trimmed the message's trailing whitespace (and the tag's space with it).
    return rendered[:at].rstrip()


def _tool_schemas(tools: Optional[Sequence[Any]]) -> Optional[List[Dict[str, Any]]]:
    """Tools as JSON schemas; Python functions are converted as transformers converts them
    (type hints + Google-style docstring), which needs transformers installed."""
    if tools is None:
        return None
    schemas = []
    for tool in tools:
        if isinstance(tool, dict):
            schemas.append(tool)
        elif isfunction(tool) or ismethod(tool):
            try:
                from transformers.utils import get_json_schema
            except ImportError as e:
                raise ValueError("a tool given as a Python function is converted to a JSON schema by "
                                 "transformers.utils.get_json_schema; install transformers or pass "
                                 "the tool's JSON schema (a dict)") from e
            schemas.append(get_json_schema(tool))
        else:
            raise ValueError("each tool must be a JSON schema (a dict) or a Python function with type "
                             f"hints and a docstring; got {type(tool).__name__}")
    return schemas


def _plain(value: Any) -> Any:
    """`value` rebuilt from plain JSON types: the sandbox only vets known types, and callers put
    rich objects (dataclasses, pydantic models, numpy scalars, arrays) in messages. Anything
    else becomes an inert "<TypeName>" string, as in transformers."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if _is_numpy_scalar(value):
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _is_numpy_scalar(value: Any) -> bool:
    np = _numpy()
    return np is not None and isinstance(value, np.generic)


@lru_cache(maxsize=1)
def _numpy():
    try:
        import numpy
    except ImportError:
        return None
    return numpy


# -- the Jinja environment ----------------------------------------------------------------------

class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: transformers marks assistant text with it to
    build loss masks; rendering a prompt just outputs the body."""

    tags = {"generation"}

    def parse(self, parser: "jinja2.parser.Parser") -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Optional[int] = None,
            separators: Optional[Tuple[str, str]] = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; templates want plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict(...)`` in templates, without the class itself (no attribute escapes)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace(...)`` refusing underscore-prefixed attributes (a path to Python internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 -- Jinja's signature trick
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace; got {name!r}")


@lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
    """The compiled template; templates come from model repositories, so they run sandboxed."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(template)


# -- files --------------------------------------------------------------------------------------

def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _read_json(directory: Optional[str], name: str) -> Dict[str, Any]:
    if not directory:
        return {}
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        return {}
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object; got {type(value).__name__}")
    return value


__all__ = [
    "ChatTemplateError",
    "load_chat_templates",
    "parse_config_templates",
    "read_tokenizer_config",
    "read_special_tokens_map",
    "select_chat_template",
    "render_chat",
]
