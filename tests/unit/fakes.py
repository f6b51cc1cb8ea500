"""The one stand-in for the cluster in the unit tier: a ``stylefleet.router.core.Backend`` without Ray.

``FakeBackend`` records every call, answers with canned replies when a test sets them
(``replies`` first, in order, then ``reply``), else with its ``answer`` function; ``gate`` holds
calls until the test releases permits, and ``statuses`` is what ``health()`` reports. The answer
functions below are the shapes the tests need (a tiny PNG, bytes derived from the pixels, the
params echoed back, a shadow comparison held until released, a cutout with its matte).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import threading
from collections import Counter
from collections.abc import Awaitable, Callable

import numpy as np

from stylefleet.deployments.batching import EncodedImage, ModelRequest, Reply, decode_files
from stylefleet.errors import ModelUnavailable
from stylefleet.router.health import DeploymentState

Answer = Callable[[str, ModelRequest], "Reply | Awaitable[Reply]"]


def tiny_png(deployment: str, request: ModelRequest) -> Reply:
    """A few bytes labelled as a 4x3 PNG: enough for the HTTP layer, which never decodes it."""
    return EncodedImage(b"\x89PNG...", "image/png", 4, 3, "abc")


def seeded_png(deployment: str, request: ModelRequest) -> Reply:
    """A 64x64 'PNG' naming its seed, as a generative model's reply."""
    return EncodedImage(f"PNG-{request.params.get('seed', 0)}".encode(), "image/png", 64, 64, "f" * 64)


def flag_odd_seeds(deployment: str, request: ModelRequest) -> Reply:
    """As ``seeded_png``, with the safety checker flagging odd seeds."""
    seed = request.params.get("seed", 0)
    return EncodedImage(f"PNG-{seed}".encode(), "image/png", 64, 64, "f" * 64, nsfw=seed % 2 == 1)


def preview_webp(deployment: str, request: ModelRequest) -> Reply:
    """A 160x160 WebP, the size of a style preview."""
    return EncodedImage(b"RIFF....WEBP", "image/webp", 160, 160, "abc")


def pixel_digest(request: ModelRequest) -> str:
    """The sha256 of the request's decoded image, as its model replica would see it."""
    return hashlib.sha256(decode_files(request).images["image"].tobytes()).hexdigest()


def from_pixels(deployment: str, request: ModelRequest) -> Reply:
    """Bytes derived from the decoded pixels (decoded as the model's replica does): equal inputs, equal outputs."""
    pixels = decode_files(request).images["image"]
    digest = hashlib.sha256(pixels.tobytes()).hexdigest()
    return EncodedImage(f"OUT-{digest}".encode(), "image/png", pixels.shape[1], pixels.shape[0], "model-sha")


def echo_prompt(deployment: str, request: ModelRequest) -> Reply:
    """A diffusion stand-in: the image's bytes are the params it got; prompts containing 'nsfw' are flagged."""
    p = request.params
    body = json.dumps({k: p[k] for k in ("prompt", "seed", "steps", "negative_prompt")}).encode()
    return EncodedImage(body, "image/png", 64, 64, "sd-sha", nsfw="nsfw" in p["prompt"])


class HeldShadow:
    """Primary calls answer at once; shadow calls (they ask for the array, no output) wait for
    ``release`` and then answer the pixels shifted by 8, or fail when ``fails``."""

    def __init__(self, fails: bool = False) -> None:
        self.release = asyncio.Event()
        self.fails = fails

    async def __call__(self, deployment: str, request: ModelRequest) -> Reply:
        pixels = decode_files(request).images["image"]  # as the model's replica does
        if request.output is None:
            await self.release.wait()
            if self.fails:
                raise ModelUnavailable("shadow deployment down")
            return np.clip(pixels.astype(int) + 8, 0, 255).astype(np.uint8)
        return EncodedImage(b"png", "image/png", pixels.shape[1], pixels.shape[0], "sha", pixels if request.keep_pixels else None)


def cutout(deployment: str, request: ModelRequest) -> Reply:
    """A remove-background stand-in whose matte is a vertical step at column 16 + ``erode_px`` of
    a 32x24 image: as the model, RGBA by default, the matte as grey with ``only_mask``, flattened
    onto white with ``bg_color``; the array alone for a shadow call (no output asked)."""
    p = request.params
    alpha = np.zeros((24, 32), np.uint8)
    alpha[:, 16 + p.get("erode_px", 0) :] = 255
    rgb = np.full((24, 32, 3), (200, 40, 40), np.uint8)
    if p.get("only_mask"):
        out = np.repeat(alpha[:, :, None], 3, axis=2)
    elif p.get("bg_color"):
        a = alpha[:, :, None].astype(np.float32) / 255
        out = (rgb * a + 255 * (1 - a)).astype(np.uint8)
    else:
        out = np.dstack([rgb, alpha])
    if request.output is None:
        return out
    return EncodedImage(b"png", "image/png", 32, 24, "sha", out if request.keep_pixels else None)


class FakeBackend:
    """Records calls and answers them; see the module docstring."""

    def __init__(self, answer: Answer = tiny_png, *, statuses: dict[str, DeploymentState] | None = None) -> None:
        self.answer = answer
        self.calls: list[tuple[str, ModelRequest]] = []
        self.replies: list[Reply] = []  # canned, used first, one per call
        self.reply: Reply | None = None  # canned for every call once ``replies`` is empty
        self.statuses: dict[str, DeploymentState] = statuses if statuses is not None else {}
        self.gate: threading.Semaphore | None = None  # when set, each call waits for a permit

    @property
    def requests(self) -> list[ModelRequest]:
        return [request for _, request in self.calls]

    def calls_per_image(self) -> Counter[str]:
        """How many calls each distinct input image got (by the digest of its pixels)."""
        return Counter(pixel_digest(request) for request in self.requests)

    async def run(self, deployment: str, request: ModelRequest) -> Reply:
        self.calls.append((deployment, request))
        gate = self.gate
        if gate is not None:
            await asyncio.to_thread(gate.acquire, True, 30)
        if self.replies:
            return self.replies.pop(0)
        if self.reply is not None:
            return self.reply
        reply = self.answer(deployment, request)
        return await reply if inspect.isawaitable(reply) else reply

    async def health(self) -> dict[str, DeploymentState]:
        return self.statuses
