"""Several images in one response: a zip archive (the default) or multipart/mixed. Pure."""

from __future__ import annotations

import io
import secrets
import zipfile
from collections.abc import Sequence

from stylefleet.deployments.batching import EncodedImage

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def file_name(stem: str, image: EncodedImage) -> str:
    return f"{stem}.{_EXTENSIONS.get(image.content_type, 'bin')}"


def zip_archive(images: Sequence[EncodedImage], stems: Sequence[str]) -> bytes:
    """Stored, not deflated: PNG, JPEG and WebP are compressed already."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        for image, stem in zip(images, stems):
            archive.writestr(file_name(stem, image), image.data)
    return buf.getvalue()


def multipart(images: Sequence[EncodedImage], stems: Sequence[str], seeds: Sequence[int | None]) -> tuple[bytes, str]:
    """A multipart/mixed body, one part per image with its own Content-Type and X-Stylefleet-Seed."""
    boundary = f"stylefleet-{secrets.token_hex(12)}"
    parts = []
    for image, stem, seed in zip(images, stems, seeds):
        head = [
            f"--{boundary}",
            f"Content-Type: {image.content_type}",
            f'Content-Disposition: attachment; filename="{file_name(stem, image)}"',
            f"X-Stylefleet-Size: {image.width}x{image.height}",
        ]
        if seed is not None:
            head.append(f"X-Stylefleet-Seed: {seed}")
        parts.append("\r\n".join(head).encode() + b"\r\n\r\n" + image.data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/mixed; boundary={boundary}"
