"""Tensor parallelism: one model sharded over 2 GPUs with LLM(..., tensor_parallel_size=2).

    python examples/tensor_parallel.py [--model PATH] [--device auto|cpu|cuda] [--max-tokens N]

Skips (exit code 0, with the reason) when fewer than 2 GPUs are visible, and when the installed
llmcore cannot run tensor parallelism yet: it is not implemented in the engine so far, and LLM
refuses tensor_parallel_size != 1 with a ValueError.
"""

import argparse
import sys

import llmcore
from llmcore import LLM, SamplingParams

TP_SIZE = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF checkpoint directory (default: the demo model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="tensor parallelism runs on GPUs only: 'cpu' skips")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    num_gpus = llmcore._C.cuda_device_count()  # 0 when the CUDA backend is not built
    if args.device == "cpu" or num_gpus < TP_SIZE:
        where = "--device cpu was given" if args.device == "cpu" else f"{num_gpus} GPU(s) visible"
        print(f"skipped: tensor parallelism needs {TP_SIZE} GPUs; {where}")
        return 0

    try:
        llm = LLM(model=args.model, device="cuda", tensor_parallel_size=TP_SIZE)
    except ValueError as e:
        if "tensor_parallel_size" not in str(e):
            raise
        print(f"skipped: this llmcore cannot run tensor parallelism yet: {e}")
        return 0

    # From here on it is the ordinary API: the engine shards the weights and all-reduces over NCCL.
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=args.max_tokens, seed=0)
    for output in llm.generate(["Once upon a time", "The sea was calm and"], params):
        print(f"Prompt: {output.prompt!r}\nGenerated: {output.outputs[0].text!r}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
