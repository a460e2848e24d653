"""Streaming: print the text as the engine generates it, token by token.

    python examples/streaming.py [--model PATH] [--device auto|cpu|cuda] [--max-tokens N] [--prompt TEXT]

LLM.generate_stream yields cumulative RequestOutput snapshots, so each new piece of text is what
the latest snapshot adds to the previous one. Breaking out of the loop aborts the request.
"""

import argparse

from llmcore import LLM, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF checkpoint directory (default: the demo model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--prompt", default="Once upon a time")
    args = parser.parse_args()

    llm = LLM(model=args.model, device=args.device)
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=0)

    print(args.prompt, end="", flush=True)
    printed = ""  # the text shown so far
    num_pieces = 0
    final = None
    for output in llm.generate_stream(args.prompt, params):
        text = output.outputs[0].text
        delta = text[len(printed):]  # only what this step added
        if delta:
            print(delta, end="", flush=True)
            num_pieces += 1
        printed = text
        final = output  # the last snapshot has finished=True

    completion = final.outputs[0]
    print()
    print(f"[{len(completion.token_ids)} tokens in {num_pieces} pieces, finish_reason={completion.finish_reason}]")


if __name__ == "__main__":
    main()
