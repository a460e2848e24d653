"""The built-in demo model: its training pipeline (llmcore.models.train_demo, demo_corpus,
demo_sources, rdata) and, when the trained weights are in the package, the model itself.

- The readers: R's serialization format against bytes written here from the format's
  specification, .deb files against ones `dpkg-deb --build` makes, and (when the Debian packages
  are in .carry/demo-debs) the real sources against passages everyone knows.
- End to end on the CPU: train_demo on a small synthetic text directory with the tiny preset;
  the output must be an ordinary HF checkpoint that transformers and llmcore both load, whose
  tokenizer and greedy tokens agree between the two, and whose reported held-out loss is what
  transformers computes on the held-out text.
- python/llmcore/models/demo/ (skipped until the trained model is there; LLMCORE_DEMO_MODEL_DIR
  points them elsewhere): tokenizer and greedy parity with transformers, size, and
  default-sampling output that reads as English.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from llmcore.models import demo_corpus, demo_sources, rdata, train_demo  # noqa: E402

import fixtures  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# LLMCORE_DEMO_MODEL_DIR checks a freshly trained output directory before it is copied in.
DEMO_DIR = Path(os.environ.get("LLMCORE_DEMO_MODEL_DIR", REPO / "python" / "llmcore" / "models" / "demo"))
DEB_DIR = REPO / ".carry" / "demo-debs"
HAVE_DEMO = (DEMO_DIR / "model.safetensors").exists()
HAVE_DEBS = DEB_DIR.is_dir() and any(DEB_DIR.glob("sword-text-web_*.deb"))


# ---------------------------------------------------------------------------------------------
# R serialization, written from "R Internals", section Serialization Formats (XDR, version 2)

def _int(v: int) -> bytes:
    return struct.pack(">i", v)


def _charsxp(s) -> bytes:
    if s is None:
        return _int(9) + _int(-1)  # NA_STRING
    raw = s.encode("utf-8")
    return _int(9 | (64 << 12)) + _int(len(raw)) + raw  # gp bit ASCII


def _strsxp(items, attrs: bytes = b"") -> bytes:
    return _int(16 | (bool(attrs) << 9)) + _int(len(items)) + b"".join(map(_charsxp, items)) + attrs


def _intsxp(items, attrs: bytes = b"") -> bytes:
    return _int(13 | (bool(attrs) << 9)) + _int(len(items)) + b"".join(map(_int, items)) + attrs


def _vecsxp(encoded_items, attrs: bytes = b"") -> bytes:
    return _int(19 | (bool(attrs) << 9)) + _int(len(encoded_items)) + b"".join(encoded_items) + attrs


def _names_attr(names, first_use_of_symbol: bool, ref_index: int = 1) -> bytes:
    """The pairlist (names = c(...)); the symbol `names` is written once, then referenced."""
    tag = _int(1) + _charsxp("names") if first_use_of_symbol else _int((ref_index << 8) | 255)
    return _int(2 | (1 << 10)) + tag + _strsxp(names) + _int(254)


def _serialize(item: bytes) -> bytes:
    return b"X\n" + _int(2) + _int(0x040201) + _int(0x020300) + item


def test_rdata_reads_the_xdr_format():
    # list(a = c("x", NA), b = c(p = 1L, q = 2L, r = 3L)); the inner vector's names come
    # first in the stream, so the list's own `names` tag is a reference to that symbol.
    inner = _intsxp([1, 2, 3], _names_attr(["p", "q", "r"], first_use_of_symbol=True))
    blob = _serialize(_vecsxp([_strsxp(["x", None]), inner], _names_attr(["a", "b"], first_use_of_symbol=False)))
    obj = rdata.unserialize(blob)
    assert obj.names == ["a", "b"]
    assert list(obj[0]) == ["x", None]
    assert list(obj[1]) == [1, 2, 3] and obj[1].names == ["p", "q", "r"]
    assert rdata.read_rds(gzip.compress(blob))[1].names == ["p", "q", "r"]


def test_rdata_reads_a_lazyload_database():
    """Rdata.rdx: a gzip'd serialized list(variables = list(name = c(offset, length)),
    references = list(), compressed = TRUE); Rdata.rdb: per object, a 4-byte big-endian length
    and the zlib stream of its serialization."""
    objects = {"emma": _strsxp(["EMMA", "", "By Jane Austen"]), "n": _intsxp([7])}
    rdb, offsets = b"", []
    for item in objects.values():
        payload = _serialize(item)
        chunk = struct.pack(">I", len(payload)) + zlib.compress(payload)
        offsets.append((len(rdb), len(chunk)))
        rdb += chunk
    variables = _vecsxp([_intsxp(list(o)) for o in offsets], _names_attr(list(objects), first_use_of_symbol=True))
    index = _vecsxp([variables, _vecsxp([]), _int(10) + _int(1) + _int(1)],
                    _names_attr(["variables", "references", "compressed"], first_use_of_symbol=False))
    got = rdata.read_lazyload_db(gzip.compress(_serialize(index)), rdb)
    assert list(got["emma"]) == ["EMMA", "", "By Jane Austen"]
    assert list(got["n"]) == [7]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build a reference .deb")
def test_read_deb_matches_dpkg_deb(tmp_path):
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/share/demo").mkdir(parents=True)
    (root / "DEBIAN/control").write_text("Package: demo-text\nVersion: 1.2-3\nArchitecture: all\n"
                                         "Maintainer: Nobody <nobody@example.org>\nDescription: test\n")
    payload = ("It was a bright cold day in April.\n" * 50).encode()
    (root / "usr/share/demo/story.txt").write_bytes(payload)
    (root / "usr/share/demo/other.txt").write_text("not wanted")
    subprocess.run(["dpkg-deb", "--build", "-Zxz", str(root), str(tmp_path / "demo.deb")],
                   check=True, capture_output=True)
    control, files = demo_sources.read_deb(tmp_path / "demo.deb", lambda p: p.endswith("story.txt"))
    assert control["Package"] == "demo-text" and control["Version"] == "1.2-3"
    assert files == {"usr/share/demo/story.txt": payload}


# ---------------------------------------------------------------------------------------------
# Cleaning, chat examples and the split

def test_parse_fortunes_separates_attribution():
    text = ("A friend is a present you give yourself.\n\t\t-- Robert Louis Stevenson\n%\n"
            "Love conquers all.\n%\n  Line one\n  line two\n\t-- Somebody, \"A Book\"\n%\n")
    docs, quotes = demo_sources.parse_fortunes(text)
    assert docs == ["A friend is a present you give yourself.\n-- Robert Louis Stevenson",
                    "Love conquers all.", "Line one\nline two\n-- Somebody, \"A Book\""]
    assert [(q.text, q.author) for q in quotes] == [
        ("A friend is a present you give yourself.", "Robert Louis Stevenson"),
        ("Line one line two", "Somebody, \"A Book\"")]


def test_offensive_text_is_dropped():
    docs, quotes = demo_sources.parse_fortunes("What the fuck.\n\t-- Someone\n%\nA whorl of leaves in Scunthorpe.\n"
                                               "\t-- Moby Dick\n%\n")
    assert docs == ["A whorl of leaves in Scunthorpe.\n-- Moby Dick"] and len(quotes) == 1
    prose = "Call me Ishmael.\n\nHe called him a nigger.\n\nThe end."
    assert demo_sources.drop_offensive_paragraphs(prose) == "Call me Ishmael.\n\nThe end."


def test_chat_examples_render_like_the_chat_template():
    from transformers import AutoTokenizer
    from tokenizers import Tokenizer, models

    quotes = [demo_sources.Quote("Love is patient, love is kind.", "", "1 Corinthians 13:4", "verse"),
              demo_sources.Quote("Time is money.", "Benjamin Franklin", "", "quote")]
    chats = demo_corpus.build_chats(quotes, seed=0)
    assert chats and all(c.startswith("<|im_start|>") and c.endswith("<|im_end|>\n") for c in chats)
    assert any("(1 Corinthians 13:4)" in c for c in chats) and any("Benjamin Franklin" in c for c in chats)
    # transformers renders CHAT_TEMPLATE (Jinja) the way render_chat writes the examples.
    tok_dir = Path(__import__("tempfile").mkdtemp())
    Tokenizer(models.BPE()).save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": demo_corpus.BOS_TOKEN,
        "chat_template": demo_corpus.CHAT_TEMPLATE}))
    hf = AutoTokenizer.from_pretrained(tok_dir)
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Give me a quotation about time."},
                {"role": "assistant", "content": "\"Time is money.\"\n-- Benjamin Franklin"}]
    assert hf.apply_chat_template(messages, tokenize=False) == demo_corpus.BOS_TOKEN + demo_corpus.render_chat(messages)
    assert (hf.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
            == demo_corpus.BOS_TOKEN + demo_corpus.render_chat(messages[:2], add_generation_prompt=True))
    shutil.rmtree(tok_dir)


def test_heldout_split_depends_only_on_the_text():
    docs = [f"Document number {i}: " + " ".join(fixtures.training_text(num_lines=3, seed=i).split()) for i in range(400)]
    held = {d for d in docs if demo_corpus.is_heldout(d, 100)}
    shuffled = list(docs)
    random.Random(5).shuffle(shuffled)
    assert {d for d in shuffled if demo_corpus.is_heldout(d, 100)} == held
    assert 15 <= len(held) <= 70  # about 10%
    assert all((zlib.crc32(d.encode()) % 1000 < 100) == (d in held) for d in docs)


@pytest.mark.skipif(not HAVE_DEBS, reason="the Debian packages are not in .carry/demo-debs")
@pytest.mark.parametrize("name, expected", [
    ("austen", "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
               "must be in want of a wife."),
    ("moby_dick", "Call me Ishmael. Some years ago--never mind how long precisely--having little or no money in my purse"),
    ("web_bible", "In the beginning, God created the heavens and the earth."),
    ("devil", "ABSURDITY, n. A statement or belief manifestly inconsistent with one's own opinion."),
    ("jargon", "crawling horror: n."),
    ("dhammapada", "Mind precedes its objects. They are mind-governed and mind-made."),
    ("fortunes", "A friend is a present you give yourself.\n-- Robert Louis Stevenson"),
    ("fortunes_min", "A horse!  A horse!  My kingdom for a horse!\n-- Wm. Shakespeare, \"Richard III\""),
])
def test_real_sources_hold_known_passages(name, expected):
    (source,) = [s for s in demo_sources.SOURCES if s.name == name]
    (deb,) = DEB_DIR.glob(f"{source.package}_*.deb")
    control, files = demo_sources.read_deb(deb, source.wants)
    assert control["Package"] == source.package
    text = source.read(files)
    assert any(expected in d for d in text.documents)
    assert not any("\ufffd" in d for d in text.documents)
    if name == "web_bible":
        assert not any("<" in d or ">" in d for d in text.documents)  # no OSIS markup left
    if name == "jargon":
        # "{cross-reference}" braces are removed
        assert any("Like dusty deck or gonkulator, but connotes" in d for d in text.documents)
    if name == "web_bible":
        cites = {q.cite: q.text for q in text.quotes}
        assert cites["Genesis 1:3"] == "God said, \"Let there be light,\" and there was light."
        assert cites["Psalms 23:1"] == "Yahweh is my shepherd; I shall lack nothing."


# ---------------------------------------------------------------------------------------------
# train_demo end to end on the CPU (tiny preset, synthetic text)

STEPS, EVAL_EVERY = 12, 6


def _write_text_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = fixtures.training_text(num_lines=1200, seed=21).splitlines()
    docs = ["\n".join(lines[i:i + 12]) for i in range(0, len(lines), 12)]
    (root / "stories.txt").write_text("\n\n\n".join(docs) + "\n")
    rng = random.Random(3)
    authors = ["Ada Lovelace", "Mark Twain", "Jane Austen", "Confucius", "Anonymous Sailor"]
    topics = ["love", "time", "life", "friend", "money", "work", "truth", "peace"]
    quotes = []
    for i in range(120):
        words = fixtures.training_text(num_lines=1, seed=100 + i).strip().rstrip(".")
        quotes.append(f"{words} for {rng.choice(topics)}.\n\t\t-- {rng.choice(authors)}")
    (root / "sayings.fortunes").write_text("\n%\n".join(quotes) + "\n%\n")
    (root / "LICENSE").write_text("CC0-1.0 (generated by the test)\n")
    return root


def test_tokenizer_training_is_deterministic():
    texts = [fixtures.training_text(num_lines=40, seed=s) for s in range(30)]
    first = train_demo.train_tokenizer(texts, 400)
    assert first.to_str() == train_demo.train_tokenizer(list(texts), 400).to_str()
    assert [first.id_to_token(i) for i in range(3)] == list(demo_corpus.SPECIAL_TOKENS)
    assert first.encode("The cat walks.").ids[0] == 0  # every text starts with the BOS


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(text dir, output dir) of one train_demo run."""
    root = tmp_path_factory.mktemp("demo_train")
    text_dir = _write_text_dir(root / "text")
    out = root / "out"
    train_demo.main(["--text-dir", str(text_dir), "--out", str(out), "--preset", "tiny", "--device", "cpu",
                     "--max-steps", str(STEPS), "--eval-every", str(EVAL_EVERY), "--vocab-size", "384",
                     "--heldout-permille", "150", "--warmup-steps", "4", "--time-limit-s", "300"])
    return text_dir, out


def test_train_demo_writes_a_hf_checkpoint(tiny_run):
    from safetensors import safe_open
    from transformers import AutoConfig

    _, out = tiny_run
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "metrics.json", "README.md", "heldout_words.txt"):
        assert (out / name).is_file(), name
    config = AutoConfig.from_pretrained(out)
    shape = train_demo.PRESETS["tiny"]
    assert config.model_type == "llama" and config.hidden_size == shape["hidden_size"]
    assert config.head_dim in (64, 128) and config.vocab_size == 384
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == demo_corpus.CHAT_TEMPLATE
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [0, 2] and gen["temperature"] == train_demo.GENERATION_DEFAULTS["temperature"]


def test_train_demo_metrics_are_real(tiny_run):
    """Recomputes the held-out loss with transformers on the held-out text the corpus builder
    gives for the same directory, tokenized by the saved tokenizer."""
    from transformers import AutoModelForCausalLM
    from tokenizers import Tokenizer

    text_dir, out = tiny_run
    m = json.loads((out / "metrics.json").read_text())
    seq_len = train_demo.PRESETS["tiny"]["seq_len"]
    assert m["steps"] == STEPS and m["tokens_seen"] == STEPS * train_demo.PRESETS["tiny"]["batch_size"] * seq_len
    assert [h["step"] for h in m["history"]] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    corpus = demo_corpus.build_corpus(text_dir=text_dir, heldout_permille=150, seed=0)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = [i for t in corpus.heldout + corpus.heldout_chats for i in tok.encode(t).ids]
    assert len(ids) == m["heldout_tokens"]
    n = (len(ids) - 1) // seq_len
    data = torch.tensor(ids[:n * seq_len + 1])
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    total = 0.0
    with torch.no_grad():
        for i in range(n):
            window = data[i * seq_len:(i + 1) * seq_len + 1]
            logits = model(window[None, :-1]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum").item()
    loss = total / (n * seq_len)
    assert m["heldout_loss"] == pytest.approx(loss, rel=1e-4)
    assert m["heldout_ppl"] == pytest.approx(math.exp(loss), rel=1e-4)
    assert m["heldout_loss"] < math.log(384)  # better than uniform after a few steps
    card = (out / "README.md").read_text()
    assert f"perplexity {m['heldout_ppl']:.2f}" in card and "sayings" in card and "CC0-1.0" in card
    assert "llmcore CPU backend" in card and "Once upon a time" in card


def test_train_demo_runs_again_from_scratch(tiny_run, tmp_path):
    """Same data and seed: the same tokenizer and (on the CPU) the same held-out loss."""
    text_dir, out = tiny_run
    again = tmp_path / "again"
    train_demo.main(["--text-dir", str(text_dir), "--out", str(again), "--preset", "tiny", "--device", "cpu",
                     "--max-steps", str(STEPS), "--eval-every", str(EVAL_EVERY), "--vocab-size", "384",
                     "--heldout-permille", "150", "--warmup-steps", "4", "--no-card"])
    assert (again / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (out, again))
    assert second["heldout_loss"] == pytest.approx(first["heldout_loss"], rel=1e-4)


def test_train_demo_output_loads_in_llmcore_like_transformers(tiny_run):
    llmcore = pytest.importorskip("llmcore")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out = tiny_run
    hf_tok = AutoTokenizer.from_pretrained(out)
    llm = llmcore.LLM(model=str(out), device="cpu", dtype="float32", num_gpu_blocks_override=64)
    try:
        tok = llm.get_tokenizer()
        strings = ["Once upon a time", "The cat walks to the market, again.", "  two  spaces\n\nand lines",
                   "<|im_start|>user\nhi<|im_end|>\n", "café 123 😀"]
        for s in strings:
            assert tok.encode(s) == hf_tok(s).input_ids, s
            assert tok.encode(s)[0] == 0  # the BOS
        messages = [{"role": "user", "content": "Give me a quotation about love."}]
        assert (tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                == hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        prompt = "The old man looks at"
        ids = hf_tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, -1], -1)
        got = llm.generate(prompt, llmcore.SamplingParams(temperature=0, max_tokens=1, logprobs=0),
                           use_tqdm=False)[0].outputs[0]
        token = got.token_ids[0]
        top2 = logprobs.topk(2).values
        if top2[0] - top2[1] > 1e-3:  # a clear winner: both must pick it
            assert token == int(logprobs.argmax())
        assert got.logprobs[0][token].logprob == pytest.approx(float(logprobs[token]), abs=1e-3)
    finally:
        llm.llm_engine.shutdown()


# ---------------------------------------------------------------------------------------------
# The shipped demo model

needs_demo = pytest.mark.skipif(not HAVE_DEMO, reason="python/llmcore/models/demo/ has no trained weights yet")


@pytest.fixture(scope="module")
def demo_llm():
    llmcore = pytest.importorskip("llmcore")
    llm = llmcore.LLM(model=str(DEMO_DIR), device="cpu", dtype="float32", num_gpu_blocks_override=512)
    yield llm
    llm.llm_engine.shutdown()


@pytest.fixture(scope="module")
def demo_hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return (AutoTokenizer.from_pretrained(DEMO_DIR),
            AutoModelForCausalLM.from_pretrained(DEMO_DIR, dtype=torch.float32).eval())


@needs_demo
def test_demo_model_files():
    config = json.loads((DEMO_DIR / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["head_dim"] in (64, 128)
    assert (DEMO_DIR / "model.safetensors").stat().st_size <= 30 * 1024 * 1024
    total = sum(p.stat().st_size for p in DEMO_DIR.iterdir() if p.is_file())
    assert total <= 32 * 1024 * 1024
    assert json.loads((DEMO_DIR / "tokenizer_config.json").read_text())["chat_template"] == demo_corpus.CHAT_TEMPLATE
    card = (DEMO_DIR / "README.md").read_text()
    m = json.loads((DEMO_DIR / "metrics.json").read_text())
    assert f"perplexity {m['heldout_ppl']:.2f}" in card and "llmcore CPU backend" in card


@needs_demo
def test_demo_tokenizer_matches_transformers(demo_llm, demo_hf):
    import tokenizer_fixtures
    hf_tok, _ = demo_hf
    tok = demo_llm.get_tokenizer()
    strings = tokenizer_fixtures.corpus() + [demo_corpus.render_chat([{"role": "user", "content": "Hi there!"}])]
    mismatched = [s for s in strings if tok.encode(s) != hf_tok(s).input_ids]
    assert not mismatched, mismatched[:3]
    for s in strings[:50]:
        ids = hf_tok(s).input_ids
        assert tok.decode(ids) == hf_tok.decode(ids, skip_special_tokens=True)


@needs_demo
@pytest.mark.parametrize("prompt", ["Once upon a time", "It is a truth universally acknowledged",
                                    "The sea was calm and"])
def test_demo_greedy_matches_transformers(demo_llm, demo_hf, prompt):
    import llmcore
    hf_tok, model = demo_hf
    ids = hf_tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        # An explicit attention mask: the BOS is id 0, which is also the pad id, and without a mask
        # generate() would infer one that hides it.
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                                  temperature=None, top_p=None, repetition_penalty=1.0, eos_token_id=None,
                                  pad_token_id=0)[0, ids.shape[1]:]
    got = demo_llm.generate(prompt, llmcore.SamplingParams(temperature=0, max_tokens=32, ignore_eos=True),
                            use_tqdm=False)[0].outputs[0].token_ids
    assert list(got) == expected.tolist()


def _english_report(text: str, vocabulary: set) -> dict:
    words = re.findall(r"[A-Za-z]+", text.lower())
    grams = Counter(tuple(words[i:i + 4]) for i in range(len(words) - 3))
    return {"words": len(words), "known": sum(w in vocabulary for w in words) / max(1, len(words)),
            "max_4gram_repeats": max(grams.values(), default=0), "replacement_chars": text.count("\ufffd")}


@needs_demo
def test_demo_default_sampling_reads_as_english(demo_llm):
    import llmcore
    vocabulary = set((DEMO_DIR / "heldout_words.txt").read_text().split())
    defaults = demo_llm.get_default_sampling_params()
    assert defaults.temperature > 0  # generation_config.json sets sampling defaults
    total_words = 0
    for seed in range(4):
        params = llmcore.SamplingParams(temperature=defaults.temperature, top_p=defaults.top_p,
                                        repetition_penalty=defaults.repetition_penalty, max_tokens=96, seed=seed)
        text = demo_llm.generate("Once upon a time", params, use_tqdm=False)[0].outputs[0].text
        report = _english_report(text, vocabulary)
        total_words += report["words"]
        assert report["replacement_chars"] == 0, text
        assert report["known"] >= 0.75 or report["words"] == 0, (report, text)  # byte soup scores far below
        assert report["max_4gram_repeats"] <= 3, (report, text)
    assert total_words >= 60  # continuations, not an immediate end of text


@needs_demo
def test_demo_chat_reply_is_on_topic(demo_llm):
    import llmcore
    defaults = demo_llm.get_default_sampling_params()
    replies = []
    for seed in range(4):
        params = llmcore.SamplingParams(temperature=defaults.temperature, top_p=defaults.top_p,
                                        repetition_penalty=defaults.repetition_penalty, max_tokens=120, seed=seed)
        out = demo_llm.chat([{"role": "user", "content": "Give me a quotation about love."}], params, use_tqdm=False)[0]
        replies.append((out.outputs[0].finish_reason, out.outputs[0].text))
    assert sum(reason == "stop" for reason, _ in replies) >= 3, replies  # the reply ends (<|im_end|>)
    assert sum("love" in text.lower() for _, text in replies) >= 2, replies
