"""What every benchmark in this folder shares: the device's name, the commit, the exact command,
random prompts, model-config overrides, and the JSON record in benchmarks/results/.

A record is written to benchmarks/results/<name>-<device-slug>-<date>.json (or --output-json) and
holds at least: benchmark, device, device_slug, commit, command, cwd, date, versions, args.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = ROOT / "benchmarks" / "configs"
RESULTS_DIR = ROOT / "benchmarks" / "results"
DEFAULT_MODEL = CONFIGS_DIR / "llama-3-8b"
# The configs in configs/ carry no tokenizer; the engine needs one to start, and the benchmarks feed
# token ids (never text) with detokenize=False, so this small sentencepiece model never sees an id
# beyond its own vocabulary.
DEFAULT_TOKENIZER = ROOT / "python" / "llmcore" / "models" / "tiny-random"


def import_llmcore():
    """Imports llmcore: the installed package, else the checkout's python/ folder."""
    try:
        import llmcore
    except ImportError:
        sys.path.insert(0, str(ROOT / "python"))
        import llmcore
    return llmcore


# -- where and what ran ----------------------------------------------------------------------
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_name() -> Optional[str]:
    """The first visible GPU's name through torch, else nvidia-smi; None without a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        if out.returncode == 0 and names:
            return names[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def device_name(device: str) -> str:
    """The name results are filed under: the GPU's for "cuda", the CPU model's for "cpu"."""
    if device == "cuda":
        return gpu_name() or "unknown GPU"
    return cpu_name()


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (for file names)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown"


def git_commit() -> str:
    """The commit the results belong to: $LLMCORE_COMMIT when set (the lent GPU machines receive
    the working tree without git), else HEAD's hash with '-dirty' when tracked files differ from
    it, else HEAD read from .git by hand (no dirty check possible), else 'unknown'."""
    if os.environ.get("LLMCORE_COMMIT"):
        return os.environ["LLMCORE_COMMIT"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        pass
    return _head_from_git_dir(ROOT / ".git") or "unknown"


def _head_from_git_dir(git_dir: Path) -> Optional[str]:
    """HEAD's hash from .git/HEAD, the loose ref or packed-refs; None when they are missing."""
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None
    if not head.startswith("ref: "):
        return head or None
    ref = head[len("ref: "):]
    try:
        return (git_dir / ref).read_text().strip() + "-unverified"
    except OSError:
        pass
    try:
        for line in (git_dir / "packed-refs").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0] + "-unverified"
    except OSError:
        pass
    return None


def command_line() -> str:
    """The exact command, interpreter and its options included, quoted for a shell."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv
    return shlex.join(argv)


def versions(*modules: str) -> Dict[str, Optional[str]]:
    """{'python': ..., module: its __version__ (None when it is not installed)}."""
    found: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in modules:
        try:
            mod = __import__(name)
            found[name] = str(getattr(mod, "__version__", "unknown"))
        except ImportError:
            found[name] = None
    if "torch" in modules and found.get("torch"):
        import torch

        found["torch_cuda"] = torch.version.cuda
    return found


def new_record(benchmark: str, device: str, args: argparse.Namespace, *modules: str) -> Dict[str, Any]:
    """The fields every result file starts with."""
    name = device_name(device)
    return {
        "benchmark": benchmark,
        "device": name,
        "device_slug": device_slug(name),
        "device_type": device,
        "commit": git_commit(),
        "command": command_line(),
        "cwd": os.getcwd(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "versions": versions(*modules),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }


def write_record(record: Dict[str, Any], output_json: Optional[str] = None,
                 results_dir: Optional[Path] = None) -> Path:
    """Writes the record to output_json, or to <benchmark>-<device-slug>-<date>.json in results_dir
    (default: results/)."""
    if output_json:
        path = Path(output_json)
    else:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = Path(results_dir or RESULTS_DIR) / f"{record['benchmark']}-{record['device_slug']}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


# -- model configs ---------------------------------------------------------------------------
def read_config(model_dir: Path) -> Dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (--model takes a directory with a config.json)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def parse_overrides(text: Optional[str]) -> Dict[str, Any]:
    """--hf-overrides '{"num_hidden_layers": 2}' -> dict (vLLM's flag of the same name)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: --hf-overrides must be a JSON object: {e}")
    if not isinstance(value, dict):
        raise SystemExit(f"error: --hf-overrides must be a JSON object; got {text!r}")
    return value


def model_with_overrides(model_dir: Path, overrides: Dict[str, Any], load_format: str) -> Path:
    """A temporary copy of model_dir's config.json with `overrides` applied (a dummy-weight model
    needs nothing else); model_dir itself when there are none."""
    if not overrides:
        return Path(model_dir)
    if load_format != "dummy":
        raise SystemExit("error: --hf-overrides changes the model's shapes, so it needs --load-format dummy")
    config = read_config(model_dir)
    config.update(overrides)
    out = Path(tempfile.mkdtemp(prefix="llmcore-bench-config-"))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def num_parameters(config: Dict[str, Any]) -> int:
    """Weights of a Llama/Mistral/Qwen2-shaped decoder described by a HF config.json."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    layers = config["num_hidden_layers"]
    q, kv = heads * head_dim, kv_heads * head_dim
    per_layer = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * inter + 2 * hidden
    if config.get("model_type") == "qwen2" or config.get("attention_bias"):
        per_layer += q + 2 * kv  # q/k/v biases
    embed = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return embed + layers * per_layer + hidden


# -- workloads and statistics -----------------------------------------------------------------
def random_token_ids(num_prompts: int, input_len: int, vocab_size: int, seed: int) -> List[List[int]]:
    """num_prompts lists of input_len ids drawn uniformly from [0, vocab_size), as vLLM's random
    dataset does; the same seed gives the same prompts in every benchmark."""
    if num_prompts < 1 or input_len < 1:
        raise SystemExit(f"error: need at least one prompt of at least one token; got "
                         f"{num_prompts} prompts of {input_len}")
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(input_len)] for _ in range(num_prompts)]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def parse_int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}")
    return values


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


# -- llmcore engine arguments (shared by throughput.py and latency.py) ---------------------------
def add_engine_args(parser: argparse.ArgumentParser, *, default_max_num_seqs: Optional[int] = None) -> None:
    """vLLM's engine flags that llmcore.LLM takes. Unset (None) flags keep the engine's default."""
    g = parser.add_argument_group("engine (llmcore.LLM arguments)")
    g.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                   help="a checkpoint or config directory (default: benchmarks/configs/llama-3-8b)")
    g.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER,
                   help="tokenizer directory (default: the built-in tiny-random one; prompts are token ids)")
    g.add_argument("--hf-overrides", default=None,
                   help='JSON object merged into config.json, e.g. \'{"num_hidden_layers": 2}\' (dummy weights only)')
    g.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    g.add_argument("--dtype", default="auto",
                   help="auto (the config's torch_dtype), bfloat16, float16 or float32")
    g.add_argument("--load-format", default="dummy", choices=["dummy", "auto"],
                   help="dummy: random weights of the config's shapes (default)")
    g.add_argument("--tensor-parallel-size", "-tp", type=positive_int, default=1)
    g.add_argument("--max-model-len", type=positive_int, default=None)
    g.add_argument("--max-num-seqs", type=positive_int, default=default_max_num_seqs)
    g.add_argument("--max-num-batched-tokens", type=positive_int, default=None)
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--block-size", type=positive_int, default=None)
    g.add_argument("--num-gpu-blocks-override", type=positive_int, default=None)
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=False,
                   help="off by default: random prompts share no prefix, so the cache could only add "
                        "hashing work (vLLM leaves it on; with random prompts its hit rate is 0 too)")
    g.add_argument("--enable-chunked-prefill", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--engine-seed", type=int, default=None, help="the engine's sampling seed")


def resolve_device(device: str, llmcore_module) -> str:
    """What LLM(device="auto") picks: cuda when the extension has the CUDA backend and sees a GPU."""
    if device != "auto":
        return device
    count = getattr(llmcore_module._C, "cuda_device_count", None)
    return "cuda" if count is not None and count() > 0 else "cpu"


def tp_label(args: argparse.Namespace) -> str:
    """', TP 2' for the summary lines when the model is sharded; '' at tensor_parallel_size 1."""
    return f", TP {args.tensor_parallel_size}" if args.tensor_parallel_size != 1 else ""


def make_llm(args: argparse.Namespace, model_dir: Path, device: str):
    """llmcore.LLM from the engine flags, passing only those that were set."""
    llmcore = import_llmcore()
    kwargs: Dict[str, Any] = dict(
        tokenizer=str(args.tokenizer), device=device, dtype=args.dtype, load_format=args.load_format,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=args.enable_prefix_caching,
    )
    if args.tensor_parallel_size != 1:
        kwargs["tensor_parallel_size"] = args.tensor_parallel_size
    optional = dict(max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                    max_num_batched_tokens=args.max_num_batched_tokens, block_size=args.block_size,
                    num_gpu_blocks_override=args.num_gpu_blocks_override,
                    enable_chunked_prefill=args.enable_chunked_prefill, seed=args.engine_seed)
    kwargs.update({k: v for k, v in optional.items() if v is not None})
    return llmcore.LLM(str(model_dir), **kwargs), kwargs
