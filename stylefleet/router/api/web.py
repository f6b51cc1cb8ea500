"""The web page: ``GET /`` and its files under ``/static/``, served by Starlette's ``StaticFiles``
(path checks, ETag and Last-Modified revalidation) with two rules of ours: only the page's own
kinds of file, each with an explicit type, and ``Cache-Control: no-cache``, so the browser
revalidates and a new release is picked up at the next page load."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.staticfiles import NotModifiedResponse, StaticFiles
from starlette.types import Scope

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# Explicit types rather than the mimetypes registry: some systems map .js to text/plain, and
# browsers refuse to run an ES module served with a non-JavaScript type.
PAGE_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".png": "image/png",
}
NO_CACHE = {"Cache-Control": "no-cache"}


class PageFiles(StaticFiles):
    """``StaticFiles`` over ``stylefleet/router/web``, serving only the page's kinds of file, uncached."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        media_type = PAGE_TYPES.get(Path(full_path).suffix)
        if media_type is None:
            raise HTTPException(404, f"no such file: {scope.get('path', '')}")
        response = FileResponse(full_path, status_code=status_code, stat_result=stat_result, media_type=media_type, headers=NO_CACHE)
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response


async def web_page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type=PAGE_TYPES[".html"], headers=NO_CACHE)


def add_web_page(app: FastAPI) -> None:
    """``GET /`` (the page) and ``/static/`` (its scripts, styles and sample pictures)."""
    app.add_api_route("/", web_page, methods=["GET"], include_in_schema=False)
    app.mount("/static", PageFiles(directory=WEB_DIR), name="static")
