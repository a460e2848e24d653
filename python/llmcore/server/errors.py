"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}} with the HTTP status
OpenAI uses, and the mapping from llmcore's ValueError messages to the request field at fault."""

from __future__ import annotations

import re
from typing import Dict, Optional

from fastapi.responses import JSONResponse

from .protocol import ErrorInfo, ErrorResponse


class APIError(Exception):
    """An error the server answers with an OpenAI error object and `status`."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 code: Optional[str] = None, type: str = "invalid_request_error",
                 headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.headers = headers
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def response(self) -> JSONResponse:
        body = ErrorResponse(error=ErrorInfo(message=self.message, type=self.type,
                                             param=self.param, code=self.code))
        return JSONResponse(status_code=self.status, content=body.model_dump(), headers=self.headers)


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# llmcore's messages start with the parameter they are about ("temperature must be >= 0 ...",
# "stop_token_ids[0] must be ...", "prompt_token_ids[0] = 7 is outside ..."); prompt-length
# messages start with "the prompt".
_LEADING_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)")


def from_value_error(err: ValueError, renames: Dict[str, str], prompt_param: str) -> APIError:
    """A ValueError from SamplingParams or LLMEngine.add_request -> a 400 naming the request field.

    renames: engine parameter name -> the request's field name (e.g. chat's "logprobs" is
    "top_logprobs"). prompt_param: the request field holding the prompt ("prompt"/"messages").
    """
    message = str(err)
    if message.startswith("the prompt"):
        code = "context_length_exceeded" if "max_model_len" in message else None
        # "the prompt (N tokens) plus max_tokens (M) ...": the prompt fits; max_tokens asks too much.
        param = renames.get("max_tokens", "max_tokens") if "plus max_tokens" in message else prompt_param
        return bad_request(message, param=param, code=code)
    m = _LEADING_NAME.match(message)
    name = m.group(1) if m else None
    if name == "prompt_token_ids":
        return bad_request(message, param=prompt_param)
    if name in renames:  # the message names the field as the client sent it
        message = renames[name] + message[len(name):]
    return bad_request(message, param=renames.get(name, name) if name else None)
