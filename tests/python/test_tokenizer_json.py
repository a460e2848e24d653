"""tokenizer.json in C++ against Hugging Face `tokenizers` and `transformers` as the reference.

The tokenizers are trained here (tokenizer_fixtures.py) in the shapes of Llama-3, Qwen2, GPT-2
and a sentencepiece-converted Llama, plus three that exercise the remaining components. For
every string of the corpus: the ids of encode() with and without special tokens are identical
to both references', and decode() of those ids, skipping special tokens or not, is identical to
theirs. Normalization is checked on every code point against Python's unicodedata through a
tokenizer whose decode(encode(s)) is its normalizer applied to s.
"""

from __future__ import annotations

import json
import random
import shutil
import unicodedata
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
llmcore = pytest.importorskip("llmcore")
_C = pytest.importorskip("llmcore._C")

import tokenizer_fixtures as tf  # noqa: E402
from tokenizers import Tokenizer as HfTokenizer  # noqa: E402

NAMES = list(tf.BUILDERS)
CORPUS = tf.corpus()
MAX_REPORTED = 5


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer_json")
    return {name: build(root / name) for name, build in tf.BUILDERS.items()}


@pytest.fixture(scope="module")
def loaded(tokenizer_dirs):
    """name -> (llmcore native tokenizer, HF tokenizers.Tokenizer, transformers tokenizer)."""
    from transformers import AutoTokenizer

    out = {}
    for name, path in tokenizer_dirs.items():
        out[name] = (_C.load_tokenizer(str(path)),
                     HfTokenizer.from_file(str(path / "tokenizer.json")),
                     AutoTokenizer.from_pretrained(str(path)))
    return out


def _fuzz_strings(count: int, seed: int):
    """Random strings of characters assigned in the Unicode version of Python's unicodedata,
    with special tokens, contractions, whitespace and combining marks mixed in."""
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E)] * 6 + [
        (0x0, 0x20), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
        (0x1100, 0x11FF), (0x2000, 0x206F), (0x3000, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00),
        (0xFB00, 0xFB4F), (0xFF00, 0xFFEF), (0x1F1E6, 0x1F1FF), (0x1F300, 0x1F6FF), (0x10000, 0x10FFFF)]
    pieces = ["<|begin_of_text|>", "<|eot_id|>", "<|im_start|>", "<|endoftext|>", "<s>", "</s>",
              "<mask>", "<sep>", "hello", "WORLD", "<x>", "<tool_call>", "[CLS]", " ", "  ", "\n",
              "\r\n", "\t", "'s", "'T", "123", "\u200d", "\ufe0f", "e\u0301"]
    strings = []
    while len(strings) < count:
        out = []
        for _ in range(rng.randint(0, 30)):
            if rng.random() < 0.15:
                out.append(rng.choice(pieces))
                continue
            lo, hi = rng.choice(ranges)
            c = chr(rng.randint(lo, hi))
            if unicodedata.category(c) not in ("Cn", "Cs"):
                out.append(c)
        strings.append("".join(out))
    return strings


def _assert_encode_parity(name, loaded, strings):
    ours, hf, hf_transformers = loaded[name]
    mismatches = []
    for s in strings:
        for add in (True, False):
            got = ours.encode(s, add)
            want = hf.encode(s, add_special_tokens=add).ids
            also = hf_transformers.encode(s, add_special_tokens=add)
            assert want == also, f"the references disagree on {s!r}"  # guards the fixture
            if got != want:
                mismatches.append((s, add, got, want))
    assert not mismatches, (f"{name}: {len(mismatches)} encodes differ, e.g. "
                            + "; ".join(f"{s!r} add_special_tokens={a}: {g} != {w}"
                                        for s, a, g, w in mismatches[:MAX_REPORTED]))


def _assert_decode_parity(name, loaded, strings):
    ours, hf, hf_transformers = loaded[name]
    mismatches = []
    for s in strings:
        ids = hf.encode(s, add_special_tokens=True).ids
        for skip in (True, False):
            want = hf.decode(ids, skip_special_tokens=skip)
            also = hf_transformers.decode(ids, skip_special_tokens=skip)
            assert want == also, f"the references disagree on {s!r}"
            got = ours.decode(ids, skip)
            if got != want:
                mismatches.append((s, skip, got, want))
    assert not mismatches, (f"{name}: {len(mismatches)} decodes differ, e.g. "
                            + "; ".join(f"{s!r} skip_special_tokens={k}: {g!r} != {w!r}"
                                        for s, k, g, w in mismatches[:MAX_REPORTED]))


def test_corpus_covers_the_acceptance_categories():
    text = "".join(CORPUS)
    assert len(CORPUS) >= 300
    for needle in ["  ", "\r\n", "\t", "123", "don't", "e\u0301", "中文", "مرحبا", "שלום", "नमस्ते",
                   "\u200d", "🇺🇸", "def ", "<|eot_id|>", "<s>", "<|im_start|>"]:
        assert needle in text, needle


@pytest.mark.parametrize("name", NAMES)
def test_encode_matches_hf(name, loaded):
    _assert_encode_parity(name, loaded, CORPUS)


@pytest.mark.parametrize("name", NAMES)
def test_decode_matches_hf(name, loaded):
    _assert_decode_parity(name, loaded, CORPUS)


@pytest.mark.parametrize("name", NAMES)
def test_random_text_matches_hf(name, loaded):
    strings = _fuzz_strings(600, seed=NAMES.index(name))
    _assert_encode_parity(name, loaded, strings)
    _assert_decode_parity(name, loaded, strings)


@pytest.mark.parametrize("name", NAMES)
def test_vocabulary_matches_hf(name, loaded, tokenizer_dirs):
    ours, hf, _ = loaded[name]
    assert ours.vocab_size == hf.get_vocab_size(with_added_tokens=True)
    for i in range(ours.vocab_size):
        assert ours.id_to_token(i) == hf.id_to_token(i), i
    for token, i in hf.get_vocab(with_added_tokens=True).items():
        assert ours.token_to_id(token) == i, token
    assert ours.token_to_id("no such token \u2603") == -1
    specials = {i for i, t in hf.get_added_tokens_decoder().items() if t.special}
    assert {i for i in range(ours.vocab_size) if ours.is_special(i)} == specials

    config = json.loads((tokenizer_dirs[name] / "tokenizer_config.json").read_text())
    for field, got in (("bos_token", ours.bos_token_id), ("eos_token", ours.eos_token_id)):
        want = config.get(field)
        assert got == (hf.token_to_id(want) if want else -1), field


def test_fixtures_exercise_what_they_claim(loaded):
    # ignore_merges: a whole-word vocabulary entry that merges alone would not produce.
    ours, hf, _ = loaded["llama3"]
    ids = ours.encode(" tokenization", False)
    assert ids == [hf.token_to_id("Ġtokenization")]
    # A CJK character and an emoji cut across byte-level tokens.
    for text in ["龘", "🧑🏿‍🚀"]:
        pieces = [ours.id_to_token(i) for i in ours.encode(text, False)]
        assert len(pieces) > 1 and ours.decode(ours.encode(text, False), True) == text
    # Byte fallback in the sentencepiece conversion: a rare character becomes <0x..> pieces.
    ours, hf, _ = loaded["sp_legacy"]
    pieces = [ours.id_to_token(i) for i in ours.encode("龘", False)]
    assert any(p.startswith("<0x") for p in pieces), pieces
    # unk with fuse_unk: a run of unknown characters is one [UNK].
    ours, hf, _ = loaded["misc_metaspace"]
    unk = hf.token_to_id("[UNK]")
    assert ours.encode("龘龘龘", False).count(unk) == 1


def test_llmcore_tokenizer_uses_tokenizer_json(loaded, tokenizer_dirs):
    tok = llmcore.Tokenizer.from_pretrained(str(tokenizer_dirs["llama3"]))
    _, hf, _ = loaded["llama3"]
    text = "<|begin_of_text|>Hello there<|eot_id|>"
    assert tok.encode(text) == hf.encode(text).ids
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == "Hello there"
    assert tok.eos_token_id == hf.token_to_id("<|eot_id|>")


def test_named_special_tokens_follow_transformers(tmp_path):
    """tokenizer_config.json's named tokens become special added tokens in transformers (not in
    bare `tokenizers`): matched whole in text, skipped by skip_special_tokens, options kept."""
    from tokenizers import AddedToken, Tokenizer, models
    from transformers import AutoTokenizer

    vocab = {c: i for i, c in enumerate(["<s>", "<", "s", ">", "a", "b", "</s>", "/", " "])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.add_special_tokens([AddedToken("</s>", lstrip=True, special=True, normalized=False)])
    tok.add_tokens([AddedToken("b", special=False, normalized=False)])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "b",
        "additional_special_tokens": ["a"]}))
    ours = _C.load_tokenizer(str(tmp_path))
    ref = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok.encode("a<s>b").ids != ref.encode("a<s>b", add_special_tokens=False)  # they differ
    for text in ["a<s>b</s>", "a  </s> b", "<s>ab", "s<s>>", ""]:
        for add in (True, False):
            ids = ref.encode(text, add_special_tokens=add)
            assert ours.encode(text, add) == ids, text
            for skip in (True, False):
                assert ours.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip), text
    assert (ours.bos_token_id, ours.eos_token_id) == (ref.bos_token_id, ref.eos_token_id)
    assert {i for i in range(ours.vocab_size) if ours.is_special(i)} == set(ref.all_special_ids)


def test_tokenizer_json_wins_over_tokenizer_model(tokenizer_dirs, tmp_path):
    # sp_legacy ships both files; a broken tokenizer.json must be what fails to load.
    broken = tmp_path / "broken"
    shutil.copytree(tokenizer_dirs["sp_legacy"], broken)
    assert (broken / "tokenizer.model").exists()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        _C.load_tokenizer(str(broken))
    (broken / "tokenizer.json").unlink()
    assert _C.load_tokenizer(str(broken)).encode("hello", False)  # sentencepiece again


def _identity_roundtrip(tmp_path, normalizer_json, text):
    tok = _C.load_tokenizer(str(tf.byte_level_identity(tmp_path, normalizer_json)))
    return tok.decode(tok.encode(text, False), True)


_ALL_CHARS = "".join(chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cs",))


def _combining_sequences(seed: int, count: int = 4000) -> str:
    """Bases followed by shuffled combining marks and Hangul jamo, where reordering and
    composition happen."""
    rng = random.Random(seed)
    marks = [chr(c) for c in range(0x300, 0x370)] + ["\u0323", "\u0345", "\u05b0", "\u093c",
                                                     "\u0f71", "\u0f72", "\u302a", "\u3099"]
    bases = list("aeiouAEIOUnNcCsSzZ") + ["\u03b1", "\u0391", "\u0438", "\u3046", "\u05d0", "\u0915"]
    jamo = [chr(c) for c in range(0x1100, 0x1113)] + [chr(c) for c in range(0x1161, 0x1176)] + \
           [chr(c) for c in range(0x11A8, 0x11C3)]
    out = []
    for _ in range(count):
        if rng.random() < 0.2:
            out.extend(rng.choice(jamo) for _ in range(rng.randint(1, 4)))
        else:
            out.append(rng.choice(bases))
            out.extend(rng.choice(marks) for _ in range(rng.randint(0, 4)))
    return "".join(out)


@pytest.mark.parametrize("form", ["NFC", "NFD", "NFKC", "NFKD"])
def test_normalization_forms_match_unicodedata(form, tmp_path):
    text = _ALL_CHARS + _combining_sequences(seed=len(form))
    assert _identity_roundtrip(tmp_path, {"type": form}, text) == unicodedata.normalize(form, text)


def test_lowercase_matches_per_character_lowercase(tmp_path):
    want = "".join(c.lower() for c in _ALL_CHARS)  # per character: no final-sigma rule
    assert _identity_roundtrip(tmp_path, {"type": "Lowercase"}, _ALL_CHARS) == want


def _with(base: dict, path: str, value) -> dict:
    data = json.loads(json.dumps(base))
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize("path,value,message", [
    ("model.type", "Unigram", "model type \"Unigram\""),
    ("model.type", "WordPiece", "model type \"WordPiece\""),
    ("model.dropout", 0.1, "dropout"),
    ("model.merges", [["Ġ", "no-such-token"]], "not in the vocabulary"),
    ("model.merges", ["a b c"], "two tokens"),
    ("normalizer", {"type": "BertNormalizer"}, "normalizer type \"BertNormalizer\""),
    ("normalizer", {"type": "Precompiled", "precompiled_charsmap": ""}, "\"Precompiled\""),
    ("normalizer", {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "StripAccents"}]},
     "\"StripAccents\""),
    ("pre_tokenizer", {"type": "BertPreTokenizer"}, "pre-tokenizer type \"BertPreTokenizer\""),
    ("pre_tokenizer", {"type": "Punctuation", "behavior": "Isolated"}, "\"Punctuation\""),
    ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": "("}, "behavior": "Isolated",
                       "invert": False}, "cannot compile regex"),
    ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways",
                       "invert": False}, "behavior \"Sideways\""),
    ("decoder", {"type": "WordPiece", "prefix": "##", "cleanup": True}, "decoder type \"WordPiece\""),
    ("decoder", {"type": "CTC"}, "\"CTC\""),
    ("post_processor", {"type": "BertProcessing", "sep": ["[SEP]", 1], "cls": ["[CLS]", 0]},
     "post-processor type \"BertProcessing\""),
    ("post_processor", {"type": "RobertaProcessing"}, "\"RobertaProcessing\""),
])
def test_unsupported_or_malformed_components_are_refused(tmp_path, path, value, message):
    base = json.loads((tf.byte_level_identity(tmp_path / "base", None) / "tokenizer.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text(json.dumps(_with(base, path, value)))
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _C.load_tokenizer(str(bad))


def test_ids_outside_the_vocabulary_are_refused(loaded):
    ours, _, _ = loaded["gpt2"]
    with pytest.raises(ValueError, match="out of range"):
        ours.decode([ours.vocab_size], True)
    with pytest.raises(ValueError, match="out of range"):
        ours.decode([-1], True)
