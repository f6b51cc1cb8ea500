"""``GET /docs``: Swagger UI over ``/openapi.json``, from files the service serves itself.

FastAPI's own page loads Swagger UI from a public CDN (so it is blank on a machine without
internet) and starts it with an inline script (which the Content-Security-Policy forbids). This
page takes Swagger UI's files from the ``fastapi-offline`` package (swagger-ui-dist, Apache-2.0)
and starts it from ``/static/docs.js``, a file."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse

from stylefleet.router.api.web import NO_CACHE, PAGE_TYPES

SWAGGER_UI_DIR = Path(str(files("fastapi_offline") / "static"))
SWAGGER_UI_FILES = {"swagger-ui-bundle.js": PAGE_TYPES[".js"], "swagger-ui.css": PAGE_TYPES[".css"]}

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}: API</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="{root}/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui" data-openapi="{root}{openapi}"></div>
  <script src="{root}/docs/swagger-ui-bundle.js"></script>
  <script src="{root}/static/docs.js"></script>
</body>
</html>
"""


def add_docs(app: FastAPI) -> None:
    """``/docs`` and its two Swagger UI files; build the app with ``docs_url=None, redoc_url=None``."""
    openapi_url = app.openapi_url or "/openapi.json"

    async def docs_page(request: Request) -> HTMLResponse:
        root = html.escape(request.scope.get("root_path", "").rstrip("/"))
        body = _PAGE.format(title=html.escape(app.title), root=root, openapi=html.escape(openapi_url))
        return HTMLResponse(body, headers=NO_CACHE)

    app.add_api_route("/docs", docs_page, methods=["GET"], include_in_schema=False)
    for name, media_type in SWAGGER_UI_FILES.items():
        app.add_api_route(f"/docs/{name}", _file(SWAGGER_UI_DIR / name, media_type), methods=["GET"], include_in_schema=False)


def _file(path: Path, media_type: str) -> Callable[[], Awaitable[FileResponse]]:
    async def serve() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers=NO_CACHE)

    return serve
