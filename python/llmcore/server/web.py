"""The web chat page: GET / serves static/index.html, /static/... its script and style sheet.

The page is a plain client of the OpenAI endpoints of the same server (no build step, no CDN,
no framework); see static/app.js. Its routes are left out of the OpenAPI schema, and they are
open without the API key (the page asks for the key and sends it as a Bearer header)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/static/"

# The page loads only its own files and talks only to this server; nothing inline runs.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def is_web_path(path: str) -> bool:
    """True for the paths of the page and its files (open without the API key)."""
    return path == "/" or path.startswith(STATIC_PREFIX)


def add_web_chat(app: FastAPI) -> None:
    """Adds GET / (the chat page) and the /static files to `app`, outside the OpenAPI schema."""

    @app.get("/", include_in_schema=False)
    async def chat_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS)

    # A mount is never part of the OpenAPI schema.
    app.mount(STATIC_PREFIX.rstrip("/"), StaticFiles(directory=STATIC_DIR), name="static")
