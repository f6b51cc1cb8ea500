"""Progress of a batch run: a live bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts ok/failed/skipped; the rate and ETA count only items processed in this run."""

    def __init__(self, total: int, *, stream: TextIO | None = None, tty: bool | None = None, interval_s: float = 10.0) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = interval_s
        self.ok = self.failed = self.skipped = 0
        self.started = time.monotonic()
        self._last_line = self.started
        self._bar = None
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="img", file=self.stream, dynamic_ncols=True, smoothing=0.1)

    @property
    def done(self) -> int:
        return self.ok + self.failed + self.skipped

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.ok + self.failed) / elapsed if elapsed > 0 else 0.0

    def update(self, status: str, skipped: bool = False) -> None:
        if skipped:
            self.skipped += 1
        elif status == "ok":
            self.ok += 1
        else:
            self.failed += 1
        if self._bar is not None:
            self._bar.set_postfix_str(f"ok={self.ok} failed={self.failed} skipped={self.skipped}", refresh=False)
            self._bar.update(1)
        elif time.monotonic() - self._last_line >= self.interval_s:
            self._last_line = time.monotonic()
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        rate = self.rate()
        left = self.total - self.done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        return (
            f"batch: {self.done}/{self.total} done ({self.ok} ok, {self.failed} failed, {self.skipped} skipped), "
            f"{rate:.2f} img/s, ETA {eta}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
