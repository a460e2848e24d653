"""The official `openai` client against llmcore's OpenAI-compatible server: list the models, a
chat completion, a streamed chat completion and a text completion.

    python -m llmcore.server                  # in another terminal: serves the demo model
    python examples/openai_client.py [--base-url http://127.0.0.1:8000/v1]

or, in one command, let the script start (and stop) the server itself:

    python examples/openai_client.py --launch [--device auto|cpu|cuda]

Needs `pip install openai`. Sampling values a request leaves unset (temperature, top_p, ...) take
the model's generation_config.json defaults, as with vLLM; a seed makes a reply reproducible.
"""

import argparse
import contextlib
import os

from openai import OpenAI

from launch_server import launched_server


def run(client: OpenAI, max_tokens: int) -> None:
    # 1. The served models (the demo model is served as 'demo').
    models = [m.id for m in client.models.list().data]
    print(f"Models: {models}")
    model = models[0]

    # 2. A chat completion: the server renders the messages with the model's chat template.
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Give me a quotation about love."},
    ]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, seed=0)
    print(f"Chat reply: {chat.choices[0].message.content!r}")

    # 3. The same, streamed: each chunk carries the new text in choices[0].delta.content.
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Give me a quotation about time."}],
        max_tokens=max_tokens, seed=0, stream=True)
    print("Streamed chat reply: ", end="", flush=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    # 4. A plain text completion of a prompt.
    prompt = "Once upon a time"
    completion = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, seed=0)
    print(f"Completion: {prompt!r} -> {completion.choices[0].text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server's /v1 URL")
    parser.add_argument("--api-key", default=os.environ.get("LLMCORE_API_KEY", "EMPTY"),
                        help="the server's --api-key, if it has one (default: $LLMCORE_API_KEY)")
    parser.add_argument("--launch", action="store_true",
                        help="start `python -m llmcore.server` on the --base-url's port, stop it at the end")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="the launched server's device")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    root_url = args.base_url.rstrip("/").removesuffix("/v1")
    server = launched_server(root_url, device=args.device) if args.launch else contextlib.nullcontext()
    with server:
        run(OpenAI(base_url=args.base_url, api_key=args.api_key), args.max_tokens)


if __name__ == "__main__":
    main()
