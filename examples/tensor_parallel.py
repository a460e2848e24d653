"""Tensor parallelism: one model sharded over 2 ranks with LLM(..., tensor_parallel_size=2).

    python examples/tensor_parallel.py [--model PATH] [--device auto|cpu|cuda] [--max-tokens N]

With --device auto (the default) the ranks are GPUs 0 and 1 joined by NCCL when 2 GPUs are
visible; otherwise (or with --device cpu) the same sharded engine runs as 2 CPU ranks, threads
joined through shared memory, so the example runs anywhere. Decoding is greedy: the text is the
unsharded model's.
"""

import argparse
import sys

import llmcore
from llmcore import LLM, SamplingParams

TP_SIZE = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF checkpoint directory (default: the demo model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    device = args.device
    if device == "auto":
        device = "cuda" if llmcore._C.cuda_device_count() >= TP_SIZE else "cpu"
    # The engine shards the weights (Megatron layout) and runs one worker thread per rank.
    llm = LLM(model=args.model, device=device, tensor_parallel_size=TP_SIZE)
    print(f"{TP_SIZE} ranks on {device}")
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
    for output in llm.generate(["Once upon a time", "The sea was calm and"], params, use_tqdm=False):
        print(f"Prompt: {output.prompt!r}\nGenerated: {output.outputs[0].text!r}")
    llm.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
