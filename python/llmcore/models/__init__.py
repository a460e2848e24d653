"""Built-in models: checkpoint directories shipped with the package and the code that builds the
demo model (demo_corpus: its training text; train_demo: its training run; demo_card: its model
card).

- demo: the model `LLM()`, `python -m llmcore.generate`, `python -m llmcore.chat` and
  `python -m llmcore.server` use when no model is given: a 13M-parameter Llama trained by
  train_demo.py on public-domain English from Debian packages (demo/README.md).
- tiny-random: a tokenizer and a tiny config without weights (load it with load_format="dummy");
  the benchmarks use its tokenizer for token-id prompts.
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
DEMO_MODEL = MODELS_DIR / "demo"
TINY_RANDOM_MODEL = MODELS_DIR / "tiny-random"


def default_model() -> Path:
    """The checkpoint used when no model is given: the built-in demo model."""
    if not (DEMO_MODEL / "model.safetensors").is_file():
        raise FileNotFoundError(f"the built-in demo model is missing from {DEMO_MODEL}; pass a model path")
    return DEMO_MODEL
