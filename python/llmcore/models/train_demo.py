"""Trains the built-in demo model from scratch: a small Llama with its own byte-level BPE
tokenizer, on the English text of demo_corpus (Debian packages), on one GPU in under 10 minutes.

    python -m llmcore.models.train_demo --debs .carry/demo-debs --out /tmp/demo --device cuda

or, on a machine where llmcore's extension is not built (it needs only torch, transformers,
tokenizers and numpy), the same file as a script:

    python python/llmcore/models/train_demo.py --debs .carry/demo-debs --out /tmp/demo --device cuda

Steps, all seeded: build the corpus (train / held-out split by document hash) -> train the
tokenizer on the train split -> pack each split into one token stream (every document starts
with <|endoftext|>) -> train LlamaForCausalLM on random windows of --seq-len tokens (AdamW,
linear warmup then cosine decay, bf16 autocast on the GPU) with a held-out evaluation every
--eval-every steps, keeping the best weights -> save the HF checkpoint (bf16 safetensors,
config.json, generation_config.json, tokenizer.json, tokenizer_config.json with the chat
template), metrics.json and the model card README.md (demo_card.py).

Without --max-steps the number of steps comes from the time budget: the first steps are timed
and the schedule is sized to end by --time-limit-s (less a reserve for evaluation and saving).
--time-limit-s is also a hard guard: training stops there and the best weights so far are
still evaluated and saved. --text-dir replaces the .deb files with plain text (tests).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

if __package__:
    from . import demo_card, demo_corpus
else:  # run as a script: no import of the llmcore package, whose native extension may not be built here
    import demo_card
    import demo_corpus

# Model and batch shapes. "demo" is the shipped model: 13.4M parameters, 26.7 MB in bf16;
# head_dim 64 (the CUDA attention kernels support 64 and 128). "tiny" is for tests on a CPU.
PRESETS: Dict[str, Dict[str, int]] = {
    "demo": dict(vocab_size=6144, hidden_size=384, intermediate_size=1024, num_hidden_layers=7,
                 num_attention_heads=6, num_key_value_heads=2, seq_len=512, batch_size=64),
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, seq_len=64, batch_size=8),
}
MAX_POSITION_EMBEDDINGS = 1024
# Default sampling written to generation_config.json (LLM() and the server use it when a
# request gives none): a little below temperature 1 and a mild repetition penalty, which keep a
# model this small from looping without making its text incoherent.
GENERATION_DEFAULTS = dict(temperature=0.8, top_p=0.95, repetition_penalty=1.1)
RESERVE_S = 45.0  # of --time-limit-s kept for the final evaluation, saving and the model card


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmcore.models.train_demo", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--debs", type=Path, help="directory of the .deb files (demo_corpus docstring)")
    src.add_argument("--text-dir", type=Path, help="plain *.txt / *.fortunes files instead of .debs")
    p.add_argument("--out", type=Path, required=True, help="output checkpoint directory")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    p.add_argument("--max-steps", type=int, default=None,
                   help="default: what --max-epochs gives, or fewer if --time-limit-s allows fewer")
    p.add_argument("--max-epochs", type=float, default=8.0,
                   help="passes over the train tokens the LR schedule is sized for (the text is small: "
                        "more passes overfit; a 30-pass schedule was best at pass 4, before its LR decayed)")
    p.add_argument("--chat-repeat", type=int, default=3,
                   help="copies of each train chat example in the train stream (the chats teach the "
                        "chat template's turn-taking and staying on the asked topic; they are short)")
    p.add_argument("--time-limit-s", type=float, default=480.0, help="hard wall-clock limit of the whole run")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the preset's)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the preset's)")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary incl. special tokens")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final LR as a fraction of --lr")
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--patience", type=int, default=6,
                   help="stop after this many evaluations without a better held-out loss (0: never)")
    p.add_argument("--heldout-permille", type=int, default=20, help="share of documents held out, per mille")
    p.add_argument("--eval-tokens", type=int, default=None,
                   help="evaluate on the first N held-out tokens only (default: all; for CPU runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-card", action="store_true", help="skip the sample generations of the model card")
    return p


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Tokenizer

def _strip_special(text: str) -> str:
    for token in demo_corpus.SPECIAL_TOKENS:
        text = text.replace(token, "\n")
    return text


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """Byte-level BPE (Llama-3's split regex, no normalizer) with the special tokens at ids
    0.. and a post-processor that starts every encoding with <|endoftext|> (the BOS)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(demo_corpus.SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((_strip_special(t) for t in texts), trainer, length=len(texts))
    bos = demo_corpus.BOS_TOKEN
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tok.token_to_id(bos))])])
    return tok


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def save_tokenizer(tok, out: Path) -> None:
    bos = demo_corpus.BOS_TOKEN
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": bos,
              "pad_token": bos, "unk_token": None, "add_bos_token": True, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "model_max_length": MAX_POSITION_EMBEDDINGS,
              "chat_template": demo_corpus.CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": bos, "eos_token": bos, "pad_token": bos}, indent=2) + "\n")


def encode_stream(tok, texts: Sequence[str]):
    """One int32 array: every text's ids (each starts with the BOS), back to back."""
    import numpy as np
    ids = [e.ids for e in tok.encode_batch(list(texts))]
    return np.fromiter((i for seq in ids for i in seq), dtype=np.int32, count=sum(map(len, ids)))


# ---------------------------------------------------------------------------------------------
# Model

def make_model(shape: Dict[str, int], vocab_size: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    ids = {t: i for i, t in enumerate(demo_corpus.SPECIAL_TOKENS)}
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"], num_key_value_heads=shape["num_key_value_heads"],
        head_dim=shape["hidden_size"] // shape["num_attention_heads"],
        max_position_embeddings=MAX_POSITION_EMBEDDINGS, rms_norm_eps=1e-5, rope_theta=10000.0,
        hidden_act="silu", tie_word_embeddings=True, initializer_range=0.02,
        bos_token_id=ids[demo_corpus.BOS_TOKEN],
        eos_token_id=[ids[demo_corpus.BOS_TOKEN], ids[demo_corpus.IM_END]],
        pad_token_id=ids[demo_corpus.BOS_TOKEN])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup to `peak`, then cosine decay to peak * min_ratio at step `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def evaluate(model, stream, seq_len: int, device: str, batch_size: int = 32, autocast: bool = True) -> float:
    """Mean next-token loss (nats) over the stream cut into consecutive windows of seq_len + 1
    tokens (each window's first token is context only); bf16 autocast on a GPU unless told not."""
    import torch
    n = (len(stream) - 1) // seq_len
    if n == 0:
        raise ValueError(f"the held-out stream ({len(stream)} tokens) is shorter than one sequence")
    data = torch.as_tensor(stream[:n * seq_len + 1], dtype=torch.long)
    windows = torch.stack([data[i * seq_len:(i + 1) * seq_len + 1] for i in range(n)])
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad(), _autocast(device if autocast else "cpu"):
        for i in range(0, n, batch_size):
            batch = windows[i:i + batch_size].to(device)
            logits = model(input_ids=batch[:, :-1]).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     batch[:, 1:].reshape(-1), reduction="sum")
            total += loss.item()
            count += batch[:, 1:].numel()
    model.train()
    return total / count


def _autocast(device: str):
    import contextlib
    import torch
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# The run

def run(args: argparse.Namespace) -> Dict[str, object]:
    import torch
    import transformers

    t0 = time.monotonic()
    _seed_everything(args.seed)
    shape = dict(PRESETS[args.preset])
    for key in ("batch_size", "seq_len", "vocab_size"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    seq_len, batch_size = shape["seq_len"], shape["batch_size"]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    corpus = demo_corpus.build_corpus(debs_dir=args.debs, text_dir=args.text_dir,
                                      heldout_permille=args.heldout_permille, seed=args.seed)
    if args.chat_repeat < 1:
        raise ValueError(f"--chat-repeat must be >= 1; got {args.chat_repeat}")
    train_texts = corpus.train + corpus.train_chats * args.chat_repeat
    heldout_texts = corpus.heldout + corpus.heldout_chats
    if not heldout_texts:
        raise ValueError("no held-out documents: add text or raise --heldout-permille")
    tok = train_tokenizer(corpus.train + corpus.train_chats, shape["vocab_size"])
    vocab_size = tok.get_vocab_size()
    rng = random.Random(args.seed)
    rng.shuffle(train_texts)
    train_stream = encode_stream(tok, train_texts)
    heldout_stream = encode_stream(tok, heldout_texts)
    heldout_bytes = sum(len(t.encode("utf-8")) for t in heldout_texts)
    if args.eval_tokens is not None and args.eval_tokens < len(heldout_stream):
        heldout_bytes = heldout_bytes * args.eval_tokens / len(heldout_stream)
        heldout_stream = heldout_stream[:args.eval_tokens]
    if len(train_stream) <= seq_len + 1:
        raise ValueError(f"the train stream ({len(train_stream)} tokens) is shorter than one sequence")
    prep_s = time.monotonic() - t0
    print(f"[train_demo] corpus {corpus.summary()}; vocab {vocab_size}; train {len(train_stream):,} tokens, "
          f"held-out {len(heldout_stream):,} tokens; prepared in {prep_s:.1f}s", flush=True)

    device = args.device
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = make_model(shape, vocab_size, args.seed).to(device)
    num_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, **({"fused": True} if device.startswith("cuda") else {}))
    step_fn = torch.compile(model) if args.compile else model

    data = torch.as_tensor(train_stream, dtype=torch.long, device=device)
    offsets = torch.arange(seq_len + 1, device=device)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    deadline = t0 + args.time_limit_s - RESERVE_S
    tokens_per_step = batch_size * seq_len
    total_steps = max(1, math.ceil(args.max_epochs * len(train_stream) / tokens_per_step))
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    # Without --max-steps, time 25 steps (after 5 of warm-up and compilation) and shorten the
    # schedule if it would not end before the deadline.
    calibrate_at = 30 if args.max_steps is None and total_steps > 30 else None
    best = {"loss": float("inf"), "step": 0, "state": None}
    history: List[Dict[str, float]] = []
    tokens_seen, step, loss_ema, stop_reason, bad_evals = 0, 0, None, "schedule_end", 0
    train_start = time.monotonic()
    calibrate_start = None
    model.train()
    while step < total_steps:
        if time.monotonic() > deadline:
            stop_reason = "time_limit"
            break
        lr = lr_at(step, total_steps, args.lr, args.warmup_steps, args.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train_stream) - seq_len - 1, (batch_size,), generator=gen).to(device)
        batch = data[starts[:, None] + offsets]
        with _autocast(device):
            logits = step_fn(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab_size), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        tokens_seen += tokens_per_step
        if step % 10 == 0 or step == 1:
            value = loss.item()
            loss_ema = value if loss_ema is None else 0.9 * loss_ema + 0.1 * value
        if calibrate_at is not None:
            if step == 5:
                _sync(device)
                calibrate_start = time.monotonic()
            elif step == calibrate_at:
                _sync(device)
                per_step = (time.monotonic() - calibrate_start) / (calibrate_at - 5)
                fits = step + max(1, int((deadline - time.monotonic()) / per_step * 0.97))
                total_steps = min(total_steps, fits)
                print(f"[train_demo] {per_step * 1000:.1f} ms/step -> {total_steps} steps", flush=True)
        last = step >= total_steps
        if step % args.eval_every == 0 or last:
            val = evaluate(model, heldout_stream, seq_len, device)
            history.append({"step": step, "heldout_loss": val, "train_loss": loss_ema,
                            "elapsed_s": time.monotonic() - t0})
            print(f"[train_demo] step {step}/{total_steps} lr {lr:.2e} train {loss_ema:.3f} held-out {val:.3f} "
                  f"(ppl {math.exp(val):.2f}) {time.monotonic() - t0:.0f}s", flush=True)
            if val < best["loss"]:
                best = {"loss": val, "step": step,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
                bad_evals = 0
            else:
                bad_evals += 1
                if args.patience and bad_evals >= args.patience:
                    stop_reason = "early_stop"
                    break
    train_s = time.monotonic() - train_start
    if best["state"] is None or (history and history[-1]["step"] != step):
        val = evaluate(model, heldout_stream, seq_len, device)
        history.append({"step": step, "heldout_loss": val, "train_loss": loss_ema, "elapsed_s": time.monotonic() - t0})
        if val < best["loss"]:
            best = {"loss": val, "step": step, "state": None}
    if best["state"] is not None:
        model.load_state_dict(best["state"])

    # The held-out numbers of the weights as saved (rounded to bf16), computed in float32.
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(torch.bfloat16).float())
    final_loss = evaluate(model, heldout_stream, seq_len, device, autocast=False)
    # Save: bf16 weights, the tokenizer, the sampling defaults.
    model = model.to("cpu", dtype=torch.bfloat16)
    model.generation_config = _generation_config(model.config)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tok, out)
    metrics = {
        "preset": args.preset, "shape": shape, "num_parameters": num_params, "vocab_size": vocab_size,
        "steps": step, "total_steps_planned": total_steps, "best_step": best["step"], "stop_reason": stop_reason,
        "tokens_seen": tokens_seen, "train_tokens": int(len(train_stream)), "heldout_tokens": int(len(heldout_stream)),
        "epochs": tokens_seen / len(train_stream), "train_loss": loss_ema,
        "heldout_loss": final_loss, "heldout_ppl": math.exp(final_loss),
        # Per-token loss spread over the UTF-8 bytes of the held-out text (tokenizer-independent).
        "heldout_bits_per_byte": final_loss * len(heldout_stream) / math.log(2) / heldout_bytes,
        "heldout_loss_during_training": best["loss"], "history": history,
        "prep_s": prep_s, "train_s": train_s, "wall_s": time.monotonic() - t0,
        "device": _device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "seed": args.seed, "lr": args.lr, "warmup_steps": args.warmup_steps,
        "heldout_permille": args.heldout_permille, "autocast": "bf16" if device.startswith("cuda") else "none (float32)",
        "weight_decay": args.weight_decay, "generation_defaults": GENERATION_DEFAULTS,
        "command": (("python -m llmcore.models.train_demo " if __package__ else "python python/llmcore/models/train_demo.py ")
                    + " ".join(_relative_argv(sys.argv[1:]))),
        "corpus": corpus.summary(), "sources": corpus.stats,
        "model_bytes": (out / "model.safetensors").stat().st_size,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "heldout_words.txt").write_text("\n".join(sorted(set(
        w for t in heldout_texts for w in demo_corpus.words(t)))) + "\n")
    try:
        demo_card.write_model_card(out, samples=not args.no_card)
    except Exception as e:  # the checkpoint is saved; a card without samples still describes it
        print(f"[train_demo] sample generation failed ({type(e).__name__}: {e}); card written without samples",
              flush=True)
        demo_card.write_model_card(out, samples=False)
    metrics = json.loads((out / "metrics.json").read_text())
    for sample in metrics.get("samples", []):
        print(f"[train_demo] sample ({sample['kind']}) {sample['prompt']!r} -> {sample['completion'][:300]!r}")
    print(f"[train_demo] done: {step} steps, {tokens_seen:,} tokens ({metrics['epochs']:.1f} epochs), "
          f"held-out ppl {metrics['heldout_ppl']:.2f} ({metrics['heldout_bits_per_byte']:.3f} bits/byte), "
          f"{metrics['model_bytes'] / 1e6:.1f} MB, {metrics['wall_s']:.0f}s on {metrics['device']} -> {out}", flush=True)
    return metrics


def _generation_config(config):
    from transformers import GenerationConfig
    return GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                            pad_token_id=config.pad_token_id, do_sample=True, **GENERATION_DEFAULTS)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _relative_argv(argv: Sequence[str]) -> List[str]:
    """The command line with paths under the current directory made relative (for the card)."""
    cwd = os.getcwd() + os.sep
    return [a[len(cwd):] if a.startswith(cwd) else a for a in argv]


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
