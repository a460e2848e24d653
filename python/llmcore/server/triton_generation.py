"""One Triton generate call on the engine, with TensorRT-LLM's bad_words and stop_words.

The call runs through OpenAIServing.start and _Run, as the OpenAI endpoints do (queue limit,
/metrics, aborts). TritonGeneration.pieces() yields the output as it grows: new text and the
log-probabilities of new tokens.

bad_words. A bad word is a token sequence (the word tokenized without special tokens) that must
never appear: the token that would complete it is banned at every step where the tokens before
it match the rest of the word (TensorRT-LLM's banBadWords, which looks at the prompt as well as
the output). The native sampler has no per-step hook for such bans (its logits processors are
fixed: min_tokens, logit_bias, penalties), so a ban is applied at the one step where it matters:
- a single-token word is a logit_bias of -100 on its token for the whole request;
- for a longer word, the request runs unconstrained until a step samples the token completing
  the word. That token is dropped, the engine request is aborted, and generation resumes from the
  accepted tokens (prompt + output so far as the prompt of a new engine request, which reuses the
  prefix cache): one step with every completing token at that position biased by -100, then
  unconstrained again. Greedy output is exactly that of a per-step ban (vLLM's
  NoBadWordsLogitsProcessor); a sampled step is drawn from the same renormalized distribution,
  and a seeded request stays reproducible (each resumed engine request gets a seed derived from
  the request's).
Limits, refused or reported rather than approximated: the engine bounds logit_bias to [-100, 100],
so a ban is -100 rather than -inf; a banned token that still wins is an error, never output.
presence_penalty and frequency_penalty count output tokens only, so after a resume they would miss
the tokens moved into the prompt: they cannot be combined with multi-token bad_words
(check_bad_words_supported). repetition_penalty covers prompt and output alike, so it is exact.

After the first resume the engine only produces token ids: the text is detokenized here, by the
native detokenizer's algorithm (a window of 5 prompt tokens for the leading-space rule, text
ending in U+FFFD held back until the character completes), and stop strings are matched here over
the whole output, so a stop word straddling a resume point is found too. Until then, and always
for requests without multi-token bad words, the engine's own text and stop checks are used.

stop_words end the output after the first occurrence of any of them, which stays in the output
(TensorRT-LLM keeps a stop word's tokens in output_ids).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Dict, List, Optional, Sequence, Set

from ..outputs import RequestOutput
from .errors import bad_request

# The bias that bans a token: the engine's logit_bias bound.
BAN_BIAS = -100.0
# Prompt tokens before the output that seed detokenization (the native detokenizer's value).
_DETOK_CONTEXT_TOKENS = 5
# Seeds of resumed engine requests: the request's seed plus multiples of this odd constant, in
# the engine's int64 range.
_SEED_STEP = 0x9E3779B97F4A7C15
_INT64 = 1 << 64
# Request field names for engine parameter names, in error messages.
RENAMES = {"min_tokens": "min_tokens", "logit_bias": "bad_words", "stop": "stop_words",
           "stop_token_ids": "end_id", "top_k": "top_k", "top_p": "top_p"}


def check_bad_words_supported(bad_words: Sequence[Sequence[int]], presence_penalty: float,
                              frequency_penalty: float) -> None:
    """400 for a combination whose result would not be exact (see the module docstring)."""
    if any(len(w) > 1 for w in bad_words):
        for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)):
            if value:
                raise bad_request(f"{name} cannot be combined with bad_words of more than one token: the ban "
                                  f"resumes generation from the output so far, which {name} (counting "
                                  f"output tokens only) would no longer see", param=name)


def _seed_for(seed: Optional[int], segment: int) -> Optional[int]:
    if seed is None:
        return None
    s = (seed + segment * _SEED_STEP) % _INT64
    return s - _INT64 if s >= _INT64 // 2 else s


class _Detokenizer:
    """The native IncrementalDetokenizer's algorithm (without stop strings): the text of output
    tokens decoded in a window after up to 5 prompt tokens, held back while it ends in U+FFFD."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids[len(prompt_ids) - min(len(prompt_ids), _DETOK_CONTEXT_TOKENS):])
        self._prefix = 0
        self._read = len(self._ids)
        self.text = ""

    def append(self, token_id: int) -> None:
        if token_id >= self._tokenizer.vocab_size:  # a padded embedding row: no text
            return
        self._ids.append(token_id)
        self._decode_window(wait_for_complete_chars=True)

    def flush(self) -> None:
        self._decode_window(wait_for_complete_chars=False)

    def _decode_window(self, wait_for_complete_chars: bool) -> None:
        prefix_text = self._tokenizer.decode(self._ids[self._prefix:self._read])
        new_text = self._tokenizer.decode(self._ids[self._prefix:])
        common = 0
        limit = min(len(prefix_text), len(new_text))
        while common < limit and prefix_text[common] == new_text[common]:
            common += 1
        if len(new_text) <= common or (wait_for_complete_chars and new_text.endswith("\ufffd")):
            return
        self.text += new_text[common:]
        self._prefix, self._read = self._read, len(self._ids)


@dataclass
class Piece:
    """New output: text and the log-probabilities of the tokens accepted since the last piece."""

    text: str
    logprobs: List[float] = field(default_factory=list)


class TritonGeneration:
    """Drives the engine requests of one generate call; see the module docstring."""

    def __init__(self, serving, request_id: str, prompt_text: str, prompt_ids: List[int], params,
                 bad_words: Sequence[Sequence[int]], stop: Sequence[str]) -> None:
        self._serving = serving
        self._request_id = request_id
        self._prompt_text = prompt_text
        self._prompt_ids = list(prompt_ids)
        self._params = params  # the first engine request's SamplingParams (stop strings included)
        self._stop = [s for s in stop if s]
        self._max_stop_len = max((len(s) for s in self._stop), default=0)
        self._single: Set[int] = {w[0] for w in bad_words if len(w) == 1}
        self._multi: List[List[int]] = [list(w) for w in bad_words if len(w) > 1]
        self._longest = max((len(w) for w in self._multi), default=1)
        self._want_logprobs = params.logprobs is not None
        self._max_tokens: int = params.max_tokens
        self._min_tokens: int = params.min_tokens
        self._run = None
        self._segment = 0
        # Output accepted so far (all engine requests) and the recent tokens bans look at.
        self._ids: List[int] = []
        self._logprobs: List[float] = []
        self._recent: List[int] = self._prompt_ids[-(self._longest - 1):] if self._longest > 1 else []
        # Before the first resume: the engine's text. After: _detok's text, stop strings here.
        self._detok: Optional[_Detokenizer] = None
        self._stop_checked = 0  # text before this offset was searched for stop strings
        self._text = ""
        self._emitted_text = 0
        self._emitted_logprobs = 0
        self.finish_reason: Optional[str] = None
        # Wall-clock seconds since the epoch, from the engine's request metrics.
        self.submit_time: Optional[float] = None
        self.first_scheduled_time: Optional[float] = None
        self.finished_time: Optional[float] = None

    # -- engine requests ------------------------------------------------------------------------
    async def start(self) -> None:
        """Queues the first engine request and waits for its first output (APIError: 400/503)."""
        self.submit_time = time.time()
        await self._start(self._params)

    async def _start(self, params) -> None:
        rid = self._request_id if self._segment == 0 else f"{self._request_id}-r{self._segment}"
        prompt = self._prompt_ids + self._ids
        text = self._prompt_text if self._segment == 0 else None
        self._run = await self._serving.start(rid, [(text, prompt)], [params], RENAMES, "text_input")

    def abort(self) -> None:
        """Aborts the live engine request (synchronous: safe in a cancelled scope)."""
        if self._run is not None:
            self._run.abort()

    def _resume_params(self, banned: Set[int]):
        """The next engine request's parameters: the rest of the output, or with `banned` one step."""
        num_out = len(self._ids)
        p = self._params.clone()
        p.max_tokens = 1 if banned else self._max_tokens - num_out
        p.min_tokens = min(max(self._min_tokens - num_out, 0), p.max_tokens)
        p.seed = _seed_for(self._params.seed, self._segment)
        p.stop = []  # matched here from now on, over the whole output
        if banned:
            bias: Dict[int, float] = dict(self._params.logit_bias)
            bias.update({t: BAN_BIAS for t in banned})
            p.logit_bias = bias
        return p

    # -- bans -----------------------------------------------------------------------------------
    def _completes_bad_word(self, token_id: int) -> bool:
        if token_id in self._single:
            return True
        recent = self._recent
        for w in self._multi:
            n = len(w) - 1
            if w[-1] == token_id and len(recent) >= n and recent[len(recent) - n:] == w[:-1]:
                return True
        return False

    def _banned_here(self) -> Set[int]:
        """The tokens that would complete a bad word at the next position."""
        recent = self._recent
        banned = set(self._single)
        for w in self._multi:
            n = len(w) - 1
            if len(recent) >= n and recent[len(recent) - n:] == w[:-1]:
                banned.add(w[-1])
        return banned

    def _accept(self, token_id: int) -> None:
        self._ids.append(token_id)
        if self._longest > 1:
            self._recent.append(token_id)
            del self._recent[:max(len(self._recent) - (self._longest - 1), 0)]

    # -- text -----------------------------------------------------------------------------------
    def _switch_to_own_text(self) -> None:
        """At the first resume: from now on the text of all accepted tokens is detokenized here."""
        self._detok = _Detokenizer(self._serving.tokenizer, self._prompt_ids)
        for t in self._ids:
            self._detok.append(t)
        emitted = self._text[:self._emitted_text]
        # The engine's text so far is what this detokenizer gives for the same tokens (less what
        # the engine held back); stop strings ending in it were looked for by the engine.
        self._text = self._detok.text if self._detok.text.startswith(emitted) else emitted
        self._stop_checked = len(self._text)

    def _match_stop(self) -> Optional[int]:
        """The end offset of the first stop string ending in text not yet searched, or None.
        Before min_tokens output tokens nothing matches, and text searched then stays unmatched
        (as in the engine)."""
        if not self._stop:
            return None
        if len(self._ids) < self._min_tokens:
            self._stop_checked = len(self._text)
            return None
        best = None
        for s in self._stop:
            pos = self._text.find(s, max(self._stop_checked - len(s) + 1, 0))
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, pos + len(s))
        self._stop_checked = len(self._text)
        return best[1] if best is not None else None

    def _piece(self, final: bool) -> Optional[Piece]:
        hold = 0
        if self._detok is not None and not final and self._stop:
            hold = self._max_stop_len - 1  # may be the start of a stop string
        end = max(len(self._text) - hold, self._emitted_text)
        text = self._text[self._emitted_text:end]
        lps = self._logprobs[self._emitted_logprobs:]
        self._emitted_text, self._emitted_logprobs = end, len(self._logprobs)
        return Piece(text, lps) if (text or lps or final) else None

    # -- the output -----------------------------------------------------------------------------
    async def pieces(self) -> AsyncIterator[Piece]:
        """New output as it is produced; the last piece comes once finish_reason is set.
        Raises RuntimeError when a ban cannot be applied, APIError when resuming is refused."""
        while True:
            banned: Optional[Set[int]] = None  # set: resume with these banned for one step
            resume = False
            seen = 0  # tokens of this engine request already handled
            outputs = self._run.outputs()
            try:
                async for _, out in outputs:
                    self._note_times(out)
                    o = out.outputs[0]
                    for k in range(seen, len(o.token_ids)):
                        token = o.token_ids[k]
                        if self._completes_bad_word(token):
                            if self._banning:
                                raise RuntimeError(
                                    f"bad_words: token {token} completes a bad word although its logit was "
                                    f"biased by {BAN_BIAS}, the engine's limit; the output is withheld")
                            banned = self._banned_here()
                            break
                        self._accept(token)
                        if self._want_logprobs:
                            self._logprobs.append(o.logprobs[k][token].logprob)
                        if self._detok is not None and not self._ends_with_stop_token(o, k):
                            self._detok.append(token)
                    if banned is not None:
                        break
                    seen = len(o.token_ids)
                    ends_call = o.finish_reason is not None and not self._one_step_limit(o)
                    if self._detok is None:  # the engine's text and stop strings
                        self._text = o.text
                        if ends_call:
                            self.finish_reason = o.finish_reason
                            if o.finish_reason == "stop" and isinstance(o.stop_reason, str):
                                self._text += o.stop_reason  # kept, as TensorRT-LLM keeps a stop word
                            yield self._piece(final=True)
                            return
                    else:
                        if ends_call:
                            self._detok.flush()
                        self._text = self._detok.text
                        stop_end = self._match_stop()
                        if stop_end is not None:
                            self._text = self._text[:stop_end]
                            ends_call = True
                            self.finish_reason = "stop"
                        elif ends_call:
                            self.finish_reason = o.finish_reason
                        if ends_call:
                            yield self._piece(final=True)
                            return
                        if o.finish_reason is not None:  # the one ban step is done: go on
                            resume = True
                            break
                    piece = self._piece(final=False)
                    if piece is not None:
                        yield piece
            finally:
                # Aborts the engine request and returns its queue slot (synchronously: the
                # generator's cleanup awaits nothing), so the next one can take it at once.
                await outputs.aclose()
            if banned is None and not resume:
                raise RuntimeError("the engine request ended without a final output")
            if self._detok is None:
                self._switch_to_own_text()
            self._segment += 1
            self._banning = banned is not None
            await self._start(self._resume_params(banned or set()))

    # Whether the live engine request is a one-step request with bans.
    _banning = False

    @staticmethod
    def _ends_with_stop_token(o, k: int) -> bool:
        """Whether token k ended the request as EOS or a stop token (its text is left out)."""
        return k == len(o.token_ids) - 1 and o.finish_reason == "stop" and not isinstance(o.stop_reason, str)

    def _one_step_limit(self, o) -> bool:
        """A one-step (ban) engine request that stopped at its own max_tokens, not the call's."""
        if not self._banning or o.finish_reason != "length":
            return False
        at_max_tokens = len(self._ids) >= self._max_tokens
        at_max_model_len = len(self._prompt_ids) + len(self._ids) >= self._serving.max_model_len
        return not (at_max_tokens or at_max_model_len)

    def _note_times(self, out: RequestOutput) -> None:
        m = out.metrics
        if m is None:
            return
        if self.first_scheduled_time is None and m.first_scheduled_time is not None:
            self.first_scheduled_time = m.first_scheduled_time
        if m.finished_time is not None:
            self.finished_time = m.finished_time

    # -- results --------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """The output text so far (all of it once finished)."""
        return self._text

    @property
    def logprobs(self) -> List[float]:
        return list(self._logprobs)


