"""Type stubs of llmcore._C, the native core (csrc/bindings/module.cpp)."""

from typing import Dict, List, Optional, Union

MAX_LOGPROBS: int

def cuda_device_count() -> int: ...

class SamplingParams:
    """How to sample the outputs of one request; vLLM's field names, defaults and ranges.
    Invalid values raise ValueError naming the field."""

    n: int
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: Optional[int]
    stop: List[str]
    stop_token_ids: List[int]
    ignore_eos: bool
    max_tokens: Optional[int]
    min_tokens: int
    logprobs: Optional[int]
    prompt_logprobs: Optional[int]
    detokenize: bool
    skip_special_tokens: bool
    spaces_between_special_tokens: bool
    include_stop_str_in_output: bool
    logit_bias: Dict[int, float]
    def __init__(
        self,
        n: int = 1,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        seed: Optional[int] = None,
        stop: Union[str, List[str], None] = None,
        stop_token_ids: Optional[List[int]] = None,
        ignore_eos: bool = False,
        max_tokens: Optional[int] = 16,
        min_tokens: int = 0,
        logprobs: Optional[int] = None,
        prompt_logprobs: Optional[int] = None,
        detokenize: bool = True,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
        include_stop_str_in_output: bool = False,
        logit_bias: Optional[Dict[int, float]] = None,
    ) -> None: ...
    def validate(self, vocab_size: int = 0) -> None: ...
    def clone(self) -> "SamplingParams": ...

class TokenLogprob:
    token_id: int
    logprob: float
    rank: int

class PositionLogprobs:
    entries: List[TokenLogprob]  # the chosen (or prompt) token first, then the top-k
    decoded: List[str]

class SequenceDelta:
    index: int
    token_ids: List[int]
    text: str
    logprobs: List[PositionLogprobs]
    cumulative_logprob: float
    finished: bool
    finish_reason: str
    stop_reason: Union[int, str, None]

class RequestDelta:
    request_id: str
    seqs: List[SequenceDelta]
    prompt_logprobs: List[PositionLogprobs]
    has_prompt_logprobs: bool
    finished: bool
    error: str
    arrival_time: float
    first_scheduled_time: float
    first_token_time: float
    finished_time: float
    num_cached_tokens: int

class Engine:
    """The native engine: a C++ thread runs the step loop."""

    def __init__(
        self,
        model: str,
        tokenizer: str = "",
        device: str = "cpu",
        dtype: str = "auto",
        max_model_len: int = 0,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 0,
        enable_prefix_caching: bool = True,
        enable_chunked_prefill: bool = True,
        block_size: int = 16,
        num_gpu_blocks_override: int = 0,
        cpu_kv_cache_space_gib: float = 4.0,
        gpu_memory_utilization: float = 0.9,
        seed: int = 0,
        load_format: str = "auto",
        num_threads: int = 0,
    ) -> None: ...
    def add_request(self, request_id: str, prompt_token_ids: List[int], params: SamplingParams) -> None: ...
    def abort_request(self, request_id: str) -> None: ...
    def get_outputs(self, timeout: float = -1.0) -> List[RequestDelta]: ...
    def has_unfinished_requests(self) -> bool: ...
    def get_stats(self) -> Dict[str, Union[int, float]]: ...
    def is_healthy(self) -> bool: ...
    def error(self) -> str: ...
    def shutdown(self) -> None: ...
    max_model_len: int
    vocab_size: int
    eos_token_ids: List[int]
    architecture: str
    tokenizer: "Tokenizer"

class Tokenizer:
    """A checkpoint's native tokenizer."""

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]: ...
    def decode(self, ids: List[int], skip_special_tokens: bool = True) -> str: ...
    def id_to_token(self, id: int) -> str: ...
    def token_to_id(self, token: str) -> int: ...
    def is_special(self, id: int) -> bool: ...
    vocab_size: int
    bos_token_id: int
    eos_token_id: int

def load_tokenizer(path: str) -> Tokenizer: ...
