"""python -m llmcore.server --model PATH [--host 127.0.0.1] [--port 8000] ...

Flags are named as `vllm serve`'s. Without --model it serves the package's tiny-random model
(random weights) so the server can be tried with nothing downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ..generate import TINY_RANDOM_MODEL


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmcore.server", description="OpenAI-compatible server.")
    p.add_argument("model_tag", nargs="?", help="checkpoint directory (same as --model)")
    p.add_argument("--model", help="HuggingFace checkpoint directory (default: the built-in tiny-random model)")
    p.add_argument("--served-model-name", nargs="+", default=None,
                   help="name(s) clients use for the model; the first is reported (default: --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("LLMCORE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $LLMCORE_API_KEY; none)")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--load-format", choices=["auto", "dummy"], default=None,
                   help="'dummy' draws random weights (default: auto; dummy for the built-in model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat-template", default=None,
                   help="a Jinja chat template, or the path of a file holding one (default: the model's)")
    p.add_argument("--max-num-queued-requests", type=int, default=None,
                   help="engine requests in flight beyond which new calls get 503 + Retry-After (default: no limit)")
    p.add_argument("--max-request-body-bytes", type=int, default=16 * 1024 * 1024,
                   help="request bodies over this many bytes get 413 (default: 16 MiB)")
    p.add_argument("--allowed-origins", nargs="+", default=None,
                   help="origins allowed by CORS ('*' for any); no CORS headers without it")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def read_chat_template(value: Optional[str]) -> Optional[str]:
    """--chat-template: a file's contents when it names a file, else the template itself."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if "{" not in value:
        raise ValueError(f"--chat-template {value!r} is neither a file nor a Jinja template")
    return value


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    from .. import LLM
    from .app import create_app

    model = args.model or args.model_tag
    load_format = args.load_format or ("auto" if model else "dummy")
    model = model or str(TINY_RANDOM_MODEL)
    try:
        chat_template = read_chat_template(args.chat_template)
        llm = LLM(model, device=args.device, dtype=args.dtype, max_model_len=args.max_model_len,
                  max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                  gpu_memory_utilization=args.gpu_memory_utilization, seed=args.seed, load_format=load_format)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        app = create_app(llm, served_model_names=args.served_model_name or [args.model or args.model_tag or TINY_RANDOM_MODEL.name],
                         api_key=args.api_key, chat_template=chat_template, model_path=model,
                         max_num_queued_requests=args.max_num_queued_requests,
                         max_request_body_bytes=args.max_request_body_bytes, allowed_origins=args.allowed_origins)
    except ValueError as e:
        llm.shutdown()
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    finally:
        llm.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
