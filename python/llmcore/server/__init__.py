"""llmcore's OpenAI-compatible HTTP server: ``python -m llmcore.server --model PATH``."""

from .app import create_app

__all__ = ["create_app"]
