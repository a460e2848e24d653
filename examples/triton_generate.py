"""Triton's generate endpoints (as TensorRT-LLM's Triton models answer them) with plain HTTP from
the standard library: POST /v2/models/NAME/generate (one JSON response) and
/v2/models/NAME/generate_stream (server-sent events, each with the new text).

    python -m llmcore.server                  # in another terminal: serves the demo model as 'demo'
    python examples/triton_generate.py [--base-url http://127.0.0.1:8000] [--model demo]

or, in one command, let the script start (and stop) the server itself:

    python examples/triton_generate.py --launch [--device auto|cpu|cuda]

As with TensorRT-LLM, decoding is greedy unless the request sets top_k or top_p (with temperature
and seed), and text_output starts with the prompt unless exclude_input_in_output is true.
"""

import argparse
import contextlib
import json
import urllib.error
import urllib.request
from typing import Iterator

from launch_server import launched_server


def post(url: str, body: dict):
    """POSTs body as JSON and returns the open response; an error answer (e.g. 400 for a bad
    parameter, with {"error": message}) raises RuntimeError with the status and the body."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(request)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"HTTP {e.code}: {e.read().decode(errors='replace')}") from None


def generate(base_url: str, model: str, body: dict) -> dict:
    """One generate call: the response's JSON object."""
    with post(f"{base_url}/v2/models/{model}/generate", body) as response:
        return json.load(response)


def generate_stream(base_url: str, model: str, body: dict) -> Iterator[dict]:
    """One generate_stream call: yields each event's JSON object as it arrives."""
    with post(f"{base_url}/v2/models/{model}/generate_stream", body) as response:
        for line in response:  # server-sent events: "data: {...}" lines, separated by blank lines
            if line.startswith(b"data: "):
                event = json.loads(line[len(b"data: "):])
                if "error" in event:
                    raise RuntimeError(event["error"])
                yield event


def run(base_url: str, model: str, max_tokens: int) -> None:
    request = {"text_input": "Once upon a time", "max_tokens": max_tokens}

    result = generate(base_url, model, request)
    print(f"generate: {result['text_output']!r}")

    # Streamed events carry only the new text (never the prompt).
    print("generate_stream: ", end="", flush=True)
    for event in generate_stream(base_url, model, request):
        print(event["text_output"], end="", flush=True)
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the server's root URL")
    parser.add_argument("--model", default="demo", help="the served model name")
    parser.add_argument("--launch", action="store_true",
                        help="start `python -m llmcore.server` on the --base-url's port, stop it at the end")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="the launched server's device")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    base_url = args.base_url.rstrip("/")
    server = launched_server(base_url, device=args.device) if args.launch else contextlib.nullcontext()
    with server:
        run(base_url, args.model, args.max_tokens)


if __name__ == "__main__":
    main()
