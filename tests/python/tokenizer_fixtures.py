"""tokenizer.json fixtures for the HF-parity tests, trained offline in a few seconds.

Each builder trains a tokenizer with Hugging Face `tokenizers` (or converts a `sentencepiece`
model with transformers' converter pieces) on text generated here from a seeded RNG, and writes
tokenizer.json + tokenizer_config.json into a directory:

- llama3: Llama-3's split regex + ByteLevel(use_regex=False), ignore_merges with whole-word
  vocabulary entries no merge sequence builds, <|begin_of_text|> etc. as added special tokens
  past the model vocabulary, TemplateProcessing adding BOS.
- qwen2: NFC normalizer, Qwen2's regex (single digits), ByteLevel, ChatML special tokens and a
  non-special added token.
- gpt2: ByteLevel pre-tokenizer with its own GPT-2 regex; merges written as "a b" strings.
- sp_legacy / sp_metaspace: a sentencepiece BPE model with byte fallback turned into BPE vocab +
  merges (transformers' generate_merges) with transformers' LlamaConverter components:
  Prepend+Replace normalizer (legacy) or Metaspace(prepend_scheme="first") (non-legacy), and
  Replace / ByteFallback / Fuse / Strip decoders.
- misc_metaspace, misc_split, misc_plain: the remaining components and options (Metaspace
  split + decoder, Digits, NFKC / NFD / Lowercase / Strip / Replace normalizers, every Split
  behavior and invert, WhitespaceSplit / Whitespace, unk + fuse_unk, continuing_subword_prefix,
  end_of_word_suffix, added tokens with lstrip / rstrip / single_word / normalized, a template
  with BOS and EOS, no decoder).

`corpus()` is the evaluation text: more than 300 strings covering whitespace runs, \\r\\n, tabs,
numbers, contractions, accents and combining marks, CJK, Arabic / Hebrew / Devanagari, emoji
with ZWJ sequences and flags, code, and special tokens written inline.
"""

from __future__ import annotations

import json
import random
import types
from pathlib import Path
from typing import Callable, Dict, List

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|python_tag|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = ("the model reads tokens and writes text while a server streams every request to the "
          "client before the cache fills up again tokenization inference scheduler engine "
          "batch memory throughput latency hello world").split()
_PHRASES = [
    "中文测试文本", "我们的模型推理服务", "你好，世界！", "日本語のテキストです。", "カタカナとひらがな",
    "한국어 텍스트입니다", "Привет, мир! Как дела?", "Γειά σου Κόσμε", "مرحبا بالعالم ١٢٣",
    "שלום עולם", "नमस्ते दुनिया १२३", "ภาษาไทย", "Tiếng Việt có dấu", "café naïve façade résumé",
    "straße Ærøskøbing", "emoji 😀 🎉 🚀 👍🏽 ❤️", "👨‍👩‍👧‍👦 family", "flags 🇺🇸🇯🇵🇫🇷",
]
_CODE = [
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    '{"key": [1, 2, 3], "nested": {"a": null}}', "<div class=\"x\">text</div>",
    "if x != y and not z:\n        print('no')\n", "SELECT * FROM t WHERE id = 42;",
]


def training_text(seed: int = 7, num_lines: int = 2500) -> List[str]:
    """Lines mixing English words, numbers, punctuation, code and other scripts."""
    rng = random.Random(seed)
    lines = []
    for i in range(num_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        line = " ".join(words)
        if rng.random() < 0.4:
            line += f" {rng.randint(0, 10 ** rng.randint(1, 7))}"
        if rng.random() < 0.3:
            line += rng.choice([".", ",", "!", "?", " -", "'s", " don't", " I'm", " we'll"])
        if rng.random() < 0.35:
            line += " " + rng.choice(_PHRASES)
        if i % 9 == 0:
            line = rng.choice(_CODE) + line
        if i % 13 == 0:
            line = "  " + line + "\t\t"
        lines.append(line + ("\r\n" if i % 17 == 0 else "\n"))
    return lines


# ---------------------------------------------------------------------------------------------
# Evaluation corpus

_FIXED = [
    "", " ", "  ", "\n", "\t", "\r\n", "a", "A", "1", "'", "é", "中", "😀",
    # whitespace runs, tabs, line breaks
    "two  spaces", "three   spaces  here", "   leading spaces", "trailing spaces   ",
    "tab\tseparated\tvalues", "\t\tindented with tabs", "mixed \t \n whitespace", " \n \n ",
    "line one\nline two\n\nline four", "windows\r\nline\r\nbreaks\r\n", "\r\n\r\n\r\n",
    "old mac\rline", "trailing newline\n", "\n\nleading newlines", "a\u3000ideographic\u3000space",
    "no\u00a0break\u00a0space", "next\u0085line", "mongolian\u180evowel", "zero\u200bwidth",
    "line\u2028separator", "para\u2029separator", "\x0bvertical\x0ctab", "   \t   \n   ",
    " " * 40 + "x", "x" + "\n" * 10, "a \n b \n\n c",
    # numbers
    "12345", "1234567890", "3.14159", "1,000,000", "2024-01-01T12:30:45Z", "+1 (555) 123-4567",
    "0x1F 0b1010 1e-9", "٣٤٥ Arabic-Indic digits", "१२३ Devanagari digits", "Ⅻ roman ½ ² ³",
    "42nd street and 7th avenue", "v1.2.3-rc4", "100%", "$9.99", "99 bottles",
    # contractions and case
    "don't", "I'M HERE", "we'll see", "they'RE", "it's", "'s", "O'Neil's", "you've", "I'd",
    "She'LL", "SHOUTING TEXT", "camelCaseIdentifier", "snake_case_identifier", "ALLCAPS123",
    # accents and combining marks
    "café", "cafe\u0301", "naïve", "Å vs A\u030a", "e\u0301\u0327 order", "e\u0327\u0301 order",
    "ﬁ ligature ﬀ", "Ω ohm \u2126 angstrom \u212b", "\u1100\u1161\u11a8 jamo", "한글 composed",
    "q\u0307\u0323", "\u0344 excluded", "ḗ ṹ ǖ", "Z\u0351\u0352\u0353\u0354algo", "x\u0300\u0300\u0300",
    "ÅÄÖ åäö", "İstanbul ıi", "ΣΑΣ σας", "ǅ Ǆ ǆ", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "㍿ ㌀ ㎏",
    # CJK and other scripts
    "中文测试文本", "我们的模型推理服务很快", "日本語のテキストとカタカナ", "한국어 텍스트입니다",
    "混合 mixed 文本 text", "龘 rare char", "𠀀𠀁 supplementary", "「引用」『二重』",
    "مرحبا بالعالم", "اللغة العربية ١٢٣", "שלום עולם", "עברית עם ניקוד: שָׁלוֹם", "नमस्ते दुनिया",
    "हिन्दी भाषा", "ภาษาไทย", "Привет, мир!", "Ελληνικά", "Tiếng Việt", "ქართული", "አማርኛ",
    # emoji
    "😀", "😀😀😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🏴‍☠️", "🇺🇸🇯🇵🇫🇷", "🇺", "❤️", "1️⃣ keycap",
    "🧑🏿‍🚀 astronaut", "emoji😀inline", "👩‍💻 coding", "✓ ✗ ★ ☆ ♥", "🎉🎊🎈",
    # code
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    '{"key": [1, 2, 3], "nested": {"a": null}}', "<div class=\"x\">text</div>",
    "x = y if z else w  # comment", "#include <stdio.h>\nint main() { return 0; }",
    "a->b->c; a::b::c; a=>b; a<=b; a!=b; a===b", "```python\nprint('hi')\n```",
    "http://example.com/path?q=1&r=2#frag", "user@example.com", "C:\\Users\\name\\file.txt",
    "    indented code\n        more", "\tif (x) {\n\t\ty();\n\t}",
    # special tokens written inline
    "<|begin_of_text|>Hello<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "text <|eot_id|> more", "<|eot_id|><|eot_id|>", "<|eot_id", "<<|eot_id|>>", "|eot_id|>",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>",
    "a<|endoftext|>b", " <|endoftext|> ", "<s>[INST] hi [/INST]", "</s><s>", "<s> leading",
    "<|reserved_special_token_0|><|reserved_special_token_1|>", "<|python_tag|>code",
    "<tool_call>{\"name\": \"f\"}</tool_call>", "[CLS] [SEP] [MASK]", "<mask> and <sep>",
    "say hello world", "hello", "helloworld", "HELLO WORLD", "a <x> b", "<x><x>", "  <mask>  x",
    "<sep>   after", "<bos><eos>",
]

_FRAGMENTS = [frag for frag in _FIXED if frag.strip()] + _PHRASES + _CODE


def corpus(seed: int = 11, num_random: int = 220) -> List[str]:
    """The evaluation strings: the fixed cases above plus random concatenations of them."""
    rng = random.Random(seed)
    strings = list(_FIXED)
    separators = ["", " ", "  ", "\n", "\t", "\r\n", " \n"]
    for _ in range(num_random):
        parts = [rng.choice(_FRAGMENTS) for _ in range(rng.randint(2, 5))]
        strings.append("".join(p + rng.choice(separators) for p in parts))
    strings.append(" ".join(training_text(seed=99, num_lines=40)))  # one long string
    return strings


# ---------------------------------------------------------------------------------------------
# Builders

def _write(out_dir: Path, tokenizer, config: Dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    full = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 20}
    full.update(config)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(full, indent=2))
    return out_dir


def _bpe_trainer(vocab_size: int, special_tokens=(), byte_level: bool = True, **kwargs):
    from tokenizers import pre_tokenizers, trainers
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    return trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                               initial_alphabet=alphabet, show_progress=False, **kwargs)


def _edit_json(tokenizer, edit: Callable[[dict], None]):
    from tokenizers import Tokenizer
    data = json.loads(tokenizer.to_str())
    edit(data)
    return Tokenizer.from_str(json.dumps(data))


def _template(tokenizer, single: str):
    from tokenizers import processors
    names = [part for part in single.split() if part != "$A"]
    return processors.TemplateProcessing(
        single=single, special_tokens=[(name, tokenizer.token_to_id(name)) for name in names])


def build_llama3(out_dir: Path) -> Path:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(training_text(seed=1), _bpe_trainer(2500))

    # tiktoken-style vocabularies hold whole words that no merge sequence builds; with
    # ignore_merges such a piece encodes as that one token.
    extra = ["Ġtokenization", "Ġinference", "Ġthroughput", "Ġscheduler", "Ġmodel", "hello", "Ġworld",
             "123", "Ġ\t", "ĠĠĠ"]

    def edit(data):
        model = data["model"]
        model["ignore_merges"] = True
        for token in extra:
            if token not in model["vocab"]:
                model["vocab"][token] = len(model["vocab"])
    tok = _edit_json(tok, edit)
    tok.add_special_tokens(LLAMA3_SPECIALS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False), _template(tok, "<|begin_of_text|> $A")])
    return _write(out_dir, tok, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})


def build_qwen2(out_dir: Path) -> Path:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(training_text(seed=2), _bpe_trainer(2500))
    tok.add_special_tokens(QWEN2_SPECIALS)
    tok.add_tokens([AddedToken("<tool_call>", normalized=False, special=False),
                    AddedToken("</tool_call>", normalized=False, special=False)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return _write(out_dir, tok, {"bos_token": None, "eos_token": "<|im_end|>",
                                 "pad_token": "<|endoftext|>"})


def build_gpt2(out_dir: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(training_text(seed=3), _bpe_trainer(2000))
    tok.add_special_tokens(["<|endoftext|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)

    def merges_as_strings(data):  # the spelling of older files
        data["model"]["merges"] = [f"{a} {b}" for a, b in data["model"]["merges"]]
    tok = _edit_json(tok, merges_as_strings)
    return _write(out_dir, tok, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"})


def _sentencepiece_vocab(work_dir: Path):
    import sentencepiece as spm
    work_dir.mkdir(parents=True, exist_ok=True)
    text = work_dir / "spm_corpus.txt"
    text.write_text("".join(training_text(seed=4)), encoding="utf-8")
    prefix = work_dir / "spm"
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(prefix), model_type="bpe", vocab_size=1200,
        byte_fallback=True, character_coverage=0.995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2, input_sentence_size=0, shuffle_input_sentence=False,
        remove_extra_whitespaces=False, normalization_rule_name="identity")
    sp = spm.SentencePieceProcessor(model_file=str(prefix) + ".model")
    return sp, str(prefix) + ".model"


def _build_sentencepiece(out_dir: Path, legacy: bool) -> Path:
    import shutil
    from tokenizers import AddedToken, Tokenizer, models
    from transformers.convert_slow_tokenizer import LlamaConverter
    from transformers.tokenization_utils_base import generate_merges

    sp, model_file = _sentencepiece_vocab(out_dir / "work")
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    merges = generate_merges(vocab, scores)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True, dropout=None))
    # transformers' LlamaConverter decides the pipeline; its methods read only these flags.
    converter = types.SimpleNamespace(
        original_tokenizer=types.SimpleNamespace(legacy=legacy, add_prefix_space=True))
    normalizer = LlamaConverter.normalizer(converter, None)
    if normalizer is not None:
        tok.normalizer = normalizer
    pre_tokenizer = LlamaConverter.pre_tokenizer(converter, "▁", True)
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    tok.decoder = LlamaConverter.decoder(converter, "▁", True)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = _template(tok, "<s> $A")
    out = _write(out_dir, tok, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                "legacy": legacy})
    shutil.copy(model_file, out / "tokenizer.model")  # tokenizer.json must win over it
    shutil.rmtree(out_dir / "work")
    return out


def build_sp_legacy(out_dir: Path) -> Path:
    return _build_sentencepiece(out_dir, legacy=True)


def build_sp_metaspace(out_dir: Path) -> Path:
    return _build_sentencepiece(out_dir, legacy=False)


def build_misc_metaspace(out_dir: Path) -> Path:
    """Metaspace(split) + Digits, NFKC / Replace / Lowercase / Strip, unk + fuse_unk,
    continuing_subword_prefix, added tokens with lstrip / rstrip / single_word / normalized."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers
    tok = Tokenizer(models.BPE(unk_token="[UNK]", fuse_unk=True, continuing_subword_prefix="##"))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " "), normalizers.Lowercase(),
        normalizers.Strip(left=False, right=True)])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = _bpe_trainer(1500, special_tokens=["[UNK]", "[CLS]", "[SEP]"], byte_level=False,
                           limit_alphabet=120, continuing_subword_prefix="##")
    tok.train_from_iterator(training_text(seed=5), trainer)
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False),
                            AddedToken("<sep>", rstrip=True, special=True, normalized=False)])
    tok.add_tokens([AddedToken("hello", single_word=True, normalized=True, special=False),
                    AddedToken("WORLD", normalized=True, special=False),
                    AddedToken("<x>", normalized=False, special=False)])
    tok.post_processor = _template(tok, "[CLS] $A [SEP]")
    return _write(out_dir, tok, {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]"})


def build_misc_split(out_dir: Path) -> Path:
    """Every Split behavior and invert, NFD / Prepend / Replace(String), ByteLevel with prefix
    space and regex, end_of_word_suffix, Replace / Strip decoders, BOS + EOS template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFD(), normalizers.Prepend("~"), normalizers.Replace("ab", "X")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(",", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"\d+"), behavior="merged_with_next"),
        pre_tokenizers.Split(Regex("[aeiou]"), behavior="contiguous"),
        pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"),
        pre_tokenizers.Split(Regex("[xyz]+"), behavior="isolated", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
    tok.decoder = decoders.Sequence([
        decoders.ByteLevel(), decoders.Replace("</w>", " "), decoders.Replace(Regex("~+"), ""),
        decoders.Strip(" ", 1, 0)])  # (stop > 0 makes HF panic on an empty decode)
    trainer = _bpe_trainer(2000, special_tokens=["<bos>", "<eos>"], end_of_word_suffix="</w>")
    tok.train_from_iterator(training_text(seed=6), trainer)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True), _template(tok, "<bos> $A <eos>")])
    return _write(out_dir, tok, {"bos_token": "<bos>", "eos_token": "<eos>"})


def build_misc_plain(out_dir: Path) -> Path:
    """Whitespace / WhitespaceSplit / Digits(contiguous), NFKD, no decoder (tokens joined with
    spaces), no post-processor."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKD()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Whitespace()])
    trainer = _bpe_trainer(1500, special_tokens=["<unk>", "<|endoftext|>"], byte_level=False,
                           limit_alphabet=200)
    tok.train_from_iterator(training_text(seed=8), trainer)
    return _write(out_dir, tok, {"eos_token": "<|endoftext|>"})


BUILDERS: Dict[str, Callable[[Path], Path]] = {
    "llama3": build_llama3,
    "qwen2": build_qwen2,
    "gpt2": build_gpt2,
    "sp_legacy": build_sp_legacy,
    "sp_metaspace": build_sp_metaspace,
    "misc_metaspace": build_misc_metaspace,
    "misc_split": build_misc_split,
    "misc_plain": build_misc_plain,
}


def byte_level_identity(out_dir: Path, normalizer_json) -> Path:
    """A tokenizer.json whose decode(encode(s)) is its normalizer applied to s: byte-level,
    the 256 byte characters as vocabulary, no merges."""
    from tokenizers import pre_tokenizers
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    data = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
        "normalizer": normalizer_json,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                          "use_regex": False},
        "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": False,
                                            "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {c: i for i, c in enumerate(alphabet)}, "merges": []},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(data))
    return out_dir
