"""Offline batch generation: several prompts through LLM.generate in one call.

    python examples/offline_batch.py [--model PATH] [--device auto|cpu|cuda] [--max-tokens N]

Without --model it runs the built-in demo model (a small Llama trained on public-domain English).
"""

import argparse

from llmcore import LLM, SamplingParams

PROMPTS = [
    "Once upon a time",
    "The sea was calm and",
    "It is a truth universally acknowledged",
    "In the beginning",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF checkpoint directory (default: the demo model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    # Loads the checkpoint once; the engine batches all prompts together.
    llm = LLM(model=args.model, device=args.device)

    # vLLM's sampling parameters. A fixed seed makes each completion reproducible.
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=0)

    # One RequestOutput per prompt, in the order of the prompts.
    outputs = llm.generate(PROMPTS, params)
    for output in outputs:
        completion = output.outputs[0]
        print(f"Prompt:    {output.prompt!r}")
        print(f"Generated: {completion.text!r} ({completion.finish_reason})")
        print()


if __name__ == "__main__":
    main()
