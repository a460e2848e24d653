"""python -m llmcore.server --model PATH [--host 127.0.0.1] [--port 8000] ...

Flags are named as `vllm serve`'s. Without --model it serves the package's demo model
(llmcore/models/demo, served as 'demo'), so the server can be tried with nothing downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from ..models import DEMO_MODEL, default_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llmcore.server", description="OpenAI-compatible server.")
    p.add_argument("model_tag", nargs="?", help="checkpoint directory (same as --model)")
    p.add_argument("--model", help="HuggingFace checkpoint directory (default: the built-in demo model)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory, for checkpoints without one (default: the model's)")
    p.add_argument("--served-model-name", nargs="+", default=None,
                   help="name(s) clients use for the model; the first is reported (default: --model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("LLMCORE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $LLMCORE_API_KEY; none)")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=256,
                   help="sequences per step at most; <= 16 on a GPU also turns on the engine's decode GEMM "
                        "(lower per-token latency, see benchmarks/README.md)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto",
                   help="'dummy' draws random weights of the checkpoint's shapes")
    p.add_argument("--block-size", type=int, default=None, help="KV-cache block size in tokens: 8, 16, 32, 64 or 128 (default: 16)")
    p.add_argument("--num-gpu-blocks-override", type=int, default=None,
                   help="number of KV-cache blocks (default: sized from free memory)")
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="reuse the KV cache of shared prompt prefixes (default: on)")
    p.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=None,
                   help="split long prompts over steps and batch them with decodes (default: on); off: "
                        "whole prompts run in steps of their own ahead of the decodes (lower time to first "
                        "token while few requests run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                   help="ranks to shard the model over: GPUs 0..N-1 (or CPU ranks with --device cpu)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds SIGTERM/SIGINT waits for requests in flight (new ones get 503) before "
                        "aborting what remains and exiting (default: 30)")
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


def engine_args(args: argparse.Namespace) -> Tuple[str, Dict[str, Any]]:
    """(model path, llmcore.LLM keyword arguments) from parsed server flags. Flags left unset keep
    LLM's defaults. benchmarks/serving.py builds its offline comparison engine from the same."""
    model = args.model or args.model_tag
    kwargs: Dict[str, Any] = dict(
        tokenizer=args.tokenizer, tensor_parallel_size=args.tensor_parallel_size, device=args.device,
        dtype=args.dtype, max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        gpu_memory_utilization=args.gpu_memory_utilization, seed=args.seed,
        load_format=args.load_format or "auto")
    optional = dict(block_size=args.block_size, num_gpu_blocks_override=args.num_gpu_blocks_override,
                    enable_prefix_caching=args.enable_prefix_caching,
                    enable_chunked_prefill=args.enable_chunked_prefill)
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return model or str(default_model()), kwargs


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    from .. import LLM
    from .app import create_app
    from .lifecycle import LifecycleServer

    model, llm_kwargs = engine_args(args)
    try:
        chat_template = read_chat_template(args.chat_template)
        llm = LLM(model, **llm_kwargs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        app = create_app(llm, served_model_names=args.served_model_name or [args.model or args.model_tag or DEMO_MODEL.name],
                         api_key=args.api_key, chat_template=chat_template, model_path=model,
                         max_num_queued_requests=args.max_num_queued_requests,
                         max_request_body_bytes=args.max_request_body_bytes, allowed_origins=args.allowed_origins,
                         shutdown_timeout=args.shutdown_timeout)
    except ValueError as e:
        llm.shutdown()
        print(f"error: {e}", file=sys.stderr)
        return 2
    lifecycle = app.state.lifecycle
    # The drain (lifecycle.py) decides when to stop; what uvicorn then waits for is already done.
    server = LifecycleServer(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                            timeout_graceful_shutdown=5), lifecycle)
    try:
        server.run()
    finally:
        llm.shutdown()
    return lifecycle.exit_code


if __name__ == "__main__":
    sys.exit(main())
