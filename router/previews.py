"""Small preview images of each style for the web page, rendered once per router process.

Each preview is the shipped sample photo (``router/web/samples/astronaut-160.jpg``: scikit-image's
astronaut, NASA, public domain, 160 px) run through the style's first variant (in name order, so
the preview does not follow live A/B weights). ``restyle`` also needs a style picture:
``coffee-160.jpg`` (scikit-image's coffee, CC0). Previews bypass ``RouterCore.handle`` on
purpose: they are not user traffic, so they are neither counted in the per-style metrics nor
shadowed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from deployments.batching import EncodedImage, ModelRequest, OutputSpec
from router.catalog import Catalog, split_params
from router.core import Backend
from stylefleet.errors import InternalError, StylefleetError
from stylefleet.imageio import decode

SAMPLES_DIR = Path(__file__).resolve().parent / "web" / "samples"
SAMPLE_FILES = {"image": "astronaut-160.jpg", "style_image": "coffee-160.jpg"}
PREVIEW_OUTPUT = OutputSpec(format="webp", quality=80)  # small, and keeps the cut-out's alpha


def load_samples(directory: Path = SAMPLES_DIR) -> dict[str, np.ndarray]:
    """The sample images by input field name, decoded."""
    return {
        name: decode((directory / file).read_bytes(), max_pixels=1_000_000, field=name).pixels
        for name, file in SAMPLE_FILES.items()
    }


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
        images = {f: self._samples[f] for f in style.kind.image_fields}
        reply = await self._backend.run(variant.deployment, ModelRequest(images, params, PREVIEW_OUTPUT))
        if isinstance(reply, StylefleetError):
            raise reply
        if not isinstance(reply, EncodedImage):
            raise InternalError(f"deployment {variant.deployment} returned {type(reply).__name__} for a preview")
        return reply
