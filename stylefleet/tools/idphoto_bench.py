"""Per-portrait report of the id-photo pipeline, in process (no Ray), and its bare photos/s.

    python -m stylefleet.tools.idphoto_bench [--folder .portraits] [--size passport] [--threads 2]

For each photo: the photo made (with its checks) or the typed refusal, and the frame measured
again: chin-to-crown share, crown margin, eye line from the bottom, and the source face's pose.
The portraits are the ones ``make portraits`` fetches; scikit-image's astronaut is added.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stylefleet.deployments import facegeometry as fg
from stylefleet.deployments.background import U2NetModel
from stylefleet.deployments.batching import EncodedImage, ModelRequest, OutputSpec, Reply, run_batch
from stylefleet.deployments.composed import StageClock, run_composed
from stylefleet.deployments.idphoto import IdPhotoModel, alpha_from_matte
from stylefleet.deployments.landmarks import FaceMeshModel
from stylefleet.deployments.onnx_session import RuntimeOptions
from stylefleet.deployments.registry import resolve


def _photos(folder: Path) -> dict[str, np.ndarray]:
    from skimage import data

    out = {p.name: np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.jpg"))}
    out["astronaut (scikit-image)"] = data.astronaut()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=".portraits")
    parser.add_argument("--size", default="passport")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    runtime = RuntimeOptions(threads=args.threads)
    pipeline: Any = IdPhotoModel()
    models: dict[str, Any] = {
        "matte": U2NetModel(resolve("u2netp"), runtime),
        "faces": FaceMeshModel(resolve("blazeface_full_range"), resolve("face_mesh"), runtime),
    }

    async def call(role: str, request: ModelRequest) -> Reply:
        return run_batch(models[role], [request])[0]

    photos = _photos(Path(args.folder))
    print(f"{'photo':28s} {'result':34s} head  top   eyes  yaw   pitch roll")
    for name, pixels in photos.items():
        request = ModelRequest({"image": pixels}, {"size": args.size, "bg_color": "blue"}, OutputSpec("png"))
        [reply] = asyncio.run(run_composed(pipeline, [request], call, StageClock(), "bench"))
        [rows] = run_batch(models["faces"], [ModelRequest({"image": pixels})])
        faces = fg.mesh_faces(rows) if isinstance(rows, np.ndarray) else []
        pose = "  ".join(f"{v:+5.1f}" for v in fg.head_pose(faces[0])) if faces else ""
        if not isinstance(reply, EncodedImage):
            print(f"{name:28s} {getattr(reply, 'code', type(reply).__name__):34s} {'':17s} {pose}")
            continue
        rgb = np.asarray(Image.open(io.BytesIO(reply.data)).convert("RGB"))
        [out_rows] = run_batch(models["faces"], [ModelRequest({"image": rgb})])
        [matte] = run_batch(models["matte"], [ModelRequest({"image": rgb}, {"only_mask": True})])
        assert isinstance(out_rows, np.ndarray) and isinstance(matte, np.ndarray)
        m = fg.measure_frame(fg.mesh_faces(out_rows)[0], alpha_from_matte(matte))
        result = f"ok: {reply.checks}"
        print(f"{name:28s} {result:34s} {m.head_share:.3f} {m.top_share:.3f} {m.eye_share:.3f} {pose}")
    # throughput: the pipeline alone on every photo, three rounds
    requests = [ModelRequest({"image": p}, {"size": args.size, "checks": "warn"}, OutputSpec("png")) for p in photos.values()]
    started = time.perf_counter()
    for _ in range(3):
        asyncio.run(run_composed(pipeline, requests, call, StageClock(), "bench"))
    seconds = time.perf_counter() - started
    print(f"bare, {args.threads} threads, one at a time: {3 * len(requests) / seconds:.2f} photos/s")


if __name__ == "__main__":
    main()
