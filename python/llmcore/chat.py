"""Terminal chat, as FastChat's CLI and `ollama run`:

    python -m llmcore.chat [--model PATH] [--system TEXT] [--max-tokens N] [--temperature T] ...

Each line typed at the `>>> ` prompt becomes a user message; the whole conversation is rendered
with the model's chat template and the reply streams as it is generated, then joins the history.
Commands: /clear (forget the conversation, keep the system prompt), /exit (or Ctrl-D) to quit.
Ctrl-C while a reply streams stops it (the request is aborted) and returns to the prompt; the
stopped turn is dropped from the history. Ctrl-C at the prompt quits.

Without --model it runs the package's demo model (llmcore/models/demo), whose tokenizer_config.json
holds a ChatML template.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, TextIO

from .models import default_model

PROMPT = ">>> "
EXIT_USAGE = 2  # argparse's code for bad usage; also a model that cannot chat

HELP_TEXT = "commands: /clear (new conversation), /exit (quit; also Ctrl-D), /help. Ctrl-C stops a reply."


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags (vLLM's names where they overlap)."""
    p = argparse.ArgumentParser(prog="python -m llmcore.chat", description="Chat with a model in the terminal.")
    p.add_argument("--model", help="HuggingFace checkpoint directory (default: the built-in demo model)")
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto",
                   help="'dummy' draws random weights of the checkpoint's shapes")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="auto", help="compute dtype (default: the checkpoint's)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="context length in tokens (default: the model's)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="most tokens per reply (default: what the context length leaves)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature; 0 is greedy (default: the model's generation_config, else 1)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass (default: the model's, else 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed of the sampler")
    p.add_argument("--ignore-eos", action="store_true",
                   help="keep generating past the end-of-sequence token (for testing and benchmarks)")
    p.add_argument("--system", default=None, help="a system prompt, the first message of every conversation")
    p.add_argument("--chat-template", default=None,
                   help="a Jinja chat template file, used instead of the model's own")
    return p


def _sampling_params(llm, args: argparse.Namespace):
    """The model's default sampling parameters with the flags applied."""
    from . import SamplingParams

    base = llm.get_default_sampling_params()
    # max_tokens None: each reply may fill the context, as a chat needs (the default 16 would cut it).
    return SamplingParams(
        temperature=base.temperature if args.temperature is None else args.temperature,
        top_p=base.top_p if args.top_p is None else args.top_p,
        top_k=base.top_k, min_p=base.min_p, repetition_penalty=base.repetition_penalty,
        max_tokens=args.max_tokens, seed=args.seed, ignore_eos=args.ignore_eos)


class ChatSession:
    """One conversation: its history and the streaming of each reply to `out`."""

    def __init__(self, llm, params, chat_template: Optional[str], system: Optional[str], out: TextIO) -> None:
        self.llm = llm
        self.params = params
        self.chat_template = chat_template
        self.system = system
        self.out = out
        self.history: List[Dict[str, Any]] = []
        self.clear()

    def clear(self) -> None:
        """Forgets the conversation; the system prompt stays."""
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def prompt_token_ids(self) -> List[int]:
        """The history rendered with the chat template, opened for the assistant's turn, as ids
        (no BOS/EOS added: the template writes them)."""
        tokenizer = self.llm.get_tokenizer()
        text = tokenizer.apply_chat_template(self.history, chat_template=self.chat_template,
                                             add_generation_prompt=True, tokenize=False)
        return tokenizer.encode(text, add_special_tokens=False)

    def reply(self, user_text: str) -> Optional[str]:
        """Streams the reply to `user_text` and adds both to the history. Returns the reply, or
        None when it was stopped by Ctrl-C (then the turn is dropped from the history).
        ValueError (e.g. the conversation no longer fits the context) also drops the turn."""
        self.history.append({"role": "user", "content": user_text})
        stream = None
        printed = 0
        text = ""
        try:
            stream = self.llm.generate_stream({"prompt_token_ids": self.prompt_token_ids()}, self.params)
            for out in stream:
                text = out.outputs[0].text
                self.out.write(text[printed:])
                self.out.flush()
                printed = len(text)
        except KeyboardInterrupt:
            if stream is not None:
                stream.close()  # aborts the request in the engine (generate_stream's finally)
            self.history.pop()
            self.out.write("\n[reply stopped]\n")
            self.out.flush()
            return None
        except BaseException:
            if stream is not None:
                stream.close()
            self.history.pop()
            raise
        self.out.write("\n")
        self.out.flush()
        self.history.append({"role": "assistant", "content": text})
        return text


def _read_line() -> Optional[str]:
    """One line from the user; None on EOF (Ctrl-D). KeyboardInterrupt propagates."""
    try:
        return input(PROMPT)
    except EOFError:
        return None


def run(session: ChatSession) -> int:
    """The read-reply loop; returns the exit code."""
    while True:
        try:
            line = _read_line()
        except KeyboardInterrupt:  # Ctrl-C at the prompt quits, as in FastChat's CLI
            print()
            return 0
        if line is None:
            print()
            return 0
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit", "/bye"):
            return 0
        if command == "/clear":
            session.clear()
            print("[conversation cleared]")
            continue
        if command in ("/help", "/?"):
            print(HELP_TEXT)
            continue
        try:
            session.reply(line)
        except ValueError as e:
            print(f"\nerror: {e}", file=sys.stderr)


def _load_template_file(path: str) -> str:
    if not os.path.isfile(path):
        raise ValueError(f"--chat-template {path!r} is not a file")
    with open(path, encoding="utf-8") as f:
        return f.read()


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `python -m llmcore.chat`; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        template = _load_template_file(args.chat_template) if args.chat_template else None
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from . import LLM

    model = args.model
    load_format = args.load_format
    try:
        model = model or str(default_model())
        # One conversation at a time: a single sequence slot keeps the CPU KV cache small.
        llm = LLM(model, device=args.device, dtype=args.dtype, max_model_len=args.max_model_len,
                  load_format=load_format, max_num_seqs=1, seed=args.seed or 0)
    except (OSError, ValueError) as e:
        print(f"error: cannot load {model}: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        try:
            llm.get_tokenizer().get_chat_template(template)
        except ValueError as e:
            print(f"error: {model} cannot chat: it has no chat template ({e}). "
                  "Pass one with --chat-template FILE.", file=sys.stderr)
            return EXIT_USAGE
        try:
            params = _sampling_params(llm, args)
        except (TypeError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        if sys.stdin.isatty():
            try:
                import readline  # noqa: F401  line editing and history for input()
            except ImportError:
                pass
        return run(ChatSession(llm, params, template, args.system, sys.stdout))
    finally:
        llm.shutdown()


if __name__ == "__main__":
    sys.exit(main())
