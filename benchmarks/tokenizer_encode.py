"""Single-thread encode throughput of llmcore's C++ tokenizer.json against Hugging Face
`tokenizers`, on the same text in the same run.

    python3 benchmarks/tokenizer_encode.py                      # the test fixtures' tokenizers
    python3 benchmarks/tokenizer_encode.py --dir /path/to/ckpt  # a checkpoint's tokenizer.json

The tokenizers are the Llama-3 / Qwen2 / GPT-2 / sentencepiece-converted shapes that
tests/python/tokenizer_fixtures.py trains (or the tokenizer.json of --dir). The text is generated
by the same module: documents of mixed English, numbers, code and other scripts. Hugging Face is
timed both as a plain encode() loop and as encode_batch() with RAYON_NUM_THREADS=1 and the faster
counts; llmcore as an encode() loop (its encode is single-threaded). Each is warmed up once
(both cache BPE results per word) and the best of --repeats timed passes is reported. The ids
of both are checked to be identical before timing.

Prints one summary line and writes JSON to benchmarks/results/ (device, commit, command; see
benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its thread pool
os.environ["TOKENIZERS_PARALLELISM"] = "false"

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

sys.path.insert(0, str(common.ROOT / "tests" / "python"))

DEFAULT_TOKENIZERS = ["llama3", "qwen2", "gpt2", "sp_legacy"]


def documents(target_bytes: int, doc_lines: int = 24):
    """Documents (prompt-sized, a few kB) of the fixtures' generated text, target_bytes in all."""
    import tokenizer_fixtures as tf

    docs, total, seed = [], 0, 100
    while total < target_bytes:
        lines = tf.training_text(seed=seed, num_lines=2000)
        seed += 1
        for i in range(0, len(lines), doc_lines):
            doc = "".join(lines[i:i + doc_lines])
            docs.append(doc)
            total += len(doc.encode("utf-8"))
            if total >= target_bytes:
                break
    return docs, total


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: fills both tokenizers' word caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_one(name: str, path: Path, docs, num_bytes: int, repeats: int) -> dict:
    from tokenizers import Tokenizer

    _C = common.import_llmcore()._C
    hf = Tokenizer.from_file(str(path / "tokenizer.json"))
    ours = _C.load_tokenizer(str(path))
    for doc in docs:
        if ours.encode(doc, True) != hf.encode(doc, add_special_tokens=True).ids:
            raise SystemExit(f"{name}: llmcore and HF disagree on a document; not timing")

    hf_loop = best_seconds(lambda: [hf.encode(d, add_special_tokens=True) for d in docs], repeats)
    hf_batch = best_seconds(lambda: hf.encode_batch(docs, add_special_tokens=True), repeats)
    llmcore_s = best_seconds(lambda: [ours.encode(d, True) for d in docs], repeats)
    hf_best = min(hf_loop, hf_batch)
    mb = num_bytes / 1e6
    return {
        "tokenizer": name,
        "llmcore_mb_per_s": round(mb / llmcore_s, 3),
        "hf_mb_per_s": round(mb / hf_best, 3),
        "hf_encode_loop_mb_per_s": round(mb / hf_loop, 3),
        "hf_encode_batch_mb_per_s": round(mb / hf_batch, 3),
        "speedup": round(hf_best / llmcore_s, 3),
        "num_tokens": sum(len(e.ids) for e in hf.encode_batch(docs)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizers", default=",".join(DEFAULT_TOKENIZERS),
                        help="fixture tokenizers to build and time (tokenizer_fixtures.BUILDERS)")
    parser.add_argument("--dir", help="time this directory's tokenizer.json instead")
    parser.add_argument("--mb", type=float, default=2.0, help="megabytes of text to encode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-json", help="result file (default: benchmarks/results/...)")
    args = parser.parse_args()

    import tokenizers

    docs, num_bytes = documents(int(args.mb * 1e6))
    results = []
    if args.dir:
        results.append(bench_one(Path(args.dir).name, Path(args.dir), docs, num_bytes, args.repeats))
    else:
        import tokenizer_fixtures as tf

        with tempfile.TemporaryDirectory() as tmp:
            for name in args.tokenizers.split(","):
                path = tf.BUILDERS[name](Path(tmp) / name)
                results.append(bench_one(name, path, docs, num_bytes, args.repeats))

    record = common.new_record("tokenizer_encode", "cpu", args, "tokenizers")
    record.update({"threads": 1, "num_documents": len(docs), "num_bytes": num_bytes,
                   "results": results})
    out_file = common.write_record(record, args.output_json)

    parts = [f"{r['tokenizer']} {r['llmcore_mb_per_s']:.1f} vs {r['hf_mb_per_s']:.1f} MB/s "
             f"({r['speedup']:.1f}x)" for r in results]
    slowest = min(r["speedup"] for r in results)
    print(f"tokenizer_encode (1 thread, {num_bytes / 1e6:.1f} MB, llmcore vs HF tokenizers "
          f"{tokenizers.__version__}): " + "; ".join(parts) + f"; min speedup {slowest:.2f}x -> {out_file.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
