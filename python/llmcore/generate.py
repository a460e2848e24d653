"""One-shot generation from the command line:

    python -m llmcore.generate "Once upon a time" [--model PATH] [--max-tokens N] [--stream]

Without --model it runs the package's tiny-random model (random weights: output is not English).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

TINY_RANDOM_MODEL = Path(__file__).parent / "models" / "tiny-random"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmcore.generate", description="Generate a completion.")
    p.add_argument("prompt_text", nargs="?", help="the prompt (or use --prompt)")
    p.add_argument("--prompt", dest="prompt_opt", help="the prompt")
    p.add_argument("--model", help="HuggingFace checkpoint directory (default: the built-in tiny-random model)")
    p.add_argument("--load-format", choices=["auto", "dummy"], default=None,
                   help="'dummy' draws random weights (default: auto; dummy for the built-in model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    prompt = args.prompt_opt if args.prompt_opt is not None else args.prompt_text
    if prompt is None:
        print("error: give a prompt, e.g. python -m llmcore.generate \"Once upon a time\"", file=sys.stderr)
        return 2
    from . import LLM, SamplingParams

    model = args.model or str(TINY_RANDOM_MODEL)
    load_format = args.load_format or ("auto" if args.model else "dummy")
    try:
        llm = LLM(model, device=args.device, max_model_len=args.max_model_len, load_format=load_format)
        params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                max_tokens=args.max_tokens, seed=args.seed)
        if args.stream:
            printed = 0
            final = None
            for out in llm.generate_stream(prompt, params):
                text = out.outputs[0].text
                sys.stdout.write(text[printed:])
                sys.stdout.flush()
                printed = len(text)
                final = out
            sys.stdout.write("\n")
            reason = final.outputs[0].finish_reason if final else None
        else:
            out = llm.generate(prompt, params, use_tqdm=False)[0]
            print(prompt + out.outputs[0].text)
            reason = out.outputs[0].finish_reason
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[finish_reason: {reason}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
