"""What the routes work with, set once on ``app.state`` by ``create_api``: the routes are plain
module-level functions that read it from the request, instead of closures over arguments."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from stylefleet.config import Limits
from stylefleet.router.core import RouterCore
from stylefleet.router.jobs.manager import JobManager
from stylefleet.router.previews import PreviewCache


@dataclass(frozen=True)
class Services:
    core: RouterCore
    limits: Limits
    previews: PreviewCache
    jobs: JobManager | None


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


def jobs(request: Request) -> JobManager:
    """The job manager; the jobs routes exist only when there is one."""
    manager = services(request).jobs
    assert manager is not None, "the jobs routes are only added with a JobManager"
    return manager
