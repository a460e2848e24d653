"""Session fixtures for the end-to-end tests: tiny checkpoints (built once per session), the HF
float32 reference models, and a cache of llmcore.LLM instances so each configuration loads once.

Tests that need the engine take the `llmcore` fixture (or `make_llm`); they are skipped, not
failed, while the extension is not importable.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

import fixtures

# Every test LLM gets an explicit, small KV cache unless the test asks otherwise: the CPU
# backend's default sizing reserves gigabytes, and a dozen cached engines must fit in CI.
# LLMCORE_TEST_DEVICE picks the device (default cpu); the comparisons assume float32 compute.
DEFAULT_LLM_KWARGS = dict(device=os.environ.get("LLMCORE_TEST_DEVICE", "cpu"), dtype="float32",
                          seed=0, num_gpu_blocks_override=1024)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return fixtures.build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def sp(tokenizer_dir):
    """The reference sentencepiece processor of the test tokenizer."""
    return fixtures.load_sp(tokenizer_dir)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer_dir):
    """checkpoint(name) -> directory of variant `name` (fixtures.VARIANTS), built on first use."""
    root = tmp_path_factory.mktemp("checkpoints")
    built = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = fixtures.build_checkpoint(name, root, tokenizer_dir)
        return built[name]

    return get


@pytest.fixture(scope="session")
def hf_model(checkpoint):
    """hf_model(name) -> the HF reference model (float32, CPU, eval), loaded once."""
    models = {}

    def get(name: str):
        if name not in models:
            models[name] = fixtures.load_hf_float32(checkpoint(name))
        return models[name]

    return get


@pytest.fixture(scope="session")
def llmcore():
    return pytest.importorskip("llmcore")


@pytest.fixture(scope="session")
def make_llm(llmcore, checkpoint):
    """make_llm(name, **kwargs) -> an llmcore.LLM on checkpoint `name`; one instance per
    (name, kwargs) for the whole session. kwargs override DEFAULT_LLM_KWARGS."""
    cache = {}

    def get(name: str = "llama_gqa", **kwargs):
        merged = dict(DEFAULT_LLM_KWARGS)
        merged.update(kwargs)
        key = (name, tuple(sorted(merged.items())))
        if key not in cache:
            cache[key] = llmcore.LLM(model=str(checkpoint(name)), **merged)
        return cache[key]

    yield get
    cache.clear()
    gc.collect()


@pytest.fixture(scope="session")
def llm(make_llm):
    """The default engine on llama_gqa, shared by most tests."""
    return make_llm("llama_gqa")
