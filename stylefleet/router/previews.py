"""Small preview images of each style for the web page, rendered once per router process.

Each preview is the shipped sample photo (``stylefleet/router/web/samples/astronaut-160.jpg``: scikit-image's
astronaut, NASA, public domain, 160 px) run through the style's first variant (in name order, so
the preview does not follow live A/B weights). ``restyle`` also needs a style picture:
``coffee-160.jpg`` (scikit-image's coffee, CC0). Previews bypass ``RouterCore.handle`` on
purpose: they are not user traffic, so they are neither counted in the per-style metrics nor
shadowed.

Seeded (generative) styles have no preview: a render is a diffusion run (seconds of GPU time,
minutes on CPU), too dear for a thumbnail. Their preview is 404 ``no_preview``, which the web
page shows as the style's initial.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from stylefleet.deployments.batching import EncodedImage, ModelRequest, OutputSpec
from stylefleet.errors import InternalError, NoPreview, StylefleetError
from stylefleet.imageio import CONTENT_TYPES, decode, encode
from stylefleet.router.catalog import Catalog, split_params
from stylefleet.router.core import Backend

SAMPLES_DIR = Path(__file__).resolve().parent / "web" / "samples"
SAMPLE_FILES = {"image": "astronaut-160.jpg", "style_image": "coffee-160.jpg"}
# An ID photo needs a face big enough to scale up to the preset: the 512 px astronaut for those.
LARGE_SAMPLE = "astronaut-512.jpg"
PREVIEW_WIDTH = 160
PREVIEW_OUTPUT = OutputSpec(format="webp", quality=80)  # small, and keeps the cut-out's alpha


def load_samples(directory: Path = SAMPLES_DIR) -> dict[str, np.ndarray]:
    """The sample images by input field name (and ``large`` for ID photos), decoded."""
    files = {**SAMPLE_FILES, "large": LARGE_SAMPLE}
    return {name: decode((directory / file).read_bytes(), max_pixels=1_000_000, field=name).pixels for name, file in files.items()}


class PreviewCache:
    """style name -> its rendered preview. Concurrent first requests for a style share one render;
    a failed render is not kept, so a preview asked for while a model is still loading is retried
    by the next request."""

    def __init__(self, catalog: Catalog, backend: Backend, samples: dict[str, np.ndarray] | None = None) -> None:
        self._catalog = catalog
        self._backend = backend
        self._samples = samples if samples is not None else load_samples()
        self._renders: dict[str, asyncio.Task[EncodedImage]] = {}

    async def get(self, style_name: str) -> EncodedImage:
        style = self._catalog.get(style_name)  # UnknownStyle before anything runs
        if style.kind.seeded:
            raise NoPreview(f"style {style.name!r} is generative: it has no preview image")
        task = self._renders.get(style.name)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = asyncio.ensure_future(self._render(style.name))
            self._renders[style.name] = task
        # shield: a browser that goes away must not cancel the render other requests wait for
        return await asyncio.shield(task)

    async def _render(self, style_name: str) -> EncodedImage:
        style = self._catalog.get(style_name)
        variant = style.variant(sorted(style.variants)[0])
        params, _ = split_params(style, variant, {})
        images = {f: self._samples[f] for f in style.image_fields}
        output = PREVIEW_OUTPUT
        if style.task == "id-photo":  # needs a bigger face, and writes only formats that carry dpi
            images["image"] = self._samples["large"]
            output = OutputSpec(format="png")
        reply = await self._backend.run(variant.deployment, ModelRequest(images, params, output))
        if isinstance(reply, StylefleetError):
            raise reply
        if not isinstance(reply, EncodedImage):
            raise InternalError(f"deployment {variant.deployment} returned {type(reply).__name__} for a preview")
        if reply.width != PREVIEW_WIDTH or reply.content_type != "image/webp":  # e.g. an ID photo
            reply = await asyncio.to_thread(_to_preview_width, reply)
        return reply


def _to_preview_width(image: EncodedImage) -> EncodedImage:
    pixels = decode(image.data, max_pixels=100_000_000).pixels
    height = max(1, round(pixels.shape[0] * PREVIEW_WIDTH / pixels.shape[1]))
    mode = "RGBA" if pixels.shape[2] == 4 else "RGB"
    small = np.asarray(Image.fromarray(pixels, mode).resize((PREVIEW_WIDTH, height), Image.Resampling.LANCZOS))
    data = encode(small, PREVIEW_OUTPUT.format, PREVIEW_OUTPUT.quality)
    content_type = CONTENT_TYPES[PREVIEW_OUTPUT.format]
    return replace(image, data=data, content_type=content_type, width=PREVIEW_WIDTH, height=height, pixels=None)
