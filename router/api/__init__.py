"""The HTTP API: ``create_api`` builds the FastAPI app (``application``) from one router per area:
``styles`` (the catalogue, previews, applying a style, shadow drift), ``jobs`` (batch jobs),
``health`` (probes), ``errors`` (the renderer and the table of codes), ``web`` (the page and its
files); ``forms`` reads request bodies, ``limits`` bounds them."""

from __future__ import annotations

from router.api.application import create_api
from router.api.errors import error_response
from router.api.web import WEB_DIR

__all__ = ["WEB_DIR", "create_api", "error_response"]
