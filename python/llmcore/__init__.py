"""llmcore: an LLM inference engine with vLLM's API on a native C++ core."""

from ._C import SamplingParams
from .async_engine import AsyncLLM
from .chat_template import ChatTemplateError
from .engine import EngineDeadError, LLMEngine
from .llm import LLM
from .outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from .tokenizer import Tokenizer

__version__ = "0.1.0"

__all__ = [
    "LLM",
    "AsyncLLM",
    "SamplingParams",
    "RequestOutput",
    "CompletionOutput",
    "Logprob",
    "RequestMetrics",
    "LLMEngine",
    "EngineDeadError",
    "Tokenizer",
    "ChatTemplateError",
    "__version__",
]
