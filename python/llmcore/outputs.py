"""Request outputs, shaped as vLLM's: RequestOutput, CompletionOutput, Logprob, RequestMetrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union


@dataclass
class Logprob:
    """A token's log-probability (raw: log_softmax of the model's logits), its rank among all
    tokens (1 = most likely) and its decoded text."""

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


# One position: token id -> Logprob, the chosen (or prompt) token first, then the top-k.
PositionLogprobs = Dict[int, Logprob]


@dataclass
class RequestMetrics:
    """Wall-clock times of a request in seconds since the epoch."""

    arrival_time: float
    first_scheduled_time: Optional[float] = None
    first_token_time: Optional[float] = None
    finished_time: Optional[float] = None
    last_token_time: Optional[float] = None

    @property
    def time_in_queue(self) -> Optional[float]:
        if self.first_scheduled_time is None:
            return None
        return self.first_scheduled_time - self.arrival_time


@dataclass
class CompletionOutput:
    """One of a request's n outputs."""

    index: int
    text: str
    token_ids: List[int]
    cumulative_logprob: Optional[float]
    logprobs: Optional[List[PositionLogprobs]]
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """The state of one request: its prompt, prompt logprobs and outputs so far."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: List[int]
    prompt_logprobs: Optional[List[Optional[PositionLogprobs]]]
    outputs: List[CompletionOutput]
    finished: bool
    metrics: Optional[RequestMetrics] = None
    num_cached_tokens: int = 0
    error: Optional[str] = field(default=None, repr=False)


def _position(p) -> PositionLogprobs:
    """A native PositionLogprobs -> {token_id: Logprob}, chosen token first."""
    return {
        e.token_id: Logprob(logprob=e.logprob, rank=e.rank, decoded_token=text)
        for e, text in zip(p.entries, p.decoded)
    }


class RequestState:
    """Accumulates the native engine's per-step deltas of one request into a RequestOutput."""

    def __init__(self, request_id: str, prompt: Optional[str], prompt_token_ids: List[int], params) -> None:
        want_logprobs = params.logprobs is not None
        self.output = RequestOutput(
            request_id=request_id,
            prompt=prompt,
            prompt_token_ids=list(prompt_token_ids),
            prompt_logprobs=None,
            outputs=[
                CompletionOutput(
                    index=i,
                    text="",
                    token_ids=[],
                    cumulative_logprob=0.0 if want_logprobs else None,
                    logprobs=[] if want_logprobs else None,
                )
                for i in range(params.n)
            ],
            finished=False,
            metrics=None,
        )
        self._want_logprobs = want_logprobs

    def apply(self, delta) -> None:
        out = self.output
        for sd in delta.seqs:
            o = out.outputs[sd.index]
            o.token_ids.extend(sd.token_ids)
            o.text += sd.text
            if self._want_logprobs:
                o.logprobs.extend(_position(p) for p in sd.logprobs)
                o.cumulative_logprob = sd.cumulative_logprob
            if sd.finished:
                o.finish_reason = sd.finish_reason
                o.stop_reason = sd.stop_reason
        if delta.has_prompt_logprobs:
            out.prompt_logprobs = [None] + [_position(p) for p in delta.prompt_logprobs[1:]]
        if out.metrics is None:
            out.metrics = RequestMetrics(arrival_time=delta.arrival_time)
        m = out.metrics
        m.first_scheduled_time = delta.first_scheduled_time or m.first_scheduled_time
        m.first_token_time = delta.first_token_time or m.first_token_time
        if delta.seqs:
            m.last_token_time = delta.finished_time or delta.first_token_time or m.last_token_time
        if delta.num_cached_tokens:
            out.num_cached_tokens = delta.num_cached_tokens
        if delta.error:
            out.error = delta.error
        if delta.finished:
            out.finished = True
            m.finished_time = delta.finished_time or None

    def snapshot(self) -> RequestOutput:
        """A copy that later deltas do not change (for streaming consumers)."""
        o = self.output
        return RequestOutput(
            request_id=o.request_id,
            prompt=o.prompt,
            prompt_token_ids=o.prompt_token_ids,
            prompt_logprobs=o.prompt_logprobs,
            outputs=[
                CompletionOutput(
                    index=c.index,
                    text=c.text,
                    token_ids=list(c.token_ids),
                    cumulative_logprob=c.cumulative_logprob,
                    logprobs=list(c.logprobs) if c.logprobs is not None else None,
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                )
                for c in o.outputs
            ],
            finished=o.finished,
            metrics=o.metrics,
            num_cached_tokens=o.num_cached_tokens,
            error=o.error,
        )
