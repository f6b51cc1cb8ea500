"""The request body limit, enforced before and while a body is read."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stylefleet.errors import PayloadTooLarge
from stylefleet.router.api.errors import error_response


class BodyLimit:
    """Refuses bodies over ``max_bytes``: by Content-Length up front, and by counting while reading.

    ``overrides`` gives some (method, path) their own limit and knob name: batch job uploads
    (``POST /v1/jobs``) are far larger than one image.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, overrides: dict[tuple[str, str], tuple[int, str]] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.overrides = overrides or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, knob = self.overrides.get((scope.get("method", ""), scope.get("path", "")), (self.max_bytes, "max_upload_bytes"))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(_too_large(int(declared), limit, knob))(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(seen, limit, knob)
            return message

        await self.app(scope, counted, send)


def _too_large(size: int, limit: int, knob: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body ({size} bytes) is over the limit of {limit} ({knob})")
