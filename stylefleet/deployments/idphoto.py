"""ID photos: the geometry and compositing step of the ``id-photo`` pipeline. Pure compute, no Ray.

The pipeline (``stylefleet/deployments/composed.py`` runs it) asks two other deployments for each photo:
first the faces (``detect-faces``), then the background matte (``remove-background`` with
``only_mask``) of only the region the faces' frames can show, so the head gets far more of the
matting network's fixed 320 px than a whole standing portrait would give it. With both, this module:

1. picks the face (exactly one, or the largest with ``face=largest``) among those on the subject;
2. finds the head: the crown is the top of the matte above the face, the chin sits a fixed
   share of the detector's box below its top (calibrated on the sample portraits);
3. scales and shifts the photo so the head has the preset's height, its crown the preset's top
   margin and the face the horizontal centre; the frame has exactly the preset's pixels;
4. keeps only the matte joined to that face, re-estimates the colours of the soft edge (hair) so
   the old backdrop does not show through, and puts the cut-out subject on the background colour
   (and, with ``layout=4r``, copies on a sheet);
5. encodes with the dpi in the file, at the highest JPEG quality that fits ``max_kb``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from stylefleet.deployments import facegeometry as fg
from stylefleet.deployments.batching import EncodedImage, ModelRequest, OutputSpec, validate_params
from stylefleet.deployments.faces import COLUMNS as HAAR_COLUMNS
from stylefleet.deployments.faces import Face, faces_from_array
from stylefleet.deployments.kinds import KINDS
from stylefleet.deployments.params import IdPhotoParams, background
from stylefleet.deployments.presets import Frame
from stylefleet.deployments.stylize import check_min_side
from stylefleet.errors import FaceTooSmall, InvalidParams, MaxKbTooSmall, MultipleFaces, NoFace, PhotoOutOfSpec
from stylefleet.imageio import CONTENT_TYPES, encode, resize_to_max_side

WORK_MAX_SIDE = 2048  # photos are scaled down to this before matting and detection
NO_FACE = "no face was found in the photo; send a portrait, face to the camera, not too small"
MAX_UPSCALE = 4.0  # a head enlarged more than this is too blurry for an ID photo: face_too_small
MIN_JPEG_QUALITY = 20  # below this, JPEG blocking shows on faces; max_kb never goes lower

# Where the chin is, in face-box heights below the box's top (calibrated on scikit-image's
# astronaut, frontal, and camera man, profile).
CHIN_BELOW_BOX_TOP = {False: 1.02, True: 0.92}
# The crown is searched for in the matte between these many box heights above the box's top;
# when the matte says nothing (or the head is cut by the photo's top edge), the typical value.
CROWN_ABOVE_BOX_TOP = (0.2, 0.9)
CROWN_TYPICAL = 0.5
MATTE_LOW, MATTE_HIGH = 24, 232  # matte values below are backdrop, above are subject
FOREGROUND_PAD_PX = 8  # context around the soft edge's bounding box for foreground estimation
FOREGROUND_MAX_SIDE = 256  # foreground colours are solved at this size at most (cost bounded at any dpi)

# The print sheet: 4R (4x6 in) at 300 dpi, copies 1 mm apart with 1 px cut guides in the gaps.
SHEET_INCHES = (4, 6)
SHEET_DPI = 300
SHEET_GAP_PX = 12
GUIDE_RGB = (170, 170, 170)


# --- geometry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """Where the head is in the source photo, in its pixels."""

    crown_y: float
    chin_y: float
    centre_x: float

    @property
    def height(self) -> float:
        return self.chin_y - self.crown_y


@dataclass(frozen=True)
class Placement:
    """Source pixel (x, y) lands at output pixel (scale * x + dx, scale * y + dy)."""

    scale: float
    dx: float
    dy: float


def alpha_from_matte(matte: np.ndarray) -> np.ndarray:
    """The matte as 0..1 float32 opacity, with U2Net's faint haze on the backdrop cut to zero."""
    m = matte[:, :, 0] if matte.ndim == 3 else matte
    return np.clip((m.astype(np.float32) - MATTE_LOW) / (MATTE_HIGH - MATTE_LOW), 0.0, 1.0)


def on_subject(face: Face, alpha: np.ndarray) -> bool:
    """A face counts only if the matte holds it: a face on a poster behind the person does not."""
    h, w = alpha.shape
    x0, x1 = int(face.x + face.width * 0.25), int(math.ceil(face.x + face.width * 0.75))
    y0, y1 = int(face.y + face.height * 0.25), int(math.ceil(face.y + face.height * 0.75))
    core = alpha[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    return core.size > 0 and float(core.mean()) >= 0.5


def choose_face(faces: Sequence[Face], alpha: np.ndarray, policy: str) -> Face:
    """The one face on the subject; several is an error unless ``policy`` is ``largest``."""
    found = [f for f in faces if on_subject(f, alpha)]
    if not found:
        raise NoFace(NO_FACE)
    if len(found) > 1 and policy != "largest":
        raise MultipleFaces(
            f"{len(found)} faces were found; send a photo of one person, or set face=largest to use the largest"
        )
    return max(found, key=lambda f: f.area)


def estimate_head(face: Face, alpha: np.ndarray) -> Head:
    """Crown from the matte (top of the hair above the face), chin from the detector's box."""
    chin = face.y + CHIN_BELOW_BOX_TOP[face.profile] * face.height
    nearest, farthest = (face.y - k * face.height for k in CROWN_ABOVE_BOX_TOP)
    x0 = max(0, int(face.x + face.width * 0.3))
    x1 = min(alpha.shape[1], int(math.ceil(face.x + face.width * 0.7)))
    top = max(0, int(farthest))
    bottom = max(top, int(nearest))
    band = alpha[top:bottom + 1, x0:x1] >= 0.5
    rows = np.flatnonzero(band.mean(axis=1) >= 0.5) if band.size else np.array([], int)
    typical = face.y - CROWN_TYPICAL * face.height
    if rows.size == 0:
        crown = typical
    else:
        crown = float(top + rows[0])
        if top + rows[0] == 0:  # the hair reaches the photo's top edge: the real crown is above it
            crown = min(0.0, typical)
    crown = min(crown, nearest)
    return Head(crown_y=crown, chin_y=chin, centre_x=face.centre_x)


def place(head: Head, frame: Frame, upscale_limit: float = MAX_UPSCALE) -> Placement:
    """Scale to the preset's head height, crown at its top margin, face centred horizontally."""
    scale = frame.head_px / head.height
    if scale > upscale_limit:
        raise FaceTooSmall(
            f"the head is {head.height:.0f} px tall in the photo; this size at {frame.dpi} dpi needs "
            f"{frame.head_px:.0f} px, more than {upscale_limit:g}x enlargement. Send a larger or closer "
            "photo, or ask for a lower dpi"
        )
    return Placement(scale=scale, dx=frame.width_px / 2 - scale * head.centre_x, dy=frame.top_px - scale * head.crown_y)


def render(rgb: np.ndarray, alpha: np.ndarray, placement: Placement, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The frame's pixels and opacity: the source region under the frame, resampled once.

    Only the part of the photo that lands in the frame is resized (area averaging when
    shrinking, Lanczos when enlarging); outside the photo the opacity is 0 (background).
    """
    width, height = size
    s, dx, dy = placement.scale, placement.dx, placement.dy
    src_h, src_w = alpha.shape
    x0, y0 = max(0, math.floor(-dx / s)), max(0, math.floor(-dy / s))
    x1, y1 = min(src_w, math.ceil((width - dx) / s) + 1), min(src_h, math.ceil((height - dy) / s) + 1)
    out_rgb = np.zeros((height, width, 3), np.float32)
    out_alpha = np.zeros((height, width), np.float32)
    if x1 <= x0 or y1 <= y0:
        return out_rgb, out_alpha
    crop = np.dstack([rgb[y0:y1, x0:x1, :3].astype(np.float32), alpha[y0:y1, x0:x1, None]])
    # where the crop's corner lands, and the crop resized so that its pixels are 1/s source pixels
    u0, v0 = dx + s * x0, dy + s * y0
    cw, ch = max(1, round(s * (x1 - x0))), max(1, round(s * (y1 - y0)))
    interpolation = cv2.INTER_AREA if s < 1 else cv2.INTER_LANCZOS4
    resized = cv2.resize(crop, (cw, ch), interpolation=interpolation)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    iu, iv = round(u0), round(v0)
    ou0, ov0 = max(0, iu), max(0, iv)
    ou1, ov1 = min(width, iu + cw), min(height, iv + ch)
    if ou1 <= ou0 or ov1 <= ov0:
        return out_rgb, out_alpha
    patch = resized[ov0 - iv:ov1 - iv, ou0 - iu:ou1 - iu]
    out_rgb[ov0:ov1, ou0:ou1] = patch[:, :, :3]
    out_alpha[ov0:ov1, ou0:ou1] = np.clip(patch[:, :, 3], 0.0, 1.0)
    return out_rgb, out_alpha


def composite(rgb: np.ndarray, alpha: np.ndarray, bg: tuple[int, int, int]) -> np.ndarray:
    """Straight-alpha over a solid colour, to uint8 RGB."""
    a = alpha[:, :, None]
    out = rgb * a + np.asarray(bg, np.float32).reshape(1, 1, 3) * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- the matte, made for heads -----------------------------------------------------------------
#
# U2Net sees every photo at 320x320, so on a whole standing portrait the head gets a few dozen of
# its pixels and the hair edge comes back as a blur of old backdrop. The matte is asked for only
# the region the frame can show (found from the face boxes), then pasted back into a photo-sized
# matte; islands not joined to the person are dropped, and the edge's colours are re-estimated so
# the old backdrop does not show through on the new one.

# The head's extent in face-box heights, at its largest (crown searched up to 0.9 above the box,
# chin 1.02 below its top) and the frame's margin around the largest frame it can need.
HEAD_BOXES_MAX = CROWN_ABOVE_BOX_TOP[1] + max(CHIN_BELOW_BOX_TOP.values())
REGION_MARGIN = 0.1  # of the frame's source height, on every side


@dataclass(frozen=True)
class Region:
    """A rectangle of the photo, in its pixels: columns x0..x1, rows y0..y1 (ends excluded)."""

    x0: int
    y0: int
    x1: int
    y1: int

    def crop(self, pixels: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(pixels[self.y0:self.y1, self.x0:self.x1])

    def paste(self, part: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """``part`` (this region's pixels) in a photo of ``shape`` whose other pixels are 0."""
        full = np.zeros((*shape, *part.shape[2:]), part.dtype)
        full[self.y0:self.y1, self.x0:self.x1] = part
        return full


def frame_region(faces: Sequence[Face], frame: Frame, shape: tuple[int, int]) -> Region:
    """The part of the photo any face's frame can show, at the head's largest estimate, plus a margin.

    Several faces give the rectangle around all of theirs, so the matte still tells a face on the
    subject from one on a poster behind. No face: the whole photo.
    """
    h, w = shape
    if not faces:
        return Region(0, 0, w, h)
    top_share, head_share = sum(frame.top_share) / 2, sum(frame.head_share) / 2
    x0, y0, x1, y1 = w, h, 0, 0
    for face in faces:
        head = HEAD_BOXES_MAX * face.height
        tall = head / head_share  # the frame's height in source pixels for the largest head
        wide = tall * frame.width_px / frame.height_px
        margin = REGION_MARGIN * tall
        top = face.y - CROWN_ABOVE_BOX_TOP[1] * face.height - top_share * tall
        bottom = face.y - CROWN_ABOVE_BOX_TOP[0] * face.height - top_share * tall + tall
        x0 = min(x0, math.floor(face.centre_x - wide / 2 - margin))
        x1 = max(x1, math.ceil(face.centre_x + wide / 2 + margin))
        y0 = min(y0, math.floor(top - margin))
        y1 = max(y1, math.ceil(bottom + margin))
    return Region(max(0, x0), max(0, y0), min(w, x1), min(h, y1))


def region_alpha(matte: np.ndarray, region: Region, shape: tuple[int, int]) -> np.ndarray:
    """The region's matte as opacity over the whole photo (0 outside the region)."""
    return region.paste(alpha_from_matte(matte), shape)


def mesh_region(faces: Sequence[fg.MeshFace], frame: Frame, shape: tuple[int, int]) -> Region:
    """``frame_region`` for landmark faces: each face's frame at its largest head (the crown as far
    above the eyes as ``mesh_head`` ever looks) and the preset's smallest head share, plus a margin
    that also covers the corners levelling the eyes turns into the frame."""
    h, w = shape
    x0, y0, x1, y1 = w, h, 0, 0
    for face in faces:
        right, left = face.eye_centres()
        eye_y = float((right[1] + left[1]) / 2)
        chin = float(face.points[fg.CHIN, 1])
        crown = eye_y - fg.CROWN_MAX_OVER_EYE_CHIN * max(1.0, chin - eye_y)
        tall = (chin - crown) / frame.head_share[0]
        wide = tall * frame.width_px / frame.height_px
        margin = REGION_MARGIN * tall
        centre = float((right[0] + left[0]) / 2)
        top = crown - frame.top_share[1] * tall
        x0 = min(x0, math.floor(centre - wide / 2 - margin))
        x1 = max(x1, math.ceil(centre + wide / 2 + margin))
        y0 = min(y0, math.floor(top - margin))
        y1 = max(y1, math.ceil(top + tall + margin))
    return Region(max(0, x0), max(0, y0), min(w, x1), min(h, y1))


def _haar_boxes(found: np.ndarray) -> bool:
    return found.ndim == 2 and found.shape[1] == len(HAAR_COLUMNS)


def faces_region(found: np.ndarray, frame: Frame, shape: tuple[int, int]) -> Region | None:
    """The region to matte for what face-detect found (Haar boxes or landmark rows); None: no face."""
    if _haar_boxes(found):
        faces = faces_from_array(found)
        return frame_region(faces, frame, shape) if faces else None
    meshes = fg.mesh_faces(found) if found.size else []
    return mesh_region(meshes, frame, shape) if meshes else None


def keep_subject(alpha: np.ndarray, face: Face) -> np.ndarray:
    """Only the matte's part joined to the face: islands (a bright lamp, a second person's
    shoulder) vanish, soft hair joined to the head stays."""
    seen = (alpha > 0).astype(np.uint8)
    count, labels = cv2.connectedComponents(seen, connectivity=8)
    if count <= 2:
        return alpha
    h, w = alpha.shape
    x0, x1 = max(0, int(face.x + face.width * 0.25)), min(w, int(math.ceil(face.x + face.width * 0.75)))
    y0, y1 = max(0, int(face.y + face.height * 0.25)), min(h, int(math.ceil(face.y + face.height * 0.75)))
    found = np.unique(labels[y0:y1, x0:x1])
    found = found[found > 0]
    if found.size == 0:
        return alpha
    return np.where(np.isin(labels, found), alpha, 0.0).astype(alpha.dtype)


def foreground(rgb: np.ndarray, alpha: np.ndarray, max_side: int = FOREGROUND_MAX_SIDE) -> np.ndarray:
    """The subject's own colours where the matte is soft (pymatting's ``estimate_foreground_ml``):
    a hair pixel 40 % opaque over a red curtain keeps its hair colour, not the red.

    Solved on the soft edge's bounding box scaled to ``max_side`` at most and scaled back: the
    cost stays bounded at any dpi, and on the sample portraits the edge came out cleaner than
    at full size (docs/id-photos.md has the figures). Solid pixels keep their own colours.
    """
    import numba
    from pymatting import estimate_foreground_ml  # numba-compiled: loaded on first use, not by the router

    # pymatting's resizing steps are numba-parallel; on one thread they cost a few ms, while a
    # thread pool per call spins for each call's worth of CPU on every core (measured: 50-250 ms
    # CPU per photo instead of about 20).
    numba.set_num_threads(1)
    soft = (alpha > 0) & (alpha < 1)
    if not soft.any():
        return rgb
    ys, xs = np.nonzero(soft)
    pad = FOREGROUND_PAD_PX
    y0, y1 = max(0, ys.min() - pad), min(alpha.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(alpha.shape[1], xs.max() + pad + 1)
    part: np.ndarray = rgb[y0:y1, x0:x1].astype(np.float32) / 255.0
    part_alpha: np.ndarray = alpha[y0:y1, x0:x1].astype(np.float32)
    h, w = part_alpha.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        part = cv2.resize(part, size, interpolation=cv2.INTER_AREA)
        part_alpha = cv2.resize(part_alpha, size, interpolation=cv2.INTER_AREA)
    fg = np.clip(estimate_foreground_ml(np.ascontiguousarray(part), np.ascontiguousarray(part_alpha)), 0.0, 1.0) * 255.0
    if scale < 1.0:
        fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)
    out = rgb.astype(np.float32, copy=True)
    here = soft[y0:y1, x0:x1]
    out[y0:y1, x0:x1][here] = fg[here]
    return out


# --- print sheet and encoding -----------------------------------------------------------------


@dataclass(frozen=True)
class SheetLayout:
    width: int
    height: int
    columns: int
    rows: int

    @property
    def copies(self) -> int:
        return self.columns * self.rows


def sheet_layout(photo_w: int, photo_h: int, gap: int = SHEET_GAP_PX) -> SheetLayout:
    """The 4R sheet's orientation that holds the most copies (portrait on a tie)."""
    short, long_ = (round(i * SHEET_DPI) for i in SHEET_INCHES)
    best: SheetLayout | None = None
    for w, h in ((short, long_), (long_, short)):
        layout = SheetLayout(w, h, (w + gap) // (photo_w + gap), (h + gap) // (photo_h + gap))
        if best is None or layout.copies > best.copies:
            best = layout
    assert best is not None
    return best


def make_sheet(photo: np.ndarray, photo_dpi: int) -> np.ndarray:
    """As many copies as fit on a white 4R sheet at 300 dpi, with 1 px grey cut guides."""
    if photo_dpi != SHEET_DPI:  # the photo keeps its printed size on the sheet
        ratio = SHEET_DPI / photo_dpi
        h, w = photo.shape[:2]
        photo = cv2.resize(photo, (max(1, round(w * ratio)), max(1, round(h * ratio))),
                           interpolation=cv2.INTER_AREA if ratio < 1 else cv2.INTER_LANCZOS4)
    ph, pw = photo.shape[:2]
    layout = sheet_layout(pw, ph)
    if layout.copies == 0:
        raise InvalidParams(f"layout=4r: a {pw}x{ph} px photo at {SHEET_DPI} dpi does not fit on a 4x6 in sheet")
    sheet = np.full((layout.height, layout.width, 3), 255, np.uint8)
    grid_w = layout.columns * pw + (layout.columns - 1) * SHEET_GAP_PX
    grid_h = layout.rows * ph + (layout.rows - 1) * SHEET_GAP_PX
    left0, top0 = (layout.width - grid_w) // 2, (layout.height - grid_h) // 2
    lefts = [left0 + c * (pw + SHEET_GAP_PX) for c in range(layout.columns)]
    tops = [top0 + r * (ph + SHEET_GAP_PX) for r in range(layout.rows)]
    # Guides run the full sheet just outside each photo edge: they lie in the gaps, never on a photo.
    for x in {v for left in lefts for v in (left - 1, left + pw)}:
        if 0 <= x < layout.width:
            sheet[:, x] = GUIDE_RGB
    for y in {v for top in tops for v in (top - 1, top + ph)}:
        if 0 <= y < layout.height:
            sheet[y, :] = GUIDE_RGB
    for top in tops:
        for left in lefts:
            sheet[top:top + ph, left:left + pw] = photo
    return sheet


def encode_within(pixels: np.ndarray, output: OutputSpec, dpi: int, max_kb: int | None) -> bytes:
    """Encode with the dpi; with ``max_kb``, the highest JPEG quality <= output.quality that fits."""
    data = encode(pixels, output.format, output.quality, dpi=dpi)
    if max_kb is None or len(data) <= max_kb * 1024:
        return data
    limit = max_kb * 1024
    lo, hi = MIN_JPEG_QUALITY, output.quality - 1
    best: bytes | None = None
    while lo <= hi:  # JPEG size grows with quality, so bisect on it
        q = (lo + hi) // 2
        attempt = encode(pixels, "jpeg", q, dpi=dpi)
        if len(attempt) <= limit:
            best, lo = attempt, q + 1
        else:
            hi = q - 1
    if best is None:
        smallest = len(encode(pixels, "jpeg", MIN_JPEG_QUALITY, dpi=dpi))
        raise MaxKbTooSmall(
            f"the photo is {math.ceil(smallest / 1024)} KiB even at JPEG quality {MIN_JPEG_QUALITY} "
            f"(the lowest allowed), over max_kb={max_kb}; raise max_kb, or lower the size or dpi"
        )
    return best


# --- the composed model ------------------------------------------------------------------------


@dataclass
class _Prepared:
    pixels: np.ndarray
    params: IdPhotoParams
    frame: Frame
    bg: tuple[int, int, int]
    checks: str | None = None  # X-Stylefleet-Checks: the findings on this photo (face-mesh only)


class IdPhotoModel:
    """The ``id-photo`` kind: what to ask the other deployments, and how to put the answers together."""

    params_model = IdPhotoParams
    needs: Mapping[str, str] = KINDS["id-photo"].needs

    def __init__(self) -> None:
        # pymatting's numba kernels load from their cache on first use (seconds): at start, not
        # in the first request.
        foreground(np.zeros((4, 4, 3), np.float32), np.full((4, 4), 0.5, np.float32))

    def decode_side(self, params: dict[str, Any]) -> int:
        return WORK_MAX_SIDE

    def prepare(self, request: ModelRequest) -> _Prepared:
        params: IdPhotoParams = validate_params(IdPhotoParams, request.params)
        output = request.output
        if output is not None:
            if output.format not in ("png", "jpeg"):
                raise InvalidParams(f"format: id-photo writes png or jpeg (they carry the dpi), not {output.format}")
            if params.max_kb is not None and output.format != "jpeg":
                raise InvalidParams("max_kb: needs format=jpeg (only JPEG can trade quality for size)")
        pixels = request.images.get("image")
        if pixels is None:
            raise InvalidParams("the 'image' file is required")
        check_min_side(pixels)
        pixels = resize_to_max_side(pixels, WORK_MAX_SIDE)
        return _Prepared(pixels=pixels, params=params, frame=params.frame(), bg=background(params.bg_color))

    def calls(self, prepared: _Prepared) -> dict[str, ModelRequest]:
        """The faces first; ``output=None`` asks for arrays back, not encoded files."""
        return {"faces": ModelRequest({"image": prepared.pixels}, {})}

    def then(self, prepared: _Prepared, replies: Mapping[str, np.ndarray]) -> dict[str, ModelRequest]:
        """The matte of the region the faces' frames can show (none without a face: compose says no_face)."""
        region = faces_region(np.asarray(replies["faces"]), prepared.frame, prepared.pixels.shape[:2])
        if region is None:
            return {}
        params = {"only_mask": True, "max_side": WORK_MAX_SIDE, **prepared.params.edges()}
        return {"matte": ModelRequest({"image": region.crop(prepared.pixels)}, params)}

    def compose(self, prepared: _Prepared, replies: Mapping[str, np.ndarray]) -> np.ndarray:
        shape = prepared.pixels.shape[:2]
        found = np.asarray(replies["faces"])
        frame = prepared.frame
        if _haar_boxes(found):  # a Haar face-detect: boxes only, the chin a fixed ratio of the box
            faces = faces_from_array(found)
            if not faces:
                raise NoFace(NO_FACE)
            alpha = region_alpha(replies["matte"], frame_region(faces, frame, shape), shape)
            face = choose_face(faces, alpha, prepared.params.face)
            alpha = keep_subject(alpha, face)
            placement = place(estimate_head(face, alpha), frame)
            rgb, a = render(prepared.pixels, alpha, placement, (frame.width_px, frame.height_px))
        else:
            meshes = fg.mesh_faces(found)
            if not meshes:
                raise NoFace(NO_FACE)
            alpha = region_alpha(replies["matte"], mesh_region(meshes, frame, shape), shape)
            rgb, a = self._frame_from_landmarks(prepared, alpha, meshes)
        photo = composite(foreground(rgb, a), a, prepared.bg)
        return make_sheet(photo, frame.dpi) if prepared.params.layout == "4r" else photo

    @staticmethod
    def _frame_from_landmarks(prepared: _Prepared, alpha: np.ndarray, meshes: Sequence[fg.MeshFace]) -> tuple[np.ndarray, np.ndarray]:
        """Judge the face, level the eyes, frame chin to crown, then measure the frame before it leaves."""
        frame, params = prepared.frame, prepared.params
        face = fg.choose_mesh_face(meshes, alpha, params.face)
        x, y, w, h = face.box
        alpha = keep_subject(alpha, Face(x, y, w, h, neighbours=0, profile=False))
        if params.checks != "off":
            quality = fg.judge(prepared.pixels, face, fg.QUALITY_RULES.get(params.size, fg.QUALITY_RULES["custom"]))
            fg.enforce(quality, params.checks)
            prepared.checks = quality.header()
        pixels, levelled_alpha, face, _ = fg.level_eyes(prepared.pixels, alpha, face)
        head = fg.mesh_head(face, levelled_alpha)
        placement = place(Head(crown_y=head.crown_y, chin_y=head.chin_y, centre_x=head.centre_x), frame)
        rgb, a = render(pixels, levelled_alpha, placement, (frame.width_px, frame.height_px))
        into_frame = np.array([[placement.scale, 0.0, placement.dx], [0.0, placement.scale, placement.dy]])
        measured = fg.measure_frame(face.transformed(into_frame), a)
        try:
            fg.check_frame(measured, frame)
        except PhotoOutOfSpec as exc:
            if not head.crown_from_matte:
                exc.message += "; the top of the head is not in the photo (or the backdrop could not be told from it)"
            raise
        return rgb, a

    def encode(self, prepared: _Prepared, pixels: np.ndarray, output: OutputSpec, model_sha256: str) -> EncodedImage:
        dpi = SHEET_DPI if prepared.params.layout == "4r" else prepared.frame.dpi
        data = encode_within(pixels, output, dpi, prepared.params.max_kb)
        h, w = pixels.shape[:2]
        return EncodedImage(data, CONTENT_TYPES[output.format], w, h, model_sha256, checks=prepared.checks)
