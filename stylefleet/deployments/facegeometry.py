"""ID-photo geometry and quality from face landmarks (``face-mesh`` rows). Pure compute, no Ray.

- **Head.** The chin is the mesh's jaw point; the eye line joins the two eye centres; the photo is
  turned about the eyes' midpoint so that they are level (roll corrected before framing). The
  crown is the topmost matte row of the head's own connected component above the face: islands
  of old background above the head are not hair. Where the component reaches the photo's top
  edge, or the matte misses the head, the crown is estimated from the face (``CROWN_OVER_EYE_CHIN``).
- **Self-check.** After composing, the frame is measured again (the landmarks carried through the
  same transform, the crown found in the frame's own matte) and must lie in the preset's bands.
- **Checks.** What ICAO 9303 / ISO/IEC 19794-5 judge and ISO/IEC 29794-5 (OFIQ, BSI's reference
  implementation) measures: pose, eyes open, mouth closed, face inside the photo, face size in
  source pixels, sharpness. Each finding has a stable code; ``QUALITY_RULES`` holds the limits per
  preset, as data. docs/id-photos.md cites the figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from stylefleet.deployments.landmarks import HEADER, MESH_POINTS
from stylefleet.deployments.presets import PRESETS, Frame
from stylefleet.errors import (
    EyesClosed,
    FaceCutOff,
    FaceTooSmall,
    HeadTilted,
    ImageBlurry,
    MouthOpen,
    MultipleFaces,
    NoFace,
    PhotoOutOfSpec,
    PoseNotFrontal,
    UnusablePhoto,
)

# MediaPipe canonical face mesh indices (the subject's right is the photo's left).
CHIN, FOREHEAD = 152, 10
RIGHT_EYE = (33, 133, 159, 145)  # outer corner, inner corner, upper lid, lower lid
LEFT_EYE = (263, 362, 386, 374)
LIP_UPPER_INNER, LIP_LOWER_INNER, MOUTH_RIGHT, MOUTH_LEFT = 13, 14, 61, 291
CHEEK_RIGHT, CHEEK_LEFT = 234, 454
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)

# Crown above the eye line, in eye-to-chin distances, where the matte cannot say (calibrated on the
# portraits whose crown the matte finds: docs/id-photos.md); and the most the matte may claim
# (above this, the head's component has run into something that is not the head).
CROWN_OVER_EYE_CHIN = 1.0
CROWN_MAX_OVER_EYE_CHIN = 2.0
CROWN_MIN_COVERAGE = 0.15  # share of the head's band a row needs to count as hair
LEVEL_REACH = 3.2  # the crop levelled: a passport frame reaches about 2 eye-to-chin distances from the eyes
ROLL_LEVEL_DEG = 0.5  # below this the photo is not turned (a resample for nothing)
# The mesh's forehead-to-chin line leans back this much on a level head (median of the frontal
# calibration portraits): pitch is measured from it.
NEUTRAL_PITCH_DEG = -3.5
SHARPNESS_EYE_PX = 64  # the face is resampled to this inter-eye distance before sharpness is measured


@dataclass(frozen=True)
class MeshFace:
    """One ``face-mesh`` row: the detector's box and score, and 468 points (x, y, z) in photo pixels."""

    box: tuple[float, float, float, float]
    score: float
    points: np.ndarray

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    def eye_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """The subject's right and left eye centres (mean of the corners and lids)."""
        return self.points[list(RIGHT_EYE), :2].mean(axis=0), self.points[list(LEFT_EYE), :2].mean(axis=0)

    def eye_distance(self) -> float:
        right, left = self.eye_centres()
        return float(np.hypot(*(left - right)))

    def roll_deg(self) -> float:
        right, left = self.eye_centres()
        return math.degrees(math.atan2(left[1] - right[1], left[0] - right[0]))

    def transformed(self, m: np.ndarray) -> MeshFace:
        """The face under a 2x3 similarity ``m`` (z scaled with it)."""
        xy = self.points[:, :2] @ m[:, :2].T + m[:, 2]
        z = self.points[:, 2:] * math.hypot(m[0, 0], m[0, 1])
        x, y, w, h = self.box
        corners = np.array([[x, y], [x + w, y + h]]) @ m[:, :2].T + m[:, 2]
        (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
        return MeshFace((float(x0), float(y0), float(x1 - x0), float(y1 - y0)), self.score, np.column_stack([xy, z]))


def mesh_faces(rows: np.ndarray) -> list[MeshFace]:
    rows = np.asarray(rows, np.float32).reshape(-1, len(HEADER) + 3 * MESH_POINTS)
    return [
        MeshFace(tuple(float(v) for v in r[:4]), float(r[4]), r[len(HEADER):].reshape(MESH_POINTS, 3).astype(np.float64))  # type: ignore[arg-type]
        for r in rows
    ]


def on_subject(face: MeshFace, alpha: np.ndarray) -> bool:
    """A face counts only if the matte holds it: a face on a poster behind the person does not."""
    h, w = alpha.shape
    x, y, bw, bh = face.box
    x0, x1 = int(x + bw * 0.25), int(math.ceil(x + bw * 0.75))
    y0, y1 = int(y + bh * 0.25), int(math.ceil(y + bh * 0.75))
    core = alpha[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    return core.size > 0 and float(core.mean()) >= 0.5


def choose_mesh_face(faces: Sequence[MeshFace], alpha: np.ndarray, policy: str) -> MeshFace:
    """The one face on the subject; several is an error unless ``policy`` is ``largest``."""
    found = [f for f in faces if on_subject(f, alpha)]
    if not found:
        raise NoFace("no face was found in the photo; send a portrait, face to the camera, not too small")
    if len(found) > 1 and policy != "largest":
        raise MultipleFaces(
            f"{len(found)} faces were found; send a photo of one person, or set face=largest to use the largest"
        )
    return max(found, key=lambda f: f.area)


# --- roll --------------------------------------------------------------------------------------


def level_eyes(rgb: np.ndarray, alpha: np.ndarray, face: MeshFace) -> tuple[np.ndarray, np.ndarray, MeshFace, np.ndarray]:
    """The photo, matte and face turned about the eyes' midpoint so that the eyes are level.

    Only the part of the photo any frame can show is turned (``LEVEL_REACH`` eye-to-chin distances
    about the eyes: a whole 2048 px photo costs 0.2 s on 2 cores, this crop a tenth). Returns the
    turned crop, its matte, the face in its pixels and the 2x3 transform from the photo to the crop
    (a plain shift when the roll is under ``ROLL_LEVEL_DEG``). Outside the photo the matte is 0
    (background), so turned-in corners take the backdrop colour.
    """
    right, left = face.eye_centres()
    cx, cy = float((right[0] + left[0]) / 2), float((right[1] + left[1]) / 2)
    reach = LEVEL_REACH * max(float(face.points[CHIN, 1]) - cy, face.eye_distance())
    h, w = alpha.shape
    x0, y0 = max(0, int(cx - reach)), max(0, int(cy - reach))
    x1, y1 = min(w, int(math.ceil(cx + reach))), min(h, int(math.ceil(cy + reach)))
    rgb, alpha = rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1]
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]])
    roll = face.roll_deg()
    if abs(roll) < ROLL_LEVEL_DEG or x1 <= x0 or y1 <= y0:
        return rgb, alpha, face.transformed(shift), shift
    turn = cv2.getRotationMatrix2D((cx - x0, cy - y0), roll, 1.0)
    size = (x1 - x0, y1 - y0)
    turned_rgb = cv2.warpAffine(rgb, turn, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    turned_alpha = cv2.warpAffine(alpha, turn, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    m = np.vstack([turn, [0, 0, 1]]) @ np.vstack([shift, [0, 0, 1]])
    return turned_rgb, turned_alpha, face.transformed(m[:2]), m[:2]


# --- the head --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeshHead:
    """Where the head is in the (levelled) photo, in its pixels; ``crown_from_matte`` says how the
    crown was found (False: estimated from the face, the matte could not say)."""

    crown_y: float
    chin_y: float
    centre_x: float
    eye_y: float
    crown_from_matte: bool

    @property
    def height(self) -> float:
        return self.chin_y - self.crown_y


def head_band(face: MeshFace) -> tuple[float, float]:
    """The columns the crown is looked for in: the middle half of the face's width."""
    xl, xr = face.points[CHEEK_RIGHT, 0], face.points[CHEEK_LEFT, 0]
    mid, half = (xl + xr) / 2, abs(xr - xl) / 4
    return float(mid - half), float(mid + half)


def crown_row(alpha: np.ndarray, face: MeshFace, *, limit_y: float) -> int | None:
    """The topmost row of the head's connected matte component, in the head's band, above the
    forehead; None when the matte has no component at the face. Rows above ``limit_y`` are ignored."""
    h, w = alpha.shape
    solid = (alpha >= 0.5).astype(np.uint8)
    forehead = face.points[FOREHEAD]
    fx, fy = int(np.clip(forehead[0], 0, w - 1)), int(np.clip(forehead[1], 0, h - 1))
    x0, x1 = (int(np.clip(v, 0, w)) for v in head_band(face))
    if x1 <= x0:
        return None
    top = int(np.clip(math.floor(limit_y), 0, h))
    _, labels = cv2.connectedComponents(solid[top:fy + 1], connectivity=4)
    label = int(labels[fy - top, fx]) if fy >= top else 0
    if label == 0:
        return None
    band = labels[:, x0:x1] == label
    rows = np.flatnonzero(band.mean(axis=1) >= CROWN_MIN_COVERAGE)
    return top + int(rows[0]) if rows.size else None


def mesh_head(face: MeshFace, alpha: np.ndarray) -> MeshHead:
    """Chin from the jaw point, crown from the head's matte component (or estimated), centre between the cheeks."""
    right, left = face.eye_centres()
    eye_y = float((right[1] + left[1]) / 2)
    chin = float(face.points[CHIN, 1])
    eye_chin = chin - eye_y
    estimate = eye_y - CROWN_OVER_EYE_CHIN * eye_chin
    highest = eye_y - CROWN_MAX_OVER_EYE_CHIN * eye_chin
    row = crown_row(alpha, face, limit_y=highest)
    forehead = float(face.points[FOREHEAD, 1])
    # The matte's crown counts if it is above the forehead, within reach of the face, and the head
    # does not run into the photo's top edge (then the real crown is above the photo).
    usable = row is not None and row < forehead and row > max(0.0, highest) + 0.5
    crown = float(row) if usable and row is not None else min(estimate, forehead)
    centre = float((face.points[CHEEK_RIGHT, 0] + face.points[CHEEK_LEFT, 0]) / 2)
    return MeshHead(crown_y=crown, chin_y=chin, centre_x=centre, eye_y=eye_y, crown_from_matte=usable)


# --- the output's own measure --------------------------------------------------------------------


@dataclass(frozen=True)
class FrameMeasure:
    """The composed frame, measured: shares of its height, as the presets state them."""

    head_share: float
    top_share: float
    eye_share: float  # eye line from the bottom edge, over the height
    centre_offset: float  # face centre from the frame's middle, over the width


def measure_frame(face: MeshFace, alpha: np.ndarray) -> FrameMeasure:
    """Measure a composed frame from its own matte (crown) and the landmarks carried into it (chin, eyes)."""
    h, w = alpha.shape
    x0, x1 = (int(np.clip(v, 0, w)) for v in head_band(face))
    band = alpha[:, x0:x1] >= 0.5 if x1 > x0 else np.zeros((h, 1), bool)
    forehead = int(np.clip(face.points[FOREHEAD, 1], 0, h))
    rows = np.flatnonzero(band[:forehead].mean(axis=1) >= CROWN_MIN_COVERAGE) if forehead > 0 else np.array([], int)
    crown = float(rows[0]) if rows.size else float(face.points[FOREHEAD, 1])
    right, left = face.eye_centres()
    chin = float(face.points[CHIN, 1])
    centre = float((face.points[CHEEK_RIGHT, 0] + face.points[CHEEK_LEFT, 0]) / 2)
    return FrameMeasure(
        head_share=(chin - crown) / h,
        top_share=crown / h,
        eye_share=1.0 - float((right[1] + left[1]) / 2) / h,
        centre_offset=(centre - w / 2) / w,
    )


def check_frame(measured: FrameMeasure, frame: Frame, tolerance_px: float = 1.5) -> None:
    """Raise ``PhotoOutOfSpec`` unless the frame's head and crown margin are in the preset's bands."""
    slack = tolerance_px / frame.height_px
    problems = []
    lo, hi = frame.head_share
    if not lo - slack <= measured.head_share <= hi + slack:
        problems.append(f"chin to crown is {measured.head_share:.3f} of the height, the size asks {lo:.3f}-{hi:.3f}")
    lo, hi = frame.top_share
    if not lo - slack <= measured.top_share <= hi + slack:
        problems.append(f"crown to top edge is {measured.top_share:.3f} of the height, the size asks {lo:.3f}-{hi:.3f}")
    if problems:
        raise PhotoOutOfSpec("the composed photo was measured out of its size's rules: " + "; ".join(problems))


# --- quality checks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityRules:
    """Limits a preset's photo is judged by (see docs/id-photos.md for each figure's source)."""

    max_yaw_deg: float = 8.0
    max_pitch_deg: float = 10.0
    max_roll_deg: float = 8.0
    min_eyes_open: float = 0.02  # eyelid gap over inter-eye distance (OFIQ EyesOpen, x0 = 0.02)
    max_mouth_open: float = 0.2  # inner-lip gap over eye-to-mouth distance (OFIQ MouthClosed, x0 = 0.2)
    min_eye_distance_px: float = 90.0  # between eye centres, in the source photo (ISO/IEC 19794-5 full frontal)
    min_sharpness: float = 60.0  # variance of the Laplacian at SHARPNESS_EYE_PX between the eyes (calibrated)
    max_outside_share: float = 0.0  # share of the face outline allowed outside the photo


# Every preset is judged by the same ISO/IEC 19794-5 / OFIQ limits: none of the authorities in
# presets.py sets a pose, eye or mouth figure of its own. A preset that does gets its own entry.
QUALITY_RULES: dict[str, QualityRules] = {name: QualityRules() for name in [*PRESETS, "custom"]}


@dataclass(frozen=True)
class Finding:
    code: str
    message: str


@dataclass(frozen=True)
class Quality:
    """What the checks measured on the source face, and what they found."""

    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    eyes_open: float
    mouth_open: float
    eye_distance_px: float
    sharpness: float
    outside_share: float
    findings: list[Finding] = field(default_factory=list)

    def header(self) -> str:
        """``X-Stylefleet-Checks``: the codes found, comma-separated, or ``pass``."""
        return ",".join(f.code for f in self.findings) or "pass"


def head_pose(face: MeshFace) -> tuple[float, float, float]:
    """Yaw, pitch, roll in degrees from the mesh's 3D points (weak perspective).

    Yaw: the cheek-to-cheek line's depth slope; pitch: the forehead-to-chin line's, less the
    canonical face's own slope (``NEUTRAL_PITCH_DEG``); roll: the eye line's tilt.
    """
    p = face.points
    cheeks = p[CHEEK_LEFT] - p[CHEEK_RIGHT]
    yaw = math.degrees(math.atan2(cheeks[2], math.hypot(cheeks[0], cheeks[1])))
    vertical = p[CHIN] - p[FOREHEAD]
    pitch = math.degrees(math.atan2(-vertical[2], math.hypot(vertical[0], vertical[1]))) - NEUTRAL_PITCH_DEG
    return yaw, pitch, face.roll_deg()


def eyes_open(face: MeshFace) -> float:
    """The smaller eye's lid gap over the inter-eye distance (OFIQ's EyesOpen measure)."""
    p = face.points
    gaps = [np.hypot(*(p[e[2], :2] - p[e[3], :2])) for e in (RIGHT_EYE, LEFT_EYE)]
    return float(min(gaps) / max(face.eye_distance(), 1e-6))


def mouth_open(face: MeshFace) -> float:
    """Inner-lip gap over the distance from the eyes' midpoint to the mouth's centre (OFIQ's MouthClosed)."""
    p = face.points
    gap = float(np.hypot(*(p[LIP_UPPER_INNER, :2] - p[LIP_LOWER_INNER, :2])))
    right, left = face.eye_centres()
    mouth = (p[MOUTH_RIGHT, :2] + p[MOUTH_LEFT, :2]) / 2
    return gap / max(float(np.hypot(*(mouth - (right + left) / 2))), 1e-6)


def outside_share(face: MeshFace, shape: tuple[int, ...]) -> float:
    """Share of the face outline's points that lie outside the photo."""
    h, w = shape[:2]
    oval = face.points[list(FACE_OVAL), :2]
    outside = (oval[:, 0] < 0) | (oval[:, 0] > w - 1) | (oval[:, 1] < 0) | (oval[:, 1] > h - 1)
    return float(outside.mean())


def sharpness(rgb: np.ndarray, face: MeshFace) -> float:
    """Variance of the Laplacian over the face (eyes to mouth), the face scaled to a fixed eye distance."""
    scale = SHARPNESS_EYE_PX / max(face.eye_distance(), 1e-6)
    oval = face.points[list(FACE_OVAL), :2]
    x0, y0 = np.floor(oval.min(axis=0)).astype(int)
    x1, y1 = np.ceil(oval.max(axis=0)).astype(int)
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return 0.0
    crop = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1, :3]), cv2.COLOR_RGB2GRAY)
    size = (max(4, round((x1 - x0) * scale)), max(4, round((y1 - y0) * scale)))
    crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    # the middle of the face: inside the outline, away from the hair and backdrop at its edge
    ch, cw = crop.shape
    core = crop[ch // 5: ch - ch // 8, cw // 5: cw - cw // 5]
    return float(cv2.Laplacian(core, cv2.CV_64F).var())


def judge(rgb: np.ndarray, face: MeshFace, rules: QualityRules) -> Quality:
    """Measure the source face and list what falls outside ``rules``."""
    yaw, pitch, roll = head_pose(face)
    q = Quality(
        yaw_deg=yaw,
        pitch_deg=pitch,
        roll_deg=roll,
        eyes_open=eyes_open(face),
        mouth_open=mouth_open(face),
        eye_distance_px=face.eye_distance(),
        sharpness=sharpness(rgb, face),
        outside_share=outside_share(face, rgb.shape),
    )
    found = q.findings
    if q.outside_share > rules.max_outside_share:
        found.append(Finding("face_cut_off", f"{q.outside_share:.0%} of the face's outline is outside the photo"))
    if abs(yaw) > rules.max_yaw_deg or abs(pitch) > rules.max_pitch_deg:
        found.append(Finding("pose_not_frontal", f"the head is turned {yaw:+.0f} degrees and tipped {pitch:+.0f} degrees; "
                             f"the size allows {rules.max_yaw_deg:g} and {rules.max_pitch_deg:g}"))
    if abs(roll) > rules.max_roll_deg:
        found.append(Finding("head_tilted", f"the head is tilted {roll:+.0f} degrees (levelled in the photo); "
                             f"the size allows {rules.max_roll_deg:g}"))
    if q.eyes_open < rules.min_eyes_open:
        found.append(Finding("eyes_closed", f"eyelid gap {q.eyes_open:.3f} of the eye distance, under {rules.min_eyes_open:g}"))
    if q.mouth_open > rules.max_mouth_open:
        found.append(Finding("mouth_open", f"inner-lip gap {q.mouth_open:.2f} of the eye-to-mouth distance, over {rules.max_mouth_open:g}"))
    if q.eye_distance_px < rules.min_eye_distance_px:
        found.append(Finding("face_too_small", f"{q.eye_distance_px:.0f} px between the eyes in the photo; "
                             f"the size wants at least {rules.min_eye_distance_px:g}"))
    if q.sharpness < rules.min_sharpness:
        found.append(Finding("image_blurry", f"face sharpness {q.sharpness:.0f}, under {rules.min_sharpness:g}"))
    return q


ALWAYS_REFUSED = frozenset({"face_cut_off"})  # with checks=warn too: part of the face would be backdrop


def enforce(quality: Quality, mode: str) -> None:
    """``strict``: the first finding becomes a typed 422. ``warn``: only ``ALWAYS_REFUSED`` findings
    do, the others ride along in the report. ``off``: nothing is judged."""
    if mode == "off" or not quality.findings:
        return
    if mode == "warn":
        blocking = [f for f in quality.findings if f.code in ALWAYS_REFUSED]
        if blocking:
            raise STRICT_ERRORS[blocking[0].code](blocking[0].message)
        return
    detail = "; ".join(f"{f.code}: {f.message}" for f in quality.findings)
    raise STRICT_ERRORS[quality.findings[0].code](detail)


STRICT_ERRORS: dict[str, type[UnusablePhoto]] = {
    "face_cut_off": FaceCutOff,
    "pose_not_frontal": PoseNotFrontal,
    "head_tilted": HeadTilted,
    "eyes_closed": EyesClosed,
    "mouth_open": MouthOpen,
    "face_too_small": FaceTooSmall,
    "image_blurry": ImageBlurry,
}
