"""The OpenAI completions and chat-completions handlers on llmcore.AsyncLLM.

Every request's prompts are queued together and the first engine output of each is awaited
before the response starts, so invalid input is a 400 and never a broken stream. Leaving a
response early (a client that disconnects mid-stream) aborts every unfinished request
synchronously, because the ASGI cancel scope cancels any cleanup that would await.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Sequence, Tuple

from .. import SamplingParams
from ..async_engine import AsyncLLM
from ..engine import EngineDeadError
from ..llm import LLM
from ..outputs import PositionLogprobs, RequestOutput
from .errors import APIError, bad_request, from_value_error
from .metrics import ServerMetrics
from .protocol import (ChatCompletionChoice, ChatCompletionRequest, ChatCompletionResponse,
                       ChatCompletionStreamChoice, ChatCompletionStreamResponse, ChatResponseMessage,
                       ChatTokenLogprob, ChoiceLogprobs, CompletionChoice, CompletionLogprobs,
                       CompletionRequest, CompletionResponse, DeltaMessage, TopLogprob, UsageInfo,
                       now, random_id)
from .validation import (chat_message_content, check_chat_request, check_completion_request, check_int_fields,
                         check_text)

# JSON has no -inf; OpenAI-compatible servers report an impossible token's logprob as this.
_MIN_LOGPROB = -9999.0
# OpenAI's logit_bias range.
_LOGIT_BIAS_LIMIT = 100.0

# A logit_bias key: a token id in decimal ASCII digits.
_TOKEN_ID_KEY = re.compile(r"^-?[0-9]+$")

# Seconds a client refused for a full queue is told to wait (the Retry-After header).
RETRY_AFTER_S = 1

# (prompt text or None, prompt token ids)
Prompt = Tuple[Optional[str], List[int]]


def _finite(x: float) -> float:
    return x if math.isfinite(x) else _MIN_LOGPROB


def sse(payload: Any) -> str:
    """One server-sent event carrying a pydantic model (or dict) as JSON."""
    text = payload.model_dump_json() if hasattr(payload, "model_dump_json") else json.dumps(payload)
    return f"data: {text}\n\n"


SSE_DONE = "data: [DONE]\n\n"


class OpenAIServing:
    """The state the endpoints share: the engine, its tokenizer and the served model names."""

    def __init__(self, llm: LLM, served_model_names: Sequence[str], chat_template: Optional[str] = None,
                 max_num_queued_requests: Optional[int] = None, metrics: Optional[ServerMetrics] = None) -> None:
        if max_num_queued_requests is not None and max_num_queued_requests < 1:
            raise ValueError(f"max_num_queued_requests must be >= 1; got {max_num_queued_requests}")
        self.llm = llm
        # Engine requests (one per prompt of an API call) this server has queued and not yet
        # released; at most max_num_queued_requests of them (None: no limit).
        self.max_num_queued_requests = max_num_queued_requests
        self.num_in_flight = 0
        self.metrics = metrics
        self.engine = llm.llm_engine
        self.async_llm = AsyncLLM(self.engine)
        self.tokenizer = llm.get_tokenizer()
        self.model_names = list(served_model_names)
        self.max_model_len: int = self.engine.native.max_model_len
        self.vocab_size: int = self.engine.native.vocab_size
        self.chat_template = chat_template
        defaults = llm.get_default_sampling_params()
        # Sampling values a request leaves unset take the model's generation_config defaults.
        self.default_sampling = {name: getattr(defaults, name) for name in
                                 ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")}

    # -- validation ---------------------------------------------------------------------------
    def check_model(self, model: Optional[str]) -> None:
        """404 for a model name this server does not serve (None means the default model)."""
        if model is not None and model not in self.model_names:
            raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    def _logit_bias(self, bias: Optional[Dict[str, float]]) -> Optional[Dict[int, float]]:
        if not bias:
            return None
        out: Dict[int, float] = {}
        for key, value in bias.items():
            if not _TOKEN_ID_KEY.match(key):  # int() would also take " 5", "+5", "5_0" and non-ASCII digits
                raise bad_request(f"logit_bias keys must be token ids written as strings; got {key!r}",
                                  param="logit_bias")
            token = int(key)
            if not (math.isfinite(value) and -_LOGIT_BIAS_LIMIT <= value <= _LOGIT_BIAS_LIMIT):
                raise bad_request(f"logit_bias values must be in [-100, 100]; got {value} for token {key}",
                                  param="logit_bias")
            out[token] = value
        return out

    def sampling_params(self, req: Any, prompt_len: int, max_tokens: Optional[int], logprobs: Optional[int],
                        renames: Dict[str, str], prompt_param: str,
                        prompt_logprobs: Optional[int] = None) -> SamplingParams:
        """The request's SamplingParams, validated against the vocabulary; 400 on bad values.
        Without max_tokens the output may fill the rest of the context (as vLLM does)."""
        if max_tokens is None:
            # A prompt that already fills the context is refused by the engine with its counts.
            max_tokens = max(self.max_model_len - prompt_len, 1)
        kwargs: Dict[str, Any] = {k: v for k, v in self.default_sampling.items()}
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
            value = getattr(req, name)
            if value is not None:
                kwargs[name] = value
        for name, value in kwargs.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise bad_request(f"{renames.get(name, name)} must be a finite number; got {value}",
                                  param=renames.get(name, name))
        kwargs.update(
            n=req.n, presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            seed=req.seed, stop=req.stop, stop_token_ids=req.stop_token_ids, ignore_eos=req.ignore_eos,
            max_tokens=max_tokens, min_tokens=req.min_tokens, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs, skip_special_tokens=req.skip_special_tokens,
            include_stop_str_in_output=req.include_stop_str_in_output,
            logit_bias=self._logit_bias(req.logit_bias))
        check_int_fields(kwargs, renames, prompt_len, self.max_model_len, self.vocab_size)
        try:
            params = SamplingParams(**kwargs)
            params.validate(self.vocab_size)
        except ValueError as e:
            raise from_value_error(e, renames, prompt_param) from None
        except (TypeError, OverflowError) as e:  # e.g. a seed beyond 64 bits
            raise bad_request(str(e)) from None
        return params

    # -- running requests ---------------------------------------------------------------------
    async def start(self, request_id: str, prompts: List[Prompt], params: List[SamplingParams],
                    renames: Dict[str, str], prompt_param: str) -> "_Run":
        """Queues every prompt at once and waits for each one's first output; a ValueError from
        the engine (prompt too long, ids outside the vocabulary) aborts them all and is a 400.
        With a queue limit, a call whose prompts do not all fit is refused with 503 + Retry-After
        before anything is queued or streamed."""
        limit = self.max_num_queued_requests
        if limit is not None and self.num_in_flight + len(prompts) > limit:
            raise APIError(503, f"the server is overloaded: {self.num_in_flight} requests are in flight, "
                                f"this call adds {len(prompts)} and --max-num-queued-requests is {limit}; "
                                f"retry after {RETRY_AFTER_S} s",
                           type="server_error", code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
        # Counted before the first await, so concurrent calls on the event loop see each other.
        self.num_in_flight += len(prompts)
        gens = [self.async_llm.generate(ids, p, request_id=f"{request_id}-{i}", prompt=text)
                for i, ((text, ids), p) in enumerate(zip(prompts, params))]
        run = _Run(self.engine, gens, on_finished=self.metrics.observe_finished if self.metrics else None,
                   on_release=self._release)
        try:
            firsts = await asyncio.gather(*(g.__anext__() for g in gens), return_exceptions=True)
        except asyncio.CancelledError:
            # The client left before every first output (lifecycle.cancel_on_disconnect): each
            # generator's cleanup aborted its engine request; the queue slots are returned now.
            run.abort()
            raise
        failure = next((f for f in firsts if isinstance(f, BaseException)), None)
        if failure is not None:
            run.abort()
            for g in gens:
                await g.aclose()
            if isinstance(failure, ValueError):
                raise from_value_error(failure, renames, prompt_param) from None
            if isinstance(failure, EngineDeadError):
                raise APIError(503, f"the engine has stopped: {failure}", type="server_error") from None
            raise failure
        run.firsts = list(firsts)
        return run

    def _release(self, count: int) -> None:
        self.num_in_flight -= count

    # -- completions --------------------------------------------------------------------------
    def completion_prompts(self, prompt: Any) -> List[Prompt]:
        if isinstance(prompt, str):
            prompt = [prompt]
        elif prompt and isinstance(prompt[0], int):
            prompt = [prompt]
        if not prompt:
            raise bad_request("prompt must not be empty", param="prompt")
        out: List[Prompt] = []
        for p in prompt:
            if isinstance(p, str):
                out.append((p, self.tokenizer.encode(p)))
            else:
                ids = list(p)
                bad = [i for i in ids if not 0 <= i < self.vocab_size]
                if bad:
                    raise bad_request(f"prompt token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})",
                                      param="prompt")
                out.append((None, ids))
        return out

    async def create_completion(self, req: CompletionRequest):
        """POST /v1/completions -> CompletionResponse, or an SSE stream of chunks."""
        check_text(req)
        self.check_model(req.model)
        check_completion_request(req)
        prompts = self.completion_prompts(req.prompt)
        echo_logprobs = req.logprobs if (req.echo and req.logprobs is not None) else None
        params = [self.sampling_params(req, len(ids), req.max_tokens, req.logprobs, {}, "prompt",
                                       prompt_logprobs=echo_logprobs) for _, ids in prompts]
        rid = random_id("cmpl")
        run = await self.start(rid, prompts, params, {}, "prompt")
        # Echo shows the prompt as text: token-id prompts are decoded (only then, and once the
        # requests are queued: decoding a long prompt would hold up its first token).
        prompts_text = [t if t is not None or not req.echo else self.tokenizer.decode(ids) for t, ids in prompts]
        created = now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._stream_completion(req, run, rid, created, prompts_text, include_usage)
        finals = await run.finals()
        choices = []
        for i, final in enumerate(finals):
            for o in final.outputs:
                text, lp = o.text, None
                if req.logprobs is not None:
                    lp = CompletionLogprobs()
                    offset = 0
                    if req.echo:
                        offset = self._add_completion_logprobs(lp, final.prompt_token_ids,
                                                               final.prompt_logprobs, 0)
                    self._add_completion_logprobs(lp, o.token_ids, o.logprobs, offset)
                if req.echo:
                    text = prompts_text[i] + text
                choices.append(CompletionChoice(index=i * req.n + o.index, text=text, logprobs=lp,
                                                finish_reason=o.finish_reason, stop_reason=o.stop_reason))
        return CompletionResponse(id=rid, created=created, model=self.model_name, choices=choices,
                                  usage=_usage(finals))

    def _add_completion_logprobs(self, lp: CompletionLogprobs, token_ids: Sequence[int],
                                 positions: Optional[Sequence[Optional[PositionLogprobs]]], offset: int) -> int:
        """Appends one entry per token to the parallel lists; returns the text offset after them.
        A position without logprobs (a prompt's first token) gets null logprobs."""
        positions = positions or [None] * len(token_ids)
        for token_id, pos in zip(token_ids, positions):
            if pos is None or token_id not in pos:
                token, logprob, top = self.tokenizer.decode([token_id], skip_special_tokens=False), None, None
            else:
                token = pos[token_id].decoded_token or ""
                logprob = _finite(pos[token_id].logprob)
                # Distinct tokens can decode alike (byte pieces all show as U+FFFD): a text key
                # keeps the likeliest of its tokens.
                top = {}
                for e in pos.values():
                    key = e.decoded_token or ""
                    top[key] = max(top.get(key, _MIN_LOGPROB), _finite(e.logprob))
            lp.tokens.append(token)
            lp.token_logprobs.append(logprob)
            lp.top_logprobs.append(top)
            lp.text_offset.append(offset)
            offset += len(token)
        return offset

    async def _stream_completion(self, req: CompletionRequest, run: "_Run", rid: str, created: int,
                                 prompts_text: List[Optional[str]], include_usage: bool) -> AsyncIterator[str]:
        n = req.n
        total = len(prompts_text) * n
        sent_text, sent_tokens, offsets = [0] * total, [0] * total, [0] * total
        done = [False] * total
        finals: List[Optional[RequestOutput]] = [None] * len(prompts_text)

        def chunk(choices: List[CompletionChoice]) -> str:
            return sse(CompletionResponse(id=rid, created=created, model=self.model_name, choices=choices))

        try:
            if req.echo:
                for i, first in enumerate(run.firsts):
                    for j in range(n):
                        lp = None
                        if req.logprobs is not None:
                            lp = CompletionLogprobs()
                            offsets[i * n + j] = self._add_completion_logprobs(
                                lp, first.prompt_token_ids, first.prompt_logprobs, 0)
                        yield chunk([CompletionChoice(index=i * n + j, text=prompts_text[i], logprobs=lp)])
            async for i, out in run.outputs():
                finals[i] = out
                for o in out.outputs:
                    idx = i * n + o.index
                    if done[idx]:
                        continue
                    text = o.text[sent_text[idx]:]
                    new_ids = o.token_ids[sent_tokens[idx]:]
                    if not text and not new_ids and o.finish_reason is None:
                        continue
                    lp = None
                    if req.logprobs is not None:
                        lp = CompletionLogprobs()
                        offsets[idx] = self._add_completion_logprobs(
                            lp, new_ids, o.logprobs[sent_tokens[idx]:], offsets[idx])
                    sent_text[idx], sent_tokens[idx] = len(o.text), len(o.token_ids)
                    done[idx] = o.finish_reason is not None
                    yield chunk([CompletionChoice(index=idx, text=text, logprobs=lp,
                                                  finish_reason=o.finish_reason, stop_reason=o.stop_reason)])
            if include_usage:
                yield sse(CompletionResponse(id=rid, created=created, model=self.model_name, choices=[],
                                             usage=_usage(finals)))
        except Exception as e:  # the engine failed mid-stream: the client gets an error event
            yield sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
        finally:
            run.abort()
        yield SSE_DONE

    # -- chat ---------------------------------------------------------------------------------
    def chat_prompt(self, req: Any) -> Prompt:
        """Renders the messages with the chat template -> (text, ids); 400 when it cannot."""
        messages = []
        for k, m in enumerate(req.messages):
            msg: Dict[str, Any] = {"role": m.role, "content": chat_message_content(k, m.role, m.content)}
            if m.name is not None:
                msg["name"] = m.name
            messages.append(msg)
        if not messages:
            raise bad_request("messages must not be empty", param="messages")
        kwargs = dict(getattr(req, "chat_template_kwargs", None) or {})
        if getattr(req, "tools", None):  # with tool_choice "none" (validation.check_chat_request), as vLLM
            kwargs["tools"] = req.tools
        try:
            text = self.tokenizer.apply_chat_template(
                messages, chat_template=self.chat_template, add_generation_prompt=req.add_generation_prompt,
                continue_final_message=getattr(req, "continue_final_message", False), tokenize=False, **kwargs)
        except (ValueError, TypeError) as e:
            raise bad_request(f"cannot apply the chat template: {e}", param="messages") from None
        return text, self.tokenizer.encode(text, add_special_tokens=False)

    async def create_chat_completion(self, req: ChatCompletionRequest):
        """POST /v1/chat/completions -> ChatCompletionResponse, or an SSE stream of chunks."""
        check_text(req)
        self.check_model(req.model)
        check_chat_request(req)
        text, ids = self.chat_prompt(req)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        renames = {"logprobs": "top_logprobs",
                   "max_tokens": "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"}
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        params = self.sampling_params(req, len(ids), max_tokens, logprobs, renames, "messages")
        rid = random_id("chatcmpl")
        run = await self.start(rid, [(text, ids)], [params], renames, "messages")
        created = now()
        top_k = req.top_logprobs or 0
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return self._stream_chat(req, run, rid, created, top_k, include_usage)
        finals = await run.finals()
        choices = [
            ChatCompletionChoice(
                index=o.index, message=ChatResponseMessage(content=o.text),
                logprobs=ChoiceLogprobs(content=_chat_logprobs(o.token_ids, o.logprobs, top_k)) if req.logprobs else None,
                finish_reason=o.finish_reason, stop_reason=o.stop_reason)
            for o in finals[0].outputs]
        return ChatCompletionResponse(id=rid, created=created, model=self.model_name, choices=choices,
                                      usage=_usage(finals))

    async def _stream_chat(self, req: ChatCompletionRequest, run: "_Run", rid: str, created: int, top_k: int,
                           include_usage: bool) -> AsyncIterator[str]:
        sent_text, sent_tokens, done = [0] * req.n, [0] * req.n, [False] * req.n
        finals: List[Optional[RequestOutput]] = [None]

        def chunk(choice: ChatCompletionStreamChoice) -> str:
            return sse(ChatCompletionStreamResponse(id=rid, created=created, model=self.model_name, choices=[choice]))

        try:
            for j in range(req.n):  # OpenAI opens every choice with the assistant role
                yield chunk(ChatCompletionStreamChoice(index=j, delta=DeltaMessage(role="assistant", content="")))
            async for _, out in run.outputs():
                finals[0] = out
                for o in out.outputs:
                    j = o.index
                    if done[j]:
                        continue
                    text = o.text[sent_text[j]:]
                    new_ids = o.token_ids[sent_tokens[j]:]
                    if not text and not new_ids and o.finish_reason is None:
                        continue
                    lp = None
                    if req.logprobs:
                        lp = ChoiceLogprobs(content=_chat_logprobs(new_ids, o.logprobs[sent_tokens[j]:], top_k))
                    sent_text[j], sent_tokens[j] = len(o.text), len(o.token_ids)
                    done[j] = o.finish_reason is not None
                    yield chunk(ChatCompletionStreamChoice(
                        index=j, delta=DeltaMessage(content=text) if text else DeltaMessage(), logprobs=lp,
                        finish_reason=o.finish_reason, stop_reason=o.stop_reason))
            if include_usage:
                yield sse(ChatCompletionStreamResponse(id=rid, created=created, model=self.model_name, choices=[],
                                                       usage=_usage(finals)))
        except Exception as e:
            yield sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
        finally:
            run.abort()
        yield SSE_DONE


class _Run:
    """The live requests of one API call: their async generators (each already past its first
    output, kept in `firsts`) merged into one stream of (prompt index, cumulative output)."""

    def __init__(self, engine, gens: List[AsyncIterator[RequestOutput]],
                 on_finished: Optional[Callable[[RequestOutput], None]] = None,
                 on_release: Optional[Callable[[int], None]] = None) -> None:
        self._engine = engine
        self._gens = gens
        self._on_finished = on_finished
        # Returns this call's queue slots (one per prompt) exactly once, at the first abort().
        self._on_release = on_release
        self._request_ids: List[str] = []
        self.firsts: List[RequestOutput] = []
        self._finished: set = set()

    async def outputs(self) -> AsyncIterator[Tuple[int, RequestOutput]]:
        self._request_ids = [f.request_id for f in self.firsts]
        q: asyncio.Queue = asyncio.Queue()

        async def pump(i: int) -> None:
            try:
                async for out in self._gens[i]:
                    q.put_nowait((i, out))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                q.put_nowait((i, e))
                return
            q.put_nowait((i, None))

        for i, first in enumerate(self.firsts):
            q.put_nowait((i, first))
        tasks = [asyncio.ensure_future(pump(i)) for i in range(len(self._gens))]
        remaining = len(tasks)
        try:
            while remaining:
                i, item = await q.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, Exception):
                    raise item
                if item.finished and item.request_id not in self._finished:
                    self._finished.add(item.request_id)
                    if self._on_finished is not None:
                        self._on_finished(item)
                yield i, item
        finally:
            for t in tasks:
                t.cancel()
            self.abort()

    async def finals(self) -> List[RequestOutput]:
        """Every request's last output. Cancelled (the client went away) or failing, it aborts what
        has not finished: the outputs() generator's own cleanup runs only when it is closed."""
        last: List[Optional[RequestOutput]] = list(self.firsts)
        try:
            async for i, out in self.outputs():
                last[i] = out
        finally:
            self.abort()
        return last  # type: ignore[return-value]

    def abort(self) -> None:
        """Aborts every request not yet finished (synchronous: safe inside a cancelled scope)."""
        ids = self._request_ids or [f.request_id for f in self.firsts]
        for rid in ids:
            if rid not in self._finished:
                self._finished.add(rid)
                self._engine.abort_request(rid)
        if self._on_release is not None:
            release, self._on_release = self._on_release, None
            release(len(self._gens))

    def __del__(self) -> None:
        # A streaming response dropped before its body was iterated never runs the body's
        # finally: its requests and queue slots are returned when the run is collected.
        try:
            self.abort()
        except Exception:
            pass


def _usage(finals: Sequence[Optional[RequestOutput]]) -> UsageInfo:
    prompt = sum(len(f.prompt_token_ids) for f in finals if f is not None)
    completion = sum(len(o.token_ids) for f in finals if f is not None for o in f.outputs)
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _chat_logprobs(token_ids: Sequence[int], positions: Optional[Sequence[PositionLogprobs]],
                   top_k: int) -> List[ChatTokenLogprob]:
    """OpenAI chat logprobs: the chosen token with its logprob and the top_k most likely."""
    content = []
    for token_id, pos in zip(token_ids, positions or []):
        chosen = pos[token_id]
        ranked = sorted(pos.items(), key=lambda kv: kv[1].rank if kv[1].rank is not None else 1 << 30)[:top_k]
        token = chosen.decoded_token or ""
        content.append(ChatTokenLogprob(
            token=token, logprob=_finite(chosen.logprob), bytes=list(token.encode("utf-8")),
            top_logprobs=[TopLogprob(token=e.decoded_token or "", logprob=_finite(e.logprob),
                                     bytes=list((e.decoded_token or "").encode("utf-8"))) for _, e in ranked]))
    return content
