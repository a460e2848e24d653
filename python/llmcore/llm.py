"""LLM: vLLM's offline interface on the native engine."""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from . import _C
from .engine import EngineDeadError, LLMEngine
from .outputs import RequestOutput, RequestState
from .tokenizer import Tokenizer

SamplingParams = _C.SamplingParams

# A prompt: text, {"prompt": text}, or {"prompt_token_ids": [ids]}.
PromptType = Union[str, Dict[str, Any]]


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cpu"  # this build has the CPU backend only
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'; got {device!r}")
    if device == "cuda":
        raise ValueError("device='cuda' needs the CUDA backend, which this build does not include")
    return device


class LLM:
    """An offline LLM: load a HuggingFace checkpoint directory, then generate.

    Arguments follow vLLM's ``LLM``. ``num_gpu_blocks_override`` fixes the number of KV-cache
    blocks (of ``block_size`` tokens); on the CPU the cache otherwise takes
    ``LLMCORE_CPU_KVCACHE_SPACE`` GiB (default 4), capped at what ``max_num_seqs`` full-length
    sequences can use.
    """

    def __init__(
        self,
        model: Optional[str] = None,
        tokenizer: Optional[str] = None,
        *,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        max_model_len: Optional[int] = None,
        gpu_memory_utilization: float = 0.9,
        max_num_seqs: int = 256,
        max_num_batched_tokens: Optional[int] = None,
        enable_prefix_caching: bool = True,
        enable_chunked_prefill: bool = True,
        block_size: int = 16,
        num_gpu_blocks_override: Optional[int] = None,
        seed: int = 0,
        device: str = "auto",
        load_format: str = "auto",
    ) -> None:
        if model is None:
            raise ValueError("model is required: the path of a HuggingFace checkpoint directory")
        if tensor_parallel_size != 1:
            raise ValueError(f"tensor_parallel_size must be 1 in this build; got {tensor_parallel_size}")
        if not (0.0 < gpu_memory_utilization <= 1.0):
            raise ValueError(f"gpu_memory_utilization must be in (0, 1]; got {gpu_memory_utilization}")
        for name, value in (("max_model_len", max_model_len), ("max_num_batched_tokens", max_num_batched_tokens),
                            ("num_gpu_blocks_override", num_gpu_blocks_override)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 when set; got {value}")
        kv_space = float(os.environ.get("LLMCORE_CPU_KVCACHE_SPACE", "4"))
        if not (kv_space > 0 and math.isfinite(kv_space)):
            raise ValueError(f"LLMCORE_CPU_KVCACHE_SPACE must be a positive number of GiB; got {kv_space}")
        self.llm_engine = LLMEngine(
            model=os.fspath(model),
            tokenizer=os.fspath(tokenizer) if tokenizer else "",
            device=_resolve_device(device),
            dtype=dtype,
            max_model_len=max_model_len or 0,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens or 0,
            enable_prefix_caching=enable_prefix_caching,
            enable_chunked_prefill=enable_chunked_prefill,
            block_size=block_size,
            num_gpu_blocks_override=num_gpu_blocks_override or 0,
            cpu_kv_cache_space_gib=kv_space,
            seed=seed,
            load_format=load_format,
        )
        self._tokenizer = Tokenizer(self.llm_engine.native.tokenizer)

    # -- tokenizer --------------------------------------------------------------------------
    def get_tokenizer(self) -> Tokenizer:
        """The model's tokenizer."""
        return self._tokenizer

    # -- generation -------------------------------------------------------------------------
    def _to_request(self, prompt: PromptType):
        """-> (prompt text or None, prompt token ids)."""
        if isinstance(prompt, str):
            return prompt, self._tokenizer.encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) for i in ids):
                    raise ValueError("prompt_token_ids must be a list of ints")
                return prompt.get("prompt"), list(ids)
            if "prompt" in prompt and isinstance(prompt["prompt"], str):
                return prompt["prompt"], self._tokenizer.encode(prompt["prompt"])
        raise ValueError(
            "each prompt must be a str, {'prompt': str} or {'prompt_token_ids': [int, ...]}; "
            f"got {type(prompt).__name__}"
        )

    def _add_all(self, prompts, sampling_params, sink) -> List[RequestState]:
        """Validates and queues every prompt; on an invalid one, aborts those already queued."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(
                    f"sampling_params has {len(params_list)} entries but there are {len(prompts)} prompts"
                )
        requests = [self._to_request(p) for p in prompts]
        states: List[RequestState] = []
        try:
            for (text, ids), params in zip(requests, params_list):
                rid = self.llm_engine.new_request_id()
                self.llm_engine.add_request(rid, ids, params, sink)
                states.append(RequestState(rid, text, ids, params))
        except BaseException:
            for st in states:
                self.llm_engine.abort_request(st.output.request_id)
            raise
        return states

    def generate(
        self,
        prompts: Union[PromptType, Sequence[PromptType]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: bool = True,
    ) -> List[RequestOutput]:
        """Generates completions for every prompt; returns one RequestOutput per prompt, in order.

        Requests are batched continuously by the native engine; the GIL is free while it works.
        """
        q, sink = self.llm_engine.queue_sink()
        states = self._add_all(prompts, sampling_params, sink)
        by_id = {st.output.request_id: st for st in states}
        remaining = len(states)
        bar = _progress_bar(remaining) if use_tqdm and remaining > 1 else None
        try:
            while remaining:
                delta = q.get()
                if isinstance(delta, Exception):
                    raise delta
                st = by_id[delta.request_id]
                st.apply(delta)
                if st.output.error:
                    raise RuntimeError(f"request {delta.request_id} failed in the engine: {st.output.error}")
                if delta.finished:
                    remaining -= 1
                    if bar is not None:
                        bar.update(1)
        except BaseException:
            for st in states:
                if not st.output.finished:
                    self.llm_engine.abort_request(st.output.request_id)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [st.output for st in states]

    def generate_stream(
        self, prompt: PromptType, sampling_params: Optional[SamplingParams] = None
    ) -> Iterator[RequestOutput]:
        """Yields the request's RequestOutput after every step that changed it (cumulative
        snapshots; the last one has finished=True). Leaving the loop early aborts the request."""
        q, sink = self.llm_engine.queue_sink()
        (st,) = self._add_all(prompt, sampling_params, sink)
        return self._stream(st, q)

    def _stream(self, st: RequestState, q) -> Iterator[RequestOutput]:
        try:
            while not st.output.finished:
                delta = q.get()
                if isinstance(delta, Exception):
                    raise delta
                st.apply(delta)
                if st.output.error:
                    raise RuntimeError(f"request {st.output.request_id} failed in the engine: {st.output.error}")
                yield st.snapshot()
        finally:
            if not st.output.finished:
                self.llm_engine.abort_request(st.output.request_id)

    def shutdown(self) -> None:
        """Stops the engine thread (also done when the LLM is garbage collected)."""
        self.llm_engine.shutdown()


def _progress_bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; without it there is simply no bar
        return None
    return tqdm(total=total, desc="Processed prompts", dynamic_ncols=True)


__all__ = ["LLM", "SamplingParams", "EngineDeadError"]
