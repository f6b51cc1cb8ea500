"""Summarise py-spy raw (collapsed) profiles: the top leaf frames and the top inclusive frames.

Usage: python scripts/spy_top.py /tmp/spy-router.txt [...] (written by scripts/cpu_split.py with SPY=).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path


def summarise(path: str) -> None:
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"== {path}: {total} samples")
    for title, counter, top in ((" leaf:", leaf, 12), (" inclusive:", inclusive, 40)):
        print(title)
        for frame, n in counter.most_common(top):
            print(f"  {n * 100 / max(1, total):5.1f}% {frame[:150]}")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        summarise(name)
