"""A model whose embedding has more rows than its tokenizer has tokens (padded vocabularies, as
Qwen2's 151936 rows over a 151646-token tokenizer): sampling such an id must not break
detokenization or logprobs, and the engine keeps serving."""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture(scope="module")
def padded_llm(llmcore, checkpoint, tmp_path_factory):
    src = checkpoint("llama_gqa")
    dst = tmp_path_factory.mktemp("padded")
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(src / name, dst / name)
    config = json.loads((src / "config.json").read_text())
    config["vocab_size"] = 600  # the tokenizer has 512 pieces
    (dst / "config.json").write_text(json.dumps(config))
    llm = llmcore.LLM(model=str(dst), device="cpu", load_format="dummy", num_gpu_blocks_override=256)
    yield llm
    llm.shutdown()


def test_padded_id_has_no_text(padded_llm, llmcore):
    assert len(padded_llm.get_tokenizer()) == 512
    params = llmcore.SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True, logprobs=2,
                                    logit_bias={550: 100.0})
    out = padded_llm.generate("The cat", params, use_tqdm=False)[0].outputs[0]
    assert out.token_ids == [550, 550, 550]
    assert out.text == ""
    for pos in out.logprobs:
        assert pos[550].decoded_token == ""
    assert padded_llm.llm_engine.is_healthy()
    # Still serving, and ids inside the tokenizer still decode.
    again = padded_llm.generate("The cat", llmcore.SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True,
                                                                  logit_bias={300: 100.0}), use_tqdm=False)[0]
    assert again.outputs[0].token_ids == [300, 300]
    piece = padded_llm.get_tokenizer().convert_ids_to_tokens(300)
    assert not piece.startswith("<0x")  # an ordinary piece, not a byte-fallback one
    assert again.outputs[0].text.strip() and "\ufffd" not in again.outputs[0].text
