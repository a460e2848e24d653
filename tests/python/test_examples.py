"""examples/: every script run as a user runs it (`python examples/NAME.py`, a subprocess on the
demo model, `--device cpu` unless LLMCORE_TEST_DEVICE says otherwise), and the README
Quickstart's `python -m llmcore.generate "Once upon a time"`.

Each script's printed text is checked against an independent computation in this process: the
same prompts and sampling parameters (as each script sets them, restated here) through
LLM.generate on a separately loaded demo model. The chat follow-up is checked by rendering the
whole history with the chat template here; the server examples start their own server
(--launch) on a free port, and the Triton one is compared with greedy decoding, which is what
/v2 generate does without top_k / top_p.
"""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

llmcore = pytest.importorskip("llmcore")

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
DEMO_DIR = REPO / "python" / "llmcore" / "models" / "demo"
DEVICE = os.environ.get("LLMCORE_TEST_DEVICE", "cpu")
MAX_TOKENS = 16
TIMEOUT_S = 180
# The sampling parameters the offline examples set (with --max-tokens); the server examples leave
# them to the model's generation_config.json and set only a seed.
TEMPERATURE, TOP_P, SEED = 0.8, 0.95, 0
# Every script in examples/ with the test that runs it (launch_server.py is the client examples'
# helper for --launch).
TESTED = {"offline_batch.py", "streaming.py", "chat.py", "openai_client.py", "triton_generate.py",
          "tensor_parallel.py"}

pytestmark = pytest.mark.skipif(not (DEMO_DIR / "model.safetensors").is_file(),
                                reason="the demo model's weights are not in python/llmcore/models/demo")


def _env() -> dict:
    """The environment of a user's shell whose python imports the llmcore this test imports (the
    tree's python/ here, site-packages after `pip install .`)."""
    env = dict(os.environ)
    package_root = str(Path(llmcore.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.pop("LLMCORE_FAULT_INJECT", None)
    return env


def run(*args: str) -> str:
    """Runs `python ARGS...` from the repository root; its stdout (bytes decoded, so the text's
    own \\r are kept). Fails with the output when the exit code is not 0."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, timeout=TIMEOUT_S)
    out, err = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, f"`python {' '.join(args)}` exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    return out


def example(name: str, *args: str) -> str:
    return run(str(Path("examples") / name), *args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nobody_listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture(scope="module")
def demo_llm():
    """The demo model loaded here, as the examples load it (default dtype), with a small KV cache."""
    llm = llmcore.LLM(device=DEVICE, num_gpu_blocks_override=512)
    yield llm
    llm.shutdown()


def sampled(max_tokens: int = MAX_TOKENS) -> "llmcore.SamplingParams":
    return llmcore.SamplingParams(temperature=TEMPERATURE, top_p=TOP_P, max_tokens=max_tokens, seed=SEED)


def text_of(llm, prompt, params) -> str:
    return llm.generate(prompt, params, use_tqdm=False)[0].outputs[0].text


# -- the listing ---------------------------------------------------------------------------------------
def test_every_example_is_tested_and_listed():
    scripts = {p.name for p in EXAMPLES.glob("*.py")} - {"launch_server.py"}
    assert scripts == TESTED
    readme = (EXAMPLES / "README.md").read_text()
    assert set(re.findall(r"`python examples/(\w+\.py)[^`]*`", readme)) == TESTED
    assert "(examples/)" in (REPO / "README.md").read_text()  # the repo README links here


# -- offline -------------------------------------------------------------------------------------------
def test_offline_batch(demo_llm):
    out = example("offline_batch.py", "--device", DEVICE, "--max-tokens", str(MAX_TOKENS))
    pairs = re.findall(r"^Prompt: +(.*)\nGenerated: (.*) \((\w+)\)$", out, flags=re.M)
    assert len(pairs) >= 3, out
    prompts = [ast.literal_eval(p) for p, _, _ in pairs]
    expected = demo_llm.generate(prompts, sampled(), use_tqdm=False)
    for (_, text, reason), ref in zip(pairs, expected):
        assert ast.literal_eval(text) == ref.outputs[0].text
        assert reason == ref.outputs[0].finish_reason
    assert all(ref.outputs[0].text.strip() for ref in expected)
    assert len({ref.outputs[0].text for ref in expected}) == len(prompts)


def test_streaming(demo_llm):
    prompt = "The sea was calm and"
    out = example("streaming.py", "--device", DEVICE, "--max-tokens", str(MAX_TOKENS), "--prompt", prompt)
    body, summary = out.removesuffix("\n").rsplit("\n", 1)
    assert body.startswith(prompt), out
    ref = demo_llm.generate(prompt, sampled(), use_tqdm=False)[0].outputs[0]
    assert body[len(prompt):] == ref.text  # the printed deltas, concatenated
    m = re.fullmatch(r"\[(\d+) tokens in (\d+) pieces, finish_reason=(\w+)\]", summary)
    assert m, summary
    num_tokens, num_pieces = int(m[1]), int(m[2])
    assert num_tokens == len(ref.token_ids) and m[3] == ref.finish_reason
    assert 1 < num_pieces <= num_tokens  # it streamed: more than one piece arrived


def test_chat_keeps_the_history(demo_llm):
    out = example("chat.py", "--device", DEVICE, "--max-tokens", "24")
    parts = re.split(r"^\[(system|user|assistant)\] ", out, flags=re.M)
    assert parts[0] == "", out
    roles = parts[1::2]
    contents = [c.removesuffix("\n") for c in parts[2::2]]
    assert roles == ["system", "user", "assistant", "user", "assistant"], out
    messages = [{"role": r, "content": c} for r, c in zip(roles, contents)]
    tok = demo_llm.get_tokenizer()
    for i in (2, 4):  # each reply, from the conversation before it rendered here
        rendered = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        assert rendered.count("<|im_start|>") == i + 1  # every earlier message, and the reply's opening
        ids = tok.encode(rendered, add_special_tokens=False)
        reply = text_of(demo_llm, {"prompt_token_ids": ids}, sampled(24))
        assert contents[i] == reply
        assert reply.strip()
    assert contents[2] in tok.apply_chat_template(messages[:4], tokenize=False)


# -- servers -------------------------------------------------------------------------------------------
def test_openai_client(demo_llm):
    port = free_port()
    out = example("openai_client.py", "--launch", "--base-url", f"http://127.0.0.1:{port}/v1",
                  "--device", DEVICE, "--max-tokens", str(MAX_TOKENS))
    assert nobody_listens(port)  # the launched server is gone
    models = ast.literal_eval(re.search(r"^Models: (.*)$", out, flags=re.M)[1])
    assert models == ["demo"]
    chat = ast.literal_eval(re.search(r"^Chat reply: (.*)$", out, flags=re.M)[1])
    streamed = out.split("Streamed chat reply: ", 1)[1].split("\nCompletion: ", 1)[0]
    m = re.search(r"^Completion: (.*) -> (.*)$", out, flags=re.M)
    prompt, completion = ast.literal_eval(m[1]), ast.literal_eval(m[2])
    assert prompt == "Once upon a time"

    # Unset sampling values take generation_config.json's defaults; the script sets seed=0.
    params = demo_llm.get_default_sampling_params()
    params.max_tokens, params.seed = MAX_TOKENS, SEED
    system = {"role": "system", "content": "You are a helpful assistant."}
    ask = lambda messages: demo_llm.chat(messages, params, use_tqdm=False)[0].outputs[0].text  # noqa: E731
    assert chat == ask([system, {"role": "user", "content": "Give me a quotation about love."}])
    assert streamed == ask([{"role": "user", "content": "Give me a quotation about time."}])
    assert completion == text_of(demo_llm, prompt, params)
    assert chat.strip() and streamed.strip() and completion.strip()


def test_triton_generate(demo_llm):
    port = free_port()
    out = example("triton_generate.py", "--launch", "--base-url", f"http://127.0.0.1:{port}",
                  "--device", DEVICE, "--max-tokens", str(MAX_TOKENS))
    assert nobody_listens(port)
    full = ast.literal_eval(re.search(r"^generate: (.*)$", out, flags=re.M)[1])
    streamed = out.split("generate_stream: ", 1)[1].removesuffix("\n")
    prompt = "Once upon a time"
    greedy = text_of(demo_llm, prompt, llmcore.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS))
    assert greedy.strip()
    assert full == prompt + greedy  # text_output repeats the input (exclude_input_in_output unset)
    assert streamed == greedy  # streamed events carry only new text


# -- tensor parallelism --------------------------------------------------------------------------------
def test_tensor_parallel_matches_one_rank(demo_llm):
    """The example shards the demo model over 2 ranks (2 CPU ranks here, GPUs where 2 are seen);
    its greedy text must be the unsharded engine's."""
    out = example("tensor_parallel.py", "--device", DEVICE, "--max-tokens", str(MAX_TOKENS))
    assert out.startswith(f"2 ranks on {DEVICE}\n"), out
    pairs = re.findall(r"^Prompt: (.*)\nGenerated: (.*)$", out, flags=re.M)
    assert len(pairs) == 2, out
    greedy = llmcore.SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    for prompt, text in pairs:
        ref = demo_llm.generate(ast.literal_eval(prompt), greedy, use_tqdm=False)[0].outputs[0]
        assert ref.text.strip()
        assert ast.literal_eval(text) == ref.text


# -- the README Quickstart -----------------------------------------------------------------------------
def test_quickstart_generate_prints_english():
    """`python -m llmcore.generate "Once upon a time"` as the Quickstart runs it: no model, no
    flags. The continuation must read as English: at least 80% of its words are words of the demo
    model's held-out documents (text kept out of its training: heldout_words.txt), and no 3-word
    sequence comes back more than 3 times."""
    prompt = "Once upon a time"
    out = run("-m", "llmcore.generate", prompt)
    assert out.startswith(prompt), out
    continuation = out[len(prompt):]
    vocabulary = set((DEMO_DIR / "heldout_words.txt").read_text().split())
    words = re.findall(r"[A-Za-z]+", continuation.lower())
    assert len(words) >= 10, out
    known = sum(w in vocabulary for w in words) / len(words)
    assert known >= 0.8, (known, [w for w in words if w not in vocabulary], out)
    trigrams = Counter(zip(words, words[1:], words[2:]))
    assert max(trigrams.values()) <= 3, (trigrams.most_common(3), out)
    assert "\ufffd" not in continuation
