"""Greedy generation, output logprobs and prompt logprobs against HuggingFace transformers.

For every checkpoint variant: llmcore generates greedily (float32 compute) with top-5 logprobs
and top-5 prompt logprobs; llmcore's whole token sequence is then teacher-forced through the HF
float32 model once, and every position is compared with HF's log_softmax:
  - the generated token is HF's argmax wherever HF's top-2 margin is > 1e-2 (elsewhere it must
    at least be within the margin of the top), and most steps must have been compared;
  - the top-5 ids/values, the chosen token's logprob and rank match (|diff| <= 1e-3);
  - the prompt logprobs likewise, with position 0 None;
  - cumulative_logprob is the sum of the chosen tokens' logprobs;
  - string prompts are tokenized as sentencepiece does, with BOS.
"""

from __future__ import annotations

import pytest

import fixtures

TOL = 1e-3
MARGIN = 1e-2
MAX_TOKENS = 24
TOP_K = 5

PROMPTS = [
    "The cat walks to the house",
    "Once more, the old man remembers the blue sea under the stars.",
    # > 3 blocks of 16 tokens, so prefill and decode both cross block boundaries.
    " ".join(fixtures.prompt_texts(6, seed=3, max_words=20)),
    "Hi",
    # ~440 tokens: positions near max_position_embeddings (512), far past llama3's original 64.
    " ".join(fixtures.prompt_texts(12, seed=9, max_words=40)),
]
# A prompt given as ids: no BOS, byte-fallback and rare ids included.
ID_PROMPT = [5, 300, 17, 260, 511, 42, 42, 42, 3, 100, 258, 259, 4]


@pytest.fixture(scope="module", params=list(fixtures.VARIANTS))
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def parity_run(variant, make_llm, llmcore):
    llm = make_llm(variant)
    params = llmcore.SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=MAX_TOKENS,
                                    logprobs=TOP_K, prompt_logprobs=TOP_K)
    prompts = PROMPTS + [{"prompt_token_ids": ID_PROMPT}]
    return llm.generate(prompts, params, use_tqdm=False)


def test_prompt_tokenization(parity_run, sp):
    assert len(parity_run[-2].prompt_token_ids) + MAX_TOKENS > 400  # the long prompt is long
    for out, text in zip(parity_run, PROMPTS):
        assert out.prompt == text
        assert list(out.prompt_token_ids) == [fixtures.BOS_ID] + sp.encode(text)
    assert list(parity_run[-1].prompt_token_ids) == ID_PROMPT


def test_greedy_tokens_and_logprobs(variant, parity_run, hf_model):
    model = hf_model(variant)
    num_steps = num_compared = 0
    for p, out in enumerate(parity_run):
        assert out.finished
        assert len(out.outputs) == 1
        comp = out.outputs[0]
        prompt_ids = list(out.prompt_token_ids)
        gen = list(comp.token_ids)
        assert len(gen) == MAX_TOKENS, f"prompt {p}: {len(gen)} tokens"
        assert comp.finish_reason == "length"
        assert comp.logprobs is not None and len(comp.logprobs) == MAX_TOKENS

        ref = fixtures.log_softmax(fixtures.hf_logits(model, prompt_ids + gen))
        cumulative = 0.0
        for j, tok in enumerate(gen):
            row = ref[len(prompt_ids) + j - 1]
            where = f"{variant} prompt {p} step {j}"
            num_steps += 1
            if fixtures.top2_margin(row) > MARGIN:
                num_compared += 1
                assert tok == int(row.argmax()), (
                    f"{where}: llmcore chose {tok} ({row[tok]:.5f}), HF argmax "
                    f"{int(row.argmax())} ({row.max():.5f})")
            else:
                assert row[tok] >= row.max() - MARGIN - TOL, f"{where}: {tok} is not near the top"
            fixtures.check_position_logprobs(comp.logprobs[j], row, tok, TOP_K, TOL, where)
            cumulative += row[tok]
        assert comp.cumulative_logprob == pytest.approx(cumulative, abs=TOL * 4), f"prompt {p}"
    # The comparison must not pass vacuously on near-ties.
    assert num_compared >= 0.8 * num_steps, f"only {num_compared}/{num_steps} steps compared"


def test_prompt_logprobs(variant, parity_run, hf_model):
    model = hf_model(variant)
    for p, out in enumerate(parity_run):
        prompt_ids = list(out.prompt_token_ids)
        plp = out.prompt_logprobs
        assert plp is not None and len(plp) == len(prompt_ids), f"prompt {p}"
        assert plp[0] is None
        ref = fixtures.log_softmax(fixtures.hf_logits(model, prompt_ids))
        for i in range(1, len(prompt_ids)):
            fixtures.check_position_logprobs(plp[i], ref[i - 1], prompt_ids[i], TOP_K, TOL,
                                             f"{variant} prompt {p} position {i}")


def test_logprob_entries_are_decoded(parity_run, sp):
    """decoded_token is the token's text (or None); never a stale or shifted token."""
    comp = parity_run[0].outputs[0]
    for j, entry in enumerate(comp.logprobs):
        for tid, lp in entry.items():
            assert lp.decoded_token is None or isinstance(lp.decoded_token, str)
            if lp.decoded_token and not sp.is_byte(tid) and not sp.is_control(tid) \
                    and not sp.is_unknown(tid):
                piece = sp.id_to_piece(tid).replace("\u2581", " ")
                assert lp.decoded_token.strip() == piece.strip(), (j, tid, lp.decoded_token, piece)


# ---------------------------------------------------------------------------------------------
# Loading paths around the parity runs

def test_get_tokenizer_matches_sentencepiece(llm, sp):
    tok = llm.get_tokenizer()
    assert tok.bos_token_id == fixtures.BOS_ID and tok.eos_token_id == fixtures.EOS_ID
    assert tok.vocab_size == fixtures.VOCAB_SIZE
    texts = PROMPTS + ["Zebra quantum \u65e5\u672c \U0001F600!", "  two  spaces\nnewline", ""]
    for text in texts:
        assert tok.encode(text) == [fixtures.BOS_ID] + sp.encode(text), text
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text), text
        assert tok.decode(sp.encode(text)) == sp.decode(sp.encode(text)), text
    assert tok.decode([fixtures.BOS_ID, 270, fixtures.EOS_ID]) == sp.decode([270])


def test_separate_tokenizer_dir(llmcore, checkpoint, tokenizer_dir, tmp_path, make_llm):
    """tokenizer= points at another directory; the model directory has no tokenizer files."""
    import shutil

    src = checkpoint("llama_gqa")
    for f in src.iterdir():
        if not f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, tmp_path / f.name)
    params = llmcore.SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    llm = llmcore.LLM(model=str(tmp_path), tokenizer=str(tokenizer_dir), device="cpu",
                      dtype="float32", num_gpu_blocks_override=64)
    got = llm.generate(PROMPTS[0], params, use_tqdm=False)[0]
    ref = make_llm("llama_gqa").generate(PROMPTS[0], params, use_tqdm=False)[0]
    assert got.prompt_token_ids == ref.prompt_token_ids
    assert got.outputs[0].token_ids == ref.outputs[0].token_ids
    assert got.outputs[0].text == ref.outputs[0].text


def test_dummy_load_format(llmcore, checkpoint, tmp_path, hf_model):
    """load_format="dummy" needs only config.json (+ tokenizer) and gives random weights, not the
    checkpoint's."""
    import shutil

    src = checkpoint("llama_gqa")
    for f in src.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, tmp_path / f.name)
    llm = llmcore.LLM(model=str(tmp_path), device="cpu", dtype="float32",
                      num_gpu_blocks_override=64, load_format="dummy")
    out = llm.generate(PROMPTS[0], llmcore.SamplingParams(temperature=0.0, max_tokens=8,
                                                          ignore_eos=True, logprobs=0),
                       use_tqdm=False)[0]
    comp = out.outputs[0]
    assert len(comp.token_ids) == 8 and comp.finish_reason == "length"
    ref = fixtures.log_softmax(fixtures.hf_logits(hf_model("llama_gqa"),
                                                  list(out.prompt_token_ids) + list(comp.token_ids)))
    diffs = [abs(comp.logprobs[j][t].logprob - ref[len(out.prompt_token_ids) + j - 1][t])
             for j, t in enumerate(comp.token_ids)]
    assert max(diffs) > 1e-2, "dummy weights reproduce the checkpoint exactly"
