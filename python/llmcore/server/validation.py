"""Request checks beyond what the pydantic models express, FastAPI's validation and body errors
as OpenAI errors, and the OpenAPI document's error responses.

The models (protocol.py) check types and shapes; these checks cover what depends on several
fields or on features this server lacks (vLLM's rules: stream_options needs stream, "auto" tool
choice needs a tool-call parser, best_of >= n), integers too wide for the engine's 32-bit fields,
and strings that are not Unicode text (lone surrogates). Each refusal is a 400 naming the field in
`param` (415 for a body not sent as JSON), so no part of a request is silently dropped.
"""

from __future__ import annotations

import email.message
import re
from typing import Any, Dict, List, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from .._C import MAX_LOGPROBS
from ..llm import _CHAT_RESERVED_KWARGS
from .errors import APIError, bad_request

# The engine's SamplingParams hold these as 32-bit ints (csrc/engine/sampling_params.h); a value
# beyond that range breaks the rule written here (the engine's own ranges).
_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1
_INT32_RULES = {
    "n": "n must be >= 1 and at most the engine's max_num_seqs",
    "top_k": "top_k must be -1 or 0 (disabled) or >= 1",
    "max_tokens": "max_tokens must be >= 1",
    "min_tokens": "min_tokens must be in [0, max_tokens]",
    "logprobs": f"logprobs must be in [0, {MAX_LOGPROBS}]",
    "prompt_logprobs": f"prompt_logprobs must be in [0, {MAX_LOGPROBS}]",
}

# Roles whose message must carry content (OpenAI: assistant and function turns may omit it).
_CONTENT_REQUIRED_ROLES = ("system", "developer", "user", "tool")

# pydantic names union members in error locations ("list[int]", "str", "ChatContentPart"); these
# are not request fields. Field names are lower-case identifiers.
_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_TYPE_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}
# Object-valued fields whose keys are the client's (token ids, template variables): an error
# inside one names the field itself.
_MAP_FIELDS = ("logit_bias", "chat_template_kwargs")


# -- FastAPI validation errors ---------------------------------------------------------------------
def _is_type_tag(part: Any) -> bool:
    return isinstance(part, str) and (part in _TYPE_TAGS or not _FIELD_NAME.match(part))


def _path(parts: Sequence[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def validation_param(loc: Sequence[Any]) -> Optional[str]:
    """The request field an error location is about, OpenAI style: ("body", "messages", 0,
    "content", "list[ChatContentPart]", 0, "type") -> "messages[0].content". A union's member
    tag ends the name: the field as a whole matches none of its accepted types."""
    parts: List[Any] = []
    for p in loc[1:] if loc and loc[0] == "body" else loc:
        if _is_type_tag(p):
            break
        parts.append(p)
        if p in _MAP_FIELDS:
            break
    return _path(parts) or None


def _detail_path(loc: Sequence[Any]) -> str:
    """The full location without union tags, for the message: "messages[0].content[0].type"."""
    parts = [p for p in (loc[1:] if loc and loc[0] == "body" else loc) if not _is_type_tag(p)]
    return _path(parts) or "body"


def _is_json(content_type: Optional[str]) -> bool:
    if not content_type:
        return False
    m = email.message.Message()
    m["content-type"] = content_type
    subtype = m.get_content_subtype()
    return m.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def validation_error(request: Request, exc: RequestValidationError) -> APIError:
    """FastAPI's RequestValidationError -> a 400 naming the first offending field (OpenAI answers
    bad parameters with 400, not FastAPI's 422), or 415 for a body not sent as JSON."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        return bad_request(f"the request body is not valid JSON: {ctx.get('error', first.get('msg'))}")
    content_type = request.headers.get("content-type")
    # FastAPI parses only application/json (or +json) bodies; any other body reaches the model as
    # raw bytes. Refusing it also keeps browsers' form and text/plain posts (which skip CORS
    # preflight) away from the API.
    if loc == ("body",) and isinstance(first.get("input"), (bytes, bytearray)) and not _is_json(content_type):
        got = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
        return APIError(415, f"the request body must be JSON sent with Content-Type: application/json; got {got}",
                        code="unsupported_media_type")
    lines: List[str] = []
    for e in errors:
        line = f"{_detail_path(e.get('loc', ()))}: {e.get('msg')}"
        if line not in lines:
            lines.append(line)
    return bad_request("; ".join(lines), param=validation_param(loc))


# -- the OpenAPI schema ------------------------------------------------------------------------------
def document_errors_as_sent(app: FastAPI) -> None:
    """Drops FastAPI's automatic 422 response (and its schemas) from the OpenAPI document: this
    server answers validation errors with 400 or 415 and an OpenAI error body, documented on each
    operation instead."""
    build = app.openapi

    def openapi() -> Dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                if isinstance(operation, dict):
                    operation.get("responses", {}).pop("422", None)
        schemas = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def describe_body_error(detail: str, cause: Optional[BaseException]) -> str:
    """FastAPI's "There was an error parsing the body" (a 400), with the reason when known."""
    if isinstance(cause, UnicodeDecodeError):
        return (f"the request body is not valid UTF-8: byte 0x{cause.object[cause.start]:02x} at position "
                f"{cause.start}")
    if isinstance(cause, RecursionError):
        return "the request body is not valid JSON: it is nested too deeply"
    return detail


# -- text ------------------------------------------------------------------------------------------
# Values that hold no text: a list of only these (a token-id prompt) is skipped in one pass.
_NO_TEXT_TYPES = frozenset({int, float, bool, type(None)})


def _bad_text_path(value: Any, path: List[Any]) -> Optional[List[Any]]:
    """The location of the first string in `value` that UTF-8 cannot encode, else None."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, BaseModel):
        items = ((name, getattr(value, name)) for name in type(value).model_fields)
    elif isinstance(value, dict):
        for key in value:  # a key's path would hold the bad key itself
            if _bad_text_path(key, path) is not None:
                return path
        items = value.items()
    elif isinstance(value, (list, tuple)):
        if {type(item) for item in value} <= _NO_TEXT_TYPES:
            return None
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _bad_text_path(item, path + [key])
        if found is not None:
            return found
    return None


def check_text(req: BaseModel) -> None:
    """400 for a string holding a lone surrogate: JSON's "\ud800" escape parses, but such a string
    is not Unicode text, so the tokenizer (and any error message echoing it) cannot encode it."""
    path = _bad_text_path(req, [])
    if path is not None:
        name = _path(path) or "body"
        top = validation_param(path) or name
        raise bad_request(f"{name} is not valid Unicode text: it holds a lone surrogate (an unpaired \\uD800-"
                          "\\uDFFF escape)", param=top if top in _MAP_FIELDS else name)


# -- checks across fields --------------------------------------------------------------------------
def check_stream_options(req: Any) -> None:
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options can only be given with stream=true", param="stream_options")


def check_completion_request(req: Any) -> None:
    """What /v1/completions refuses beyond the model's types (before any tokenizing)."""
    check_stream_options(req)
    if req.best_of is not None:
        if req.best_of < req.n:
            raise bad_request(f"best_of ({req.best_of}) must be >= n ({req.n})", param="best_of")
        if req.best_of != req.n:
            raise bad_request(f"best_of > n is not supported: best_of ({req.best_of}) must equal n ({req.n}) "
                              "(every sample is returned; none are ranked out)", param="best_of")


def check_chat_request(req: Any) -> None:
    """What /v1/chat/completions refuses beyond the model's types (before rendering the prompt)."""
    check_stream_options(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
    if req.functions is not None or req.function_call is not None:
        name = "functions" if req.functions is not None else "function_call"
        raise bad_request(f"{name} (deprecated function calling) is not supported by this server", param=name)
    choice = req.tool_choice
    if choice is not None and choice != "none" and not req.tools:
        raise bad_request("tool_choice needs tools", param="tool_choice")
    if req.tools:
        if choice is None or choice == "auto":
            # vLLM's answer without --enable-auto-tool-choice: nothing would parse the calls.
            raise bad_request('tools need tool_choice "none": this server has no tool-call parser, so "auto" '
                              "tool choice is not supported", param="tool_choice" if choice else "tools")
        if choice != "none":
            raise bad_request(f"tool_choice {choice!r} is not supported: only \"none\" (the tools are shown to "
                              "the chat template; no calls are parsed)", param="tool_choice")
    if req.response_format is not None and req.response_format.type != "text":
        raise bad_request(f"response_format type {req.response_format.type!r} is not supported: this server "
                          'generates free text only (type "text")', param="response_format")
    kwargs = req.chat_template_kwargs or {}
    clash = [k for k in _CHAT_RESERVED_KWARGS if k in kwargs]
    if clash:
        raise bad_request(f"chat_template_kwargs may not set {clash[0]!r}: it is a request field or fixed by the "
                          "server", param="chat_template_kwargs")


def chat_message_content(k: int, role: str, content: Any) -> str:
    """messages[k]'s content as text for the chat template (text parts joined by newlines);
    400 for parts that are not text and for missing content where OpenAI requires it."""
    if content is None:
        if role in _CONTENT_REQUIRED_ROLES:
            raise bad_request(f"messages[{k}].content is required for a {role!r} message",
                              param=f"messages[{k}].content")
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text":
            raise bad_request(f"messages[{k}].content[{j}]: only text content parts are supported; got a part "
                              f"of type {part.type!r}", param=f"messages[{k}].content[{j}].type")
        if part.text is None:
            raise bad_request(f"messages[{k}].content[{j}]: a text part needs 'text'",
                              param=f"messages[{k}].content[{j}].text")
        texts.append(part.text)
    return "\n".join(texts)


def check_int_fields(kwargs: Dict[str, Any], renames: Dict[str, str], prompt_len: int, max_model_len: int,
                     vocab_size: int) -> None:
    """Integers beyond what the engine's fields hold get the answer their real limit gives (a
    pybind11 conversion error would name nothing). Edits kwargs: a top_k beyond the vocabulary
    means "no top-k limit", as any top_k >= vocab_size does."""
    if kwargs.get("top_k") is not None and kwargs["top_k"] > vocab_size:
        kwargs["top_k"] = vocab_size
    max_tokens = kwargs.get("max_tokens")
    if max_tokens is not None and max_tokens > _INT32_MAX:
        raise bad_request(f"the prompt ({prompt_len} tokens) plus max_tokens ({max_tokens}) is "
                          f"{prompt_len + max_tokens} tokens, over max_model_len ({max_model_len})",
                          param=renames.get("max_tokens", "max_tokens"), code="context_length_exceeded")
    for name, rule in _INT32_RULES.items():
        value = kwargs.get(name)
        if value is not None and not _INT32_MIN <= value <= _INT32_MAX:
            param = renames.get(name, name)
            raise bad_request(f"{param}{rule[len(name):]}, got {value}", param=param)
    for k, token in enumerate(kwargs.get("stop_token_ids") or ()):
        if not 0 <= token < vocab_size:
            raise bad_request(f"stop_token_ids[{k}] must be a token id in [0, {vocab_size}), got {token}",
                              param="stop_token_ids")
    for token in (kwargs.get("logit_bias") or {}):
        if not 0 <= token < vocab_size:
            raise bad_request(f"logit_bias key must be a token id in [0, {vocab_size}), got {token}",
                              param="logit_bias")
