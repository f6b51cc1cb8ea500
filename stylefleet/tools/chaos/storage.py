"""``python -m stylefleet.tools.chaos storage``: ``stylefleet batch`` over file names of 243-304
bytes (CJK, emoji), then into an output folder that cannot take a file (a real ``EFBIG`` from the
file-size limit, no root needed): exit status 3, a summary, ``failures.jsonl``, no partial file,
and a re-run that finishes once there is room. Prints one line per property (``held`` or
``BROKEN``) and returns the number broken. Starts nothing that outlives it; 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


def _png(side: int, seed: int) -> bytes:
    """A noisy PNG (so it does not compress below a few kilobytes)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


class _StyleService(BaseHTTPRequestHandler):
    """Answers ``GET /v1/styles`` (one style, ``frost``) and ``POST /v1/styles/frost`` with an
    8 KB PNG: the CLI's whole HTTP contract, without Ray or a model."""

    output = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"styles": [{"name": "frost", "inputs": ["image"], "params": [{"name": "format"}]}]}).encode()
        self._send(200, body, "application/json")

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self._send(200, self.output, "image/png", {"x-stylefleet-variant": "default", "x-stylefleet-model-sha256": "chaos"})

    def _send(self, status: int, body: bytes, media: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", media)
        self.send_header("content-length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the CLI stopped (a full folder) with it in flight
            self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@contextmanager
def _service() -> Iterator[str]:
    _StyleService.output = _png(64, 0)
    server = ThreadingHTTPServer((LOOPBACK, 0), _StyleService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _batch(src: Path, out: Path, url: str, max_file_bytes: int | None = None) -> subprocess.CompletedProcess[str]:
    """``stylefleet batch`` in a child process; ``max_file_bytes``: the kernel refuses to grow any
    file past it (RLIMIT_FSIZE: writes fail with EFBIG, as on a disk that is full)."""

    def limit() -> None:
        if max_file_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    cmd = [sys.executable, "-m", "stylefleet.tools.cli", "batch", str(src), "-o", str(out), "--style", "frost", "--url", url]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[3]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=limit, check=False, env=env)  # noqa: PLW1509


def storage() -> int:
    """Long names and a full output folder through ``stylefleet batch``."""
    checks: list[tuple[str, bool]] = []
    names = ["山" * 81 + ".png", "🐱" * 62 + ".png", "写真" * 40 + "-" + "写真" * 1 + ".png", "short.png"]  # 247, 252, 253, 9 bytes
    with tempfile.TemporaryDirectory(prefix="stylefleet-chaos-") as tmp, _service() as url:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        src.mkdir()
        for i, name in enumerate(names):
            (src / name).write_bytes(_png(32, i + 1))
        run = _batch(src, out, url)
        records = _records(out)
        outputs = [r.get("output") or "" for r in records]
        checks.append((f"long names: exit 0 (got {run.returncode})", run.returncode == 0))
        checks.append(("long names: every input recorded under its full name", sorted(r["input"] for r in records) == sorted(names)))
        bounded = all(len(o.encode()) <= 200 and (out / o).is_file() for o in outputs)
        checks.append(("long names: outputs at most 200 bytes and on disk", bounded))
        checks.append(("long names: outputs unique", len(set(outputs)) == len(names)))

        full = Path(tmp) / "full"
        run = _batch(src, full, url, max_file_bytes=4096)  # the manifest's lines fit, no 8 KB image does
        failures = _lines(full / "failures.jsonl")
        checks.append((f"full folder: exit 3 (got {run.returncode})", run.returncode == 3))
        checks.append(("full folder: no traceback, a summary on stderr", "Traceback" not in run.stderr and "items done" in run.stderr))
        codes = [f["error"]["code"] for f in failures]
        checks.append(("full folder: failures.jsonl names insufficient_storage", codes == ["insufficient_storage"]))
        leftovers = [p.name for p in full.rglob("*") if p.is_file() and p.name not in ("manifest.jsonl", "failures.jsonl")]
        checks.append((f"full folder: no partial file left ({leftovers[:3]})", not leftovers))

        run = _batch(src, full, url)
        checks.append((f"full folder, room again: the re-run finishes, exit 0 (got {run.returncode})", run.returncode == 0))
        checks.append(("full folder, room again: every output there", len([p for p in full.iterdir() if p.suffix == ".png"]) == len(names)))

        tiny = Path(tmp) / "tiny"
        run = _batch(src, tiny, url, max_file_bytes=1)  # not even failures.jsonl fits
        checks.append((f"no room at all: exit 3 and says failures.jsonl was not written (got {run.returncode})",
                       run.returncode == 3 and "failures.jsonl not written" in run.stderr and "Traceback" not in run.stderr))
    for what, held in checks:
        print(f"{'held  ' if held else 'BROKEN'} {what}")
    return sum(not held for _, held in checks)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _records(out: Path) -> list[dict[str, str]]:
    return _lines(out / "manifest.jsonl")
