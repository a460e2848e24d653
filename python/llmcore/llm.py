"""LLM: vLLM's offline interface on the native engine."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from . import _C
from .engine import EngineDeadError, LLMEngine
from .outputs import RequestOutput, RequestState
from .tokenizer import Tokenizer

SamplingParams = _C.SamplingParams

# A prompt: text, {"prompt": text}, or {"prompt_token_ids": [ids]}.
PromptType = Union[str, Dict[str, Any]]
# A chat: a list of {"role": ..., "content": ...} messages.
Conversation = List[Dict[str, Any]]

# generation_config.json fields that become default sampling parameters, with their
# SamplingParams names (vLLM's list; transformers' max_new_tokens is vLLM's max_tokens).
_GENERATION_CONFIG_FIELDS = {
    "repetition_penalty": "repetition_penalty",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "max_new_tokens": "max_tokens",
}
# chat() arguments that chat_template_kwargs may not set a second time.
_CHAT_RESERVED_KWARGS = ("conversation", "messages", "chat_template", "add_generation_prompt",
                         "continue_final_message", "tools", "tokenize", "return_dict")


def _resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when the CUDA backend is built and a GPU is visible, else 'cpu'."""
    if device == "auto":
        return "cuda" if _C.cuda_device_count() > 0 else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'; got {device!r}")
    return device


class LLM:
    """An offline LLM: load a HuggingFace checkpoint directory, then generate.

    Arguments follow vLLM's ``LLM``; without ``model`` it loads the built-in demo model
    (llmcore/models/demo). ``enforce_eager`` turns off the CUDA graphs of decode steps. ``num_gpu_blocks_override`` fixes the number of KV-cache
    blocks (of ``block_size`` tokens); on the CPU the cache otherwise takes
    ``LLMCORE_CPU_KVCACHE_SPACE`` GiB (default 4), capped at what ``max_num_seqs`` full-length
    sequences can use. With ``max_num_seqs`` <= 16 on a GPU, decode steps run the engine's own
    decode GEMM, faster than cuBLAS up to 16 rows (batch-1 decode of the 8B shape on an H100: 6.15
    against 7.74 ms per token); larger engines use cuBLAS for every row.

    ``generation_config``: "auto" takes the sampling defaults (temperature, top_p, top_k, min_p,
    repetition_penalty, max_new_tokens) of the checkpoint's generation_config.json for calls that
    pass no SamplingParams; "vllm" ignores them (SamplingParams' own defaults). Either way every
    eos_token_id listed there (as in config.json, and the tokenizer's EOS) ends generation.
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
        generation_config: str = "auto",
        enforce_eager: bool = False,
    ) -> None:
        if model is None:
            from .models import default_model

            model = str(default_model())
        if generation_config not in ("auto", "vllm"):
            raise ValueError("generation_config must be 'auto' (use the model's generation_config.json) "
                             f"or 'vllm' (ignore it); got {generation_config!r}")
        if isinstance(tensor_parallel_size, bool) or not isinstance(tensor_parallel_size, int) \
                or tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be an integer >= 1; got {tensor_parallel_size!r}")
        if not (0.0 < gpu_memory_utilization <= 1.0):
            raise ValueError(f"gpu_memory_utilization must be in (0, 1]; got {gpu_memory_utilization}")
        for name, value in (("max_model_len", max_model_len), ("max_num_batched_tokens", max_num_batched_tokens),
                            ("num_gpu_blocks_override", num_gpu_blocks_override)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 when set; got {value}")
        kv_space = float(os.environ.get("LLMCORE_CPU_KVCACHE_SPACE", "4"))
        if not (kv_space > 0 and math.isfinite(kv_space)):
            raise ValueError(f"LLMCORE_CPU_KVCACHE_SPACE must be a positive number of GiB; got {kv_space}")
        # Read before the engine starts, so a bad file fails without leaving an engine running.
        self._default_sampling = (
            _read_generation_defaults(os.fspath(model)) if generation_config == "auto" else {}
        )
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
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            load_format=load_format,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
        )
        try:
            self._tokenizer = Tokenizer(self.llm_engine.native.tokenizer, os.fspath(tokenizer or model))
        except BaseException:
            self.llm_engine.shutdown()  # e.g. a malformed chat_template in tokenizer_config.json
            raise

    # -- tokenizer --------------------------------------------------------------------------
    def get_tokenizer(self) -> Tokenizer:
        """The model's tokenizer."""
        return self._tokenizer

    # -- sampling defaults ------------------------------------------------------------------
    def get_default_sampling_params(self) -> SamplingParams:
        """The SamplingParams used when a call passes none: SamplingParams() with the model's
        generation_config.json defaults applied (generation_config="auto"). A new object per call."""
        return SamplingParams(**self._default_sampling)

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
            sampling_params = self.get_default_sampling_params()
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

    def chat(
        self,
        messages: Union[Conversation, Sequence[Conversation]],
        sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
        use_tqdm: bool = True,
        chat_template: Optional[str] = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: Optional[Dict[str, Any]] = None,
        tools: Optional[List[Union[Dict[str, Any], Callable]]] = None,
    ) -> List[RequestOutput]:
        """Generates the assistant's reply to one conversation (a list of {"role", "content"}
        messages) or to each of a list of conversations; one RequestOutput per conversation.

        Each conversation is rendered with the model's chat template (or `chat_template`: a
        template string or the name of one of the model's templates), then tokenized without
        adding BOS/EOS, since the template writes them. add_generation_prompt opens the
        assistant's turn; continue_final_message instead continues the final (assistant)
        message and needs add_generation_prompt=False. chat_template_kwargs are extra template
        variables (and `documents`). RequestOutput.prompt is the rendered text.
        """
        if isinstance(messages, (list, tuple)) and not messages:
            raise ValueError("messages is empty: give a conversation (a list of message dicts) or a list of them")
        batched = isinstance(messages, (list, tuple)) and isinstance(messages[0], (list, tuple))
        conversations = list(messages) if batched else [messages]
        kwargs = dict(chat_template_kwargs or {})
        clash = [k for k in _CHAT_RESERVED_KWARGS if k in kwargs]
        if clash:
            raise ValueError(f"chat_template_kwargs may not set {clash}: pass them as chat()'s own arguments")
        prompts = []
        for conversation in conversations:
            text = self._tokenizer.apply_chat_template(
                conversation, chat_template=chat_template, add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, tools=tools, tokenize=False, **kwargs)
            prompts.append({"prompt": text,
                            "prompt_token_ids": self._tokenizer.encode(text, add_special_tokens=False)})
        return self.generate(prompts, sampling_params, use_tqdm)

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


def _read_generation_defaults(model_dir: str) -> Dict[str, Any]:
    """SamplingParams keyword arguments from model_dir/generation_config.json ({} without it).
    Fails at load, naming the file, when the values are not valid sampling parameters."""
    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object; got {type(config).__name__}")
    defaults = {ours: config[theirs] for theirs, ours in _GENERATION_CONFIG_FIELDS.items()
                if config.get(theirs) is not None}
    try:
        SamplingParams(**defaults)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path} gives invalid sampling defaults {defaults}: {e}") from e
    return defaults


def _progress_bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; without it there is simply no bar
        return None
    return tqdm(total=total, desc="Processed prompts", dynamic_ncols=True)


__all__ = ["LLM", "SamplingParams", "EngineDeadError"]
