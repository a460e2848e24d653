"""Pydantic models of the OpenAI API requests and responses the server speaks (plus vLLM's
sampling extras and /tokenize, /detokenize). Field names and shapes follow OpenAI's API exactly:
the official SDK parses every response."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


def random_id(prefix: str) -> str:
    """"cmpl-3f2a..." style ids, as OpenAI gives them."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """Unix seconds, OpenAI's `created`."""
    return int(time.time())


class _Request(BaseModel):
    # Unknown fields are ignored (OpenAI clients send fields of newer API versions). Types are
    # strict, as OpenAI checks them: "5" is not an integer and false is not a number.
    model_config = ConfigDict(extra="ignore", strict=True)


# Non-empty lists, so the schema says what the handlers refuse.
TokenIds = Annotated[List[int], Field(min_length=1)]
# vLLM's seed range: a signed 64-bit integer.
Seed = Annotated[Optional[int], Field(ge=-(2 ** 63), le=2 ** 63 - 1)]


# -- errors ------------------------------------------------------------------------------------
class ErrorInfo(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Union[str, int, None] = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


# -- models ------------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "llmcore"
    root: Optional[str] = None
    max_model_len: Optional[int] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: List[ModelCard]


# -- shared ------------------------------------------------------------------------------------
class StreamOptions(_Request):
    include_usage: bool = False


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _SamplingExtras(_Request):
    """vLLM's sampling parameters beyond OpenAI's."""

    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: Optional[List[int]] = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False


# -- completions -------------------------------------------------------------------------------
class CompletionRequest(_SamplingExtras):
    # Examples for the OpenAPI document (and the requests schemathesis starts from).
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "Say this is a test", "max_tokens": 7, "temperature": 0},
        {"prompt": ["Once upon a time", "The cat"], "max_tokens": 5, "n": 2, "temperature": 0.8, "seed": 1,
         "stream": True, "stream_options": {"include_usage": True}},
        {"prompt": [1, 2, 3], "max_tokens": 3, "logprobs": 2, "echo": True, "stop": ["."]},
    ]})
    model: Optional[str] = None
    # Text, a batch of texts, token ids, or a batch of token-id lists.
    prompt: Union[Annotated[List[TokenIds], Field(min_length=1)], TokenIds,
                  Annotated[List[str], Field(min_length=1)], str]
    max_tokens: Optional[int] = 16
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: int = 1
    # OpenAI's: the best n of best_of samples. Only best_of == n (no ranking) is served.
    best_of: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    logprobs: Optional[int] = None
    echo: bool = False
    stop: Union[str, List[str], None] = None
    seed: Seed = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[Dict[str, float]] = None
    user: Optional[str] = None


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completions logprobs: parallel lists, one entry per token."""

    text_offset: List[int] = Field(default_factory=list)
    token_logprobs: List[Optional[float]] = Field(default_factory=list)
    tokens: List[str] = Field(default_factory=list)
    top_logprobs: List[Optional[Dict[str, float]]] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: List[CompletionChoice]
    usage: Optional[UsageInfo] = None
    system_fingerprint: Optional[str] = None


# Streamed completion chunks have the same shape as the response (usage null until the last).
CompletionStreamResponse = CompletionResponse


# -- chat --------------------------------------------------------------------------------------
class ChatContentPart(_Request):
    type: str
    text: Optional[str] = None


class ChatMessage(_Request):
    # OpenAI's roles; "developer" is the newer name of "system".
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, Annotated[List[ChatContentPart], Field(min_length=1)], None] = None
    name: Optional[str] = None


class ResponseFormat(_Request):
    type: str
    json_schema: Optional[Dict[str, Any]] = None


class ChatCompletionRequest(_SamplingExtras):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello!"}],
         "max_completion_tokens": 8},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 4,
         "logprobs": True, "top_logprobs": 2, "stream": True, "stream_options": {"include_usage": True}},
    ]})
    model: Optional[str] = None
    messages: Annotated[List[ChatMessage], Field(min_length=1)]
    max_tokens: Optional[int] = None  # deprecated by OpenAI in favour of max_completion_tokens
    max_completion_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, List[str], None] = None
    seed: Seed = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[Dict[str, float]] = None
    user: Optional[str] = None
    # vLLM's chat-template controls.
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: Optional[Dict[str, object]] = None
    # Declared so that they are checked, not dropped: tools are rendered by the chat template only
    # with tool_choice "none" (there is no tool-call parser), the deprecated functions are refused,
    # and response_format may only ask for text (validation.check_chat_request).
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Union[str, Dict[str, Any], None] = None
    functions: Optional[List[Dict[str, Any]]] = None
    function_call: Union[str, Dict[str, Any], None] = None
    response_format: Optional[ResponseFormat] = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[List[int]] = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: List[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: Optional[List[ChatTokenLogprob]] = None


class ChatResponseMessage(BaseModel):
    role: str = "assistant"
    content: Optional[str] = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: List[ChatCompletionChoice]
    usage: UsageInfo
    system_fingerprint: Optional[str] = None


class DeltaMessage(BaseModel):
    role: Optional[str] = None
    content: Optional[str] = None


class ChatCompletionStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None


class ChatCompletionStreamResponse(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: List[ChatCompletionStreamChoice]
    usage: Optional[UsageInfo] = None
    system_fingerprint: Optional[str] = None


# -- tokenizer endpoints -----------------------------------------------------------------------
class TokenizeRequest(_Request):
    """Either `prompt` (text) or `messages` (rendered with the chat template)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"prompt": "Hello world"}, {"messages": [{"role": "user", "content": "Hello"}]}]})
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[Annotated[List[ChatMessage], Field(min_length=1)]] = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: List[int]


class DetokenizeRequest(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"tokens": [1, 2, 3]}]})
    model: Optional[str] = None
    tokens: List[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str
