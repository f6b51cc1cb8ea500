"""``/v1/jobs``: batch jobs over the same styles (see ``stylefleet.router.jobs``)."""

from __future__ import annotations

from typing import IO, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from stylefleet.errors import InvalidParams
from stylefleet.router.api.forms import read_form, read_limited, require_multipart
from stylefleet.router.api.state import jobs, services
from stylefleet.router.openapi import EVENTS_RESPONSE, JOB_REQUEST, ZIP_RESPONSE, Job, errors

router = APIRouter()

MAX_EXTRA_FILES = 8  # files beside the images: archive, prompts, a style's own (restyle's style_image)


def urls(job_id: str) -> dict[str, str]:
    base = f"/v1/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "result": f"{base}/result"}


@router.post(
    "/v1/jobs",
    status_code=202,
    responses={202: {"model": Job, "description": "the job, queued, with its URLs"}, **errors(400, 404, 408, 413, 415, 422, 429, 503, 507)},
    openapi_extra=JOB_REQUEST,
)
async def create_job(request: Request) -> JSONResponse:
    """multipart/form-data: several ``images`` files or one ``archive`` zip (a text-to-image
    style: one ``prompts`` file, a prompt per line or JSONL), ``style``, the style's params
    (and ``variant``/``client_id``); 202 with the job and its URLs."""
    manager, limit = jobs(request), services(request).limits.max_upload_bytes
    manager.ensure_started()
    require_multipart(request)
    async with read_form(request, max_files=manager.config.max_items + MAX_EXTRA_FILES, repeatable=frozenset({"images"})) as form:
        images: list[tuple[str, IO[bytes]]] = [(f.filename or "", f.file) for f in form.files.pop("images", [])]
        archive = form.files.pop("archive", [None])[0]
        prompt_file = form.files.pop("prompts", [None])[0]
        prompts = None
        if prompt_file is not None:
            prompts = (prompt_file.filename or "prompts.txt", await read_limited(prompt_file, "prompts", limit, "limits.max_upload_bytes"))
        shared = {key: await read_limited(uploads[0], key, limit, "limits.max_upload_bytes") for key, uploads in form.files.items()}
        fields = dict(form.fields)
        style = fields.pop("style", None)
        if not style:
            raise InvalidParams("style: required (a style name, see GET /v1/styles)")
        client_key = request.headers.get("x-client-id") or fields.get("client_id")
        body = await manager.create(
            style, fields, client_key=client_key, images=images, archive=archive.file if archive else None, shared=shared, prompts=prompts
        )
    body["urls"] = urls(body["id"])
    return JSONResponse(body, status_code=202, headers={"Location": body["urls"]["self"]})


@router.get("/v1/jobs/{job_id}", responses={200: {"model": Job}, **errors(404)})
async def get_job(job_id: str, request: Request) -> dict[str, Any]:
    manager = jobs(request)
    manager.ensure_started()
    return await manager.get(job_id)


@router.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse, responses={200: EVENTS_RESPONSE, **errors(404)})
async def job_events(job_id: str, request: Request) -> StreamingResponse:
    """text/event-stream: ``progress`` (the job as GET shows it) on every change, ``end`` at
    a final status. The stream ends itself after 90 s; EventSource reconnects."""
    manager = jobs(request)
    manager.ensure_started()
    stream = await manager.events(job_id)
    return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/v1/jobs/{job_id}/result", response_class=StreamingResponse, responses={200: ZIP_RESPONSE, **errors(404, 409, 507)})
async def job_result(job_id: str, request: Request) -> StreamingResponse:
    """application/zip: outputs (original names, the format's extension), manifest.jsonl,
    failures.jsonl; 409 job_not_finished until the job ends."""
    manager = jobs(request)
    rel = await manager.result(job_id)
    return StreamingResponse(
        manager.results.chunks(rel),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="stylefleet-job-{job_id}.zip"',
            "Content-Length": str(manager.results.size(rel)),
        },
    )


@router.delete("/v1/jobs/{job_id}", responses={200: {"model": Job}, **errors(404)})
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    manager = jobs(request)
    manager.ensure_started()
    return await manager.cancel(job_id)
