"""``/v1/styles``: the catalogue, a style's preview, applying a style; and ``/v1/shadow``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from stylefleet.deployments.batching import EncodedImage
from stylefleet.router import bundle
from stylefleet.router.api.forms import read_body
from stylefleet.router.api.state import services
from stylefleet.router.openapi import IMAGE_RESPONSE, PREVIEW_RESPONSE, STYLE_REQUEST, errors

PREVIEW_MAX_AGE_S = 3600

router = APIRouter()


@router.get("/v1/styles", responses=errors())
async def list_styles(request: Request) -> Response:
    return Response(services(request).core.styles_json(), media_type="application/json")


@router.get("/v1/styles/{style_name}/preview", response_class=Response, responses={200: PREVIEW_RESPONSE, **errors(404, 503)})
async def style_preview(style_name: str, request: Request) -> Response:
    """The sample photo in this style (rendered once per router process, then cached)."""
    image = await services(request).previews.get(style_name)
    return Response(image.data, media_type=image.content_type, headers={"Cache-Control": f"public, max-age={PREVIEW_MAX_AGE_S}"})


@router.get("/v1/shadow", responses=errors())
async def shadow_report(request: Request) -> dict[str, Any]:
    """Drift between each shadow variant and the variant the user got, per style, and its quality gate."""
    return {"comparisons": services(request).core.describe_shadows()}


@router.post(
    "/v1/styles/{style_name}",
    response_class=Response,
    responses={200: IMAGE_RESPONSE, **errors(400, 404, 408, 413, 415, 422, 429, 503)},
    openapi_extra=STYLE_REQUEST,
)
async def apply_style(style_name: str, request: Request) -> Response:
    core = services(request).core
    style = core.catalog.get(style_name)  # 404 before reading the body
    files, fields = await read_body(request, json_allowed=not style.image_fields)
    if "variant" not in fields and "variant" in request.query_params:
        fields["variant"] = request.query_params["variant"]
    client_id = fields.get("client_id")
    client_key = request.headers.get("x-client-id") or (str(client_id) if client_id is not None else None)
    result = await core.handle(style_name, files, fields, client_key=client_key)
    image = result.image
    headers = {
        "X-Stylefleet-Style": style_name,
        "X-Stylefleet-Variant": result.variant,
        "X-Stylefleet-Model-Sha256": image.model_sha256,
        "X-Stylefleet-Size": f"{image.width}x{image.height}",
        "Server-Timing": f"total;dur={result.seconds * 1000:.1f}",
    }
    if any(seed is not None for seed in result.seeds):
        headers["X-Stylefleet-Seed"] = ",".join(str(seed) for seed in result.seeds)
    if any(i.nsfw is not None for i in result.images):  # the safety checker ran: its verdict per image
        headers["X-Stylefleet-Nsfw"] = ",".join(_verdict(i.nsfw) for i in result.images)
    if image.checks is not None:  # id-photo's quality findings ("pass" when none)
        headers["X-Stylefleet-Checks"] = image.checks
    if len(result.images) == 1:
        return Response(image.data, media_type=image.content_type, headers=headers)
    return _many_images(style.name, list(result.images), list(result.seeds), request.headers.get("accept", ""), headers)


def _verdict(nsfw: bool | None) -> str:
    return "unchecked" if nsfw is None else str(nsfw).lower()


def _many_images(
    style: str, images: list[EncodedImage], seeds: list[int | None], accept: str, headers: dict[str, str]
) -> Response:
    """n > 1 images: a zip by default, multipart/mixed when the client accepts it."""
    names = [f"{style}-{i}" + (f"-seed{seed}" if seed is not None else "") for i, seed in enumerate(seeds)]
    headers = {**headers, "X-Stylefleet-Count": str(len(images))}
    if "multipart/mixed" in accept:
        body, media_type = bundle.multipart(images, names, seeds)
        return Response(body, media_type=media_type, headers=headers)
    headers["Content-Disposition"] = f'attachment; filename="{style}.zip"'
    return Response(bundle.zip_archive(images, names), media_type="application/zip", headers=headers)
