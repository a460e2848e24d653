"""One-shot generation from the command line:

    python -m llmcore.generate "Once upon a time" [--model PATH] [--max-tokens N] [--stream]

Without --model it runs the package's demo model (llmcore/models/demo: a small model trained on
public-domain English). Sampling defaults come from the model's generation_config.json.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .models import TINY_RANDOM_MODEL, default_model  # noqa: F401  (TINY_RANDOM_MODEL: re-exported)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmcore.generate", description="Generate a completion.")
    p.add_argument("prompt_text", nargs="?", help="the prompt (or use --prompt)")
    p.add_argument("--prompt", dest="prompt_opt", help="the prompt")
    p.add_argument("--model", help="HuggingFace checkpoint directory (default: the built-in demo model)")
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto",
                   help="'dummy' draws random weights of the checkpoint's shapes")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=None, help="default: the model's generation_config")
    p.add_argument("--top-p", type=float, default=None, help="default: the model's generation_config")
    p.add_argument("--top-k", type=int, default=None, help="default: the model's generation_config")
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

    try:
        model = args.model or str(default_model())
        llm = LLM(model, device=args.device, max_model_len=args.max_model_len, load_format=args.load_format)
        params = llm.get_default_sampling_params()
        for name, value in (("temperature", args.temperature), ("top_p", args.top_p), ("top_k", args.top_k)):
            if value is not None:
                setattr(params, name, value)
        params.max_tokens = args.max_tokens
        params.seed = args.seed
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
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[finish_reason: {reason}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
