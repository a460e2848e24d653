"""Pydantic models of Triton's HTTP protocol as the llmcore server speaks it (triton.py): the
generate extension's request with the inputs of TensorRT-LLM's ensemble / tensorrt_llm_bls models,
its response, the statistics extension, and model / server metadata."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

_INT32_MIN, _INT32_MAX = -(2 ** 31), 2 ** 31 - 1

WordList = Union[str, List[str]]


class TritonGenerateRequest(BaseModel):
    """The generate extension's request with TensorRT-LLM's inputs (scalars, or one-element
    lists as Triton's tensors of shape [1] may be written)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    text_input: str
    max_tokens: Optional[int] = Field(None, ge=1, le=_INT32_MAX)
    bad_words: Optional[WordList] = None
    stop_words: Optional[WordList] = None
    embedding_bias_words: Optional[WordList] = None
    embedding_bias_weights: Optional[Union[float, List[float]]] = None
    temperature: Optional[float] = None
    top_k: Optional[int] = Field(None, ge=0, le=_INT32_MAX)
    top_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    seed: Optional[int] = Field(None, ge=-(2 ** 63), lt=2 ** 64)
    random_seed: Optional[int] = Field(None, ge=-(2 ** 63), lt=2 ** 64)
    repetition_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    min_tokens: Optional[int] = Field(None, ge=0, le=_INT32_MAX)
    min_length: Optional[int] = Field(None, ge=0, le=_INT32_MAX)
    end_id: Optional[int] = Field(None, ge=_INT32_MIN, le=_INT32_MAX)
    pad_id: Optional[int] = Field(None, ge=_INT32_MIN, le=_INT32_MAX)
    beam_width: Optional[int] = Field(None, ge=_INT32_MIN, le=_INT32_MAX)
    num_return_sequences: Optional[int] = Field(None, ge=_INT32_MIN, le=_INT32_MAX)
    stream: Optional[bool] = None
    return_log_probs: Optional[bool] = None
    return_context_logits: Optional[bool] = None
    return_generation_logits: Optional[bool] = None
    exclude_input_in_output: Optional[bool] = None
    parameters: Optional[Dict[str, Any]] = None

    @model_validator(mode="before")
    @classmethod
    def _unwrap_and_merge(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        params = data.get("parameters")
        if isinstance(params, dict):  # known names inside "parameters" count as fields
            for name, value in params.items():
                if name in _FIELDS and name != "parameters":
                    if name in data:
                        raise ValueError(f"{name} is given both in the request and in its parameters")
                    data[name] = value
        for name in _SCALAR_FIELDS:
            value = data.get(name)
            if isinstance(value, list) and len(value) == 1:
                data[name] = value[0]
        return data


_FIELDS = set(TritonGenerateRequest.model_fields)
_SCALAR_FIELDS = _FIELDS - {"bad_words", "stop_words", "embedding_bias_words", "embedding_bias_weights", "parameters"}


class TritonGenerateResponse(BaseModel):
    """A generate response, or one event of generate_stream (text_output: the new text)."""

    model_name: str
    model_version: str
    text_output: str
    # With return_log_probs: the sum over the output so far, and each new token's log-probability.
    cum_log_probs: Optional[float] = None
    output_log_probs: Optional[List[float]] = None


class TritonError(BaseModel):
    error: str


class _Stat(BaseModel):
    count: int = 0
    ns: int = 0


class TritonInferenceStats(BaseModel):
    success: _Stat = Field(default_factory=_Stat)
    fail: _Stat = Field(default_factory=_Stat)
    queue: _Stat = Field(default_factory=_Stat)
    compute_input: _Stat = Field(default_factory=_Stat)
    compute_infer: _Stat = Field(default_factory=_Stat)
    compute_output: _Stat = Field(default_factory=_Stat)
    cache_hit: _Stat = Field(default_factory=_Stat)
    cache_miss: _Stat = Field(default_factory=_Stat)


class TritonModelStats(BaseModel):
    name: str
    version: str
    last_inference: int = 0  # milliseconds since the epoch
    inference_count: int = 0
    execution_count: int = 0
    inference_stats: TritonInferenceStats = Field(default_factory=TritonInferenceStats)
    response_stats: Dict[str, Any] = Field(default_factory=dict)
    batch_stats: List[Any] = Field(default_factory=list)
    memory_usage: List[Any] = Field(default_factory=list)


class TritonStatsResponse(BaseModel):
    model_stats: List[TritonModelStats]


class TritonTensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: List[int]


class TritonModelMetadata(BaseModel):
    name: str
    versions: List[str]
    platform: str
    inputs: List[TritonTensorMetadata]
    outputs: List[TritonTensorMetadata]


class TritonServerMetadata(BaseModel):
    name: str
    version: str
    extensions: List[str]


GENERATE_INPUTS = [("text_input", "BYTES", [-1]), ("max_tokens", "INT32", [-1]), ("bad_words", "BYTES", [-1]),
           ("stop_words", "BYTES", [-1]), ("embedding_bias_words", "BYTES", [-1]),
           ("embedding_bias_weights", "FP32", [-1]), ("end_id", "INT32", [1]), ("pad_id", "INT32", [1]),
           ("top_k", "INT32", [1]), ("top_p", "FP32", [1]), ("temperature", "FP32", [1]),
           ("repetition_penalty", "FP32", [1]), ("presence_penalty", "FP32", [1]),
           ("frequency_penalty", "FP32", [1]), ("min_tokens", "INT32", [1]), ("min_length", "INT32", [1]),
           ("seed", "UINT64", [1]), ("random_seed", "UINT64", [1]), ("beam_width", "INT32", [1]),
           ("num_return_sequences", "INT32", [1]), ("return_log_probs", "BOOL", [1]),
           ("exclude_input_in_output", "BOOL", [1]), ("stream", "BOOL", [1])]
GENERATE_OUTPUTS = [("text_output", "BYTES", [-1]), ("cum_log_probs", "FP32", [-1]), ("output_log_probs", "FP32", [-1, -1])]
EXTENSIONS = ["generate", "statistics"]
