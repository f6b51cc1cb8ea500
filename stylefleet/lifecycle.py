"""Whether the service around this process is going down (read by the router, written by the
supervisor of ``stylefleet run``).

``stylefleet run`` names a file in ``STYLEFLEET_DOWN_FILE`` before Ray starts, so every Ray process
inherits it; when one of Ray's own processes (the raylet, the GCS) dies it writes the reason there
and, a moment later, stops the whole service. Meanwhile the router answers 503 at once instead of
waiting on a cluster that can no longer answer. Anywhere else (Kubernetes, ``serve run``) the
variable is unset and nothing changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DOWN_FILE_ENV = "STYLEFLEET_DOWN_FILE"


def down_reason(environ: Mapping[str, str] | None = None) -> str | None:
    """The reason the service is going down, or None while it is not (one failed ``open`` per call)."""
    path = (os.environ if environ is None else environ).get(DOWN_FILE_ENV)
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip() or "the service is stopping"
    except FileNotFoundError:
        return None
