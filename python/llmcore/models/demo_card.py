"""The demo model's card (README.md beside the weights), written from metrics.json by
train_demo, with sample generations from llmcore's CPU backend.

    python -m llmcore.models.demo_card DIR    # (re)writes DIR/README.md and DIR/metrics.json's samples

The GPU machine that trains the model may not have llmcore's extension; there the samples come
from transformers (the card says so), and running this module afterwards on a machine with
llmcore replaces them with the CPU backend's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

# (kind, prompt): "text" continues the prompt; "chat" is one user message through the chat template.
SAMPLE_PROMPTS = (
    ("text", "Once upon a time"),
    ("text", "It is a truth universally acknowledged"),
    ("text", "The old captain looked at the sea and"),
    ("text", "In the beginning"),
    ("chat", "Give me a quotation about love."),
    ("chat", "What does the Bible say about hope?"),
    ("chat", "What does \"hacker\" mean in hacker slang?"),
)
SAMPLE_SEED = 1234
SAMPLE_MAX_TOKENS = 80

_SAMPLING_FIELDS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                    "min_p": "min_p", "repetition_penalty": "repetition_penalty"}

# Notices the source licenses ask to keep with derived works.
_NOTICES = """\
fortune-mod (the fortunes and fortunes-min packages): Copyright (c) 1991 The Regents of the
University of California. All rights reserved. Redistribution and use in source and binary forms,
with or without modification, are permitted provided that the conditions of the BSD license are
met (see /usr/share/doc/fortunes/copyright on Debian)."""


def generation_defaults(model_dir: Path) -> Dict[str, float]:
    """generation_config.json's sampling fields, by SamplingParams name."""
    path = Path(model_dir) / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    return {ours: config[theirs] for theirs, ours in _SAMPLING_FIELDS.items() if config.get(theirs) is not None}


def sample_with_llmcore(model_dir: Path) -> List[Dict[str, str]]:
    """Default-sampling generations (seeded) of SAMPLE_PROMPTS on llmcore's CPU backend."""
    from llmcore import LLM, SamplingParams

    llm = LLM(model=str(model_dir), device="cpu", dtype="float32", num_gpu_blocks_override=256)
    params = SamplingParams(**generation_defaults(model_dir), max_tokens=SAMPLE_MAX_TOKENS, seed=SAMPLE_SEED)
    out = []
    for kind, prompt in SAMPLE_PROMPTS:
        if kind == "text":
            result = llm.generate(prompt, params, use_tqdm=False)[0]
        else:
            result = llm.chat([{"role": "user", "content": prompt}], params, use_tqdm=False)[0]
        out.append({"kind": kind, "prompt": prompt, "completion": result.outputs[0].text})
    llm.llm_engine.shutdown()
    return out


def sample_with_transformers(model_dir: Path) -> List[Dict[str, str]]:
    """The same generations with transformers (float32, CPU), where llmcore is not built."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for kind, prompt in SAMPLE_PROMPTS:
        if kind == "text":
            ids = tok(prompt, return_tensors="pt").input_ids
        else:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
            ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        torch.manual_seed(SAMPLE_SEED)
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=SAMPLE_MAX_TOKENS, do_sample=True)
        out.append({"kind": kind, "prompt": prompt,
                    "completion": tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)})
    return out


def write_model_card(model_dir: Path, samples: bool = True) -> Path:
    """Writes model_dir/README.md from metrics.json (and the samples into metrics.json)."""
    model_dir = Path(model_dir)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    if samples:
        try:  # the extension may be missing or built for another Python
            importlib.import_module("llmcore._C")
            have_llmcore = True
        except Exception:
            have_llmcore = False
        if have_llmcore:
            metrics["samples"] = sample_with_llmcore(model_dir)
            metrics["samples_from"] = "llmcore CPU backend (float32)"
        else:
            metrics["samples"] = sample_with_transformers(model_dir)
            metrics["samples_from"] = "transformers (float32, CPU; llmcore was not importable)"
        (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (model_dir / "README.md").write_text(render_card(metrics, generation_defaults(model_dir)))
    return model_dir / "README.md"


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def render_card(m: Dict, sampling: Dict[str, float]) -> str:
    shape = m["shape"]
    rows = "\n".join(
        f"| {s['title']} | `{s['package']}` {s.get('version', '')} | {s['license']} | "
        f"{_mb(s['chars'])} | {s['documents']} | {_mb(s['heldout_chars'])} |" for s in m["sources"])
    corpus = m["corpus"]
    history = "\n".join(f"| {h['step']} | {h['train_loss'] if h['train_loss'] is None else round(h['train_loss'], 3)} | "
                        f"{h['heldout_loss']:.3f} | {h['elapsed_s']:.0f} |" for h in m["history"])
    lines = [
        "# llmcore demo model",
        "",
        f"A small Llama-architecture language model ({m['num_parameters'] / 1e6:.1f}M parameters, "
        f"{_mb(m['model_bytes'])} of bf16 safetensors) that llmcore trains itself, from scratch, with its own "
        "tokenizer, on English text from Debian packages. It gives llmcore a real model to run offline: "
        "its continuations are English sentences, not knowledge; it makes up facts and quotations.",
        "",
        "It is an ordinary HuggingFace checkpoint (`LlamaForCausalLM`, `tokenizer.json`, a ChatML chat "
        "template in `tokenizer_config.json`), so `transformers` loads it as well as llmcore.",
        "",
        "## Training data",
        "",
        "Text extracted by `python -m llmcore.models.demo_corpus` from these Debian 12 packages "
        "(`apt-get download` them, or `python -m llmcore.models.demo_corpus fetch`):",
        "",
        "| text | package | license | size | documents | held out |",
        "|---|---|---|---|---|---|",
        rows,
        "",
        f"Documents are chapters, dictionary entries and groups of quotations; {corpus['train_documents']} train and "
        f"{corpus['heldout_documents']} held out (a document is held out when the CRC-32 of its text falls in the "
        f"first {m.get('heldout_permille', 20)} of 1000 buckets). {corpus['train_chats']} train and "
        f"{corpus['heldout_chats']} held-out chat examples were built from the quotations, verses and definitions "
        "of each split (a user asks for a quotation about a topic word the quotation contains, who said "
        "something, what a word means; the assistant answers with the quotation). In all "
        f"{_mb(corpus['train_chars'])} of training text, {m['train_tokens']:,} tokens.",
        "",
        "## Model and tokenizer",
        "",
        f"- Llama: hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
        f"{shape['num_attention_heads']} query heads and {shape['num_key_value_heads']} KV heads of dimension "
        f"{shape['hidden_size'] // shape['num_attention_heads']}, MLP {shape['intermediate_size']}, tied embeddings, "
        "RoPE theta 10000, 1024 positions.",
        f"- Byte-level BPE, {m['vocab_size']} tokens, trained on the train split (Llama-3's split regex); "
        "`<|endoftext|>` (id 0) starts every text and ends documents, `<|im_start|>`/`<|im_end|>` "
        "(ids 1, 2) frame chat turns. Generation stops at ids 0 and 2.",
        "- Default sampling (generation_config.json): "
        + ", ".join(f"{k} {v}" for k, v in sampling.items()) + ".",
        "",
        "## Training",
        "",
        f"    {m['command']}",
        "",
        f"On {m['device']} (torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}): "
        f"{m['steps']} steps of {shape['batch_size']} x {shape['seq_len']} tokens, {m['tokens_seen']:,} tokens "
        f"({m['epochs']:.1f} epochs), AdamW (peak LR {m['lr']}, {m['warmup_steps']} warmup steps, cosine decay, "
        f"weight decay {m['weight_decay']}), autocast {m['autocast']}, seed {m['seed']}. Stopped by: {m['stop_reason']}; "
        f"the weights of step {m['best_step']} (best held-out loss) were kept. Data preparation "
        f"{m['prep_s']:.0f} s, training {m['train_s']:.0f} s, {m['wall_s']:.0f} s in all.",
        "",
        "| step | train loss | held-out loss | seconds |",
        "|---|---|---|---|",
        history,
        "",
        "## Held-out results",
        "",
        f"On the {m['heldout_tokens']:,} held-out tokens, with the saved bf16 weights computed in float32: "
        f"loss {m['heldout_loss']:.3f} nats/token, **perplexity {m['heldout_ppl']:.2f}**, "
        f"{m['heldout_bits_per_byte']:.3f} bits per byte of text.",
        "",
    ]
    if m.get("samples"):
        lines += ["## Sample generations", "",
                  f"From {m['samples_from']}, default sampling, seed {SAMPLE_SEED}, at most "
                  f"{SAMPLE_MAX_TOKENS} tokens; not cherry-picked.", ""]
        for s in m["samples"]:
            label = "Prompt" if s["kind"] == "text" else "User (chat)"
            lines += [f"**{label}:** {s['prompt']}", "", "```", s["completion"].strip(), "```", ""]
    lines += ["## License and notices", "",
              "The training texts are in the public domain or under permissive licenses (table above); the "
              "weights and tokenizer are distributed under the same terms as llmcore (Apache-2.0).", "",
              _NOTICES, ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmcore.models.demo_card", description=__doc__.split("\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--no-samples", action="store_true", help="keep the samples already in metrics.json")
    args = p.parse_args(argv)
    print(write_model_card(args.model_dir, samples=not args.no_samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
