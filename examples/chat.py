"""Chat: a system prompt, a question, the model's reply, then a follow-up question.

    python examples/chat.py [--model PATH] [--device auto|cpu|cuda] [--max-tokens N]

LLM.chat renders the conversation with the model's chat template (the demo model's is ChatML)
and generates the assistant's next message. For a multi-turn chat, append the reply to the
conversation and call chat() again: the model sees the whole history every turn.
"""

import argparse

from llmcore import LLM, SamplingParams


def say(conversation: list, role: str, content: str) -> None:
    """Appends a message to the conversation and prints it."""
    conversation.append({"role": role, "content": content})
    print(f"[{role}] {content}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF checkpoint directory (default: the demo model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    llm = LLM(model=args.model, device=args.device)
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=0)

    conversation = []
    say(conversation, "system", "You are a helpful assistant.")
    say(conversation, "user", "Give me a quotation about love.")
    reply = llm.chat(conversation, params, use_tqdm=False)[0].outputs[0].text
    say(conversation, "assistant", reply)

    # The follow-up goes after the reply: the model sees the whole history.
    say(conversation, "user", "Now give me one about time.")
    reply = llm.chat(conversation, params, use_tqdm=False)[0].outputs[0].text
    say(conversation, "assistant", reply)


if __name__ == "__main__":
    main()
