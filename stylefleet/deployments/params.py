"""Every model kind's request params, as pydantic models: what a style fixes and a client may set.

Pure data and validation (numpy, pydantic, the colour parser): no ONNX Runtime, no torch, so the
app spec checks a config's fixed params against them without loading any runtime. Each model
module re-exports its own (``stylefleet.deployments.stylize.StylizeParams`` is this module's).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stylefleet.deployments.presets import Frame, SizeName, frame_for
from stylefleet.errors import InvalidParams
from stylefleet.imageio import parse_color

NUM_STYLES = 26
MIN_SIDE = 32

# -- multistyle26 ----------------------------------------------------------------------------------


class StylizeParams(BaseModel):
    """Parameters of the built-in styles. ``style`` is fixed by each style in the config."""

    model_config = ConfigDict(extra="forbid")

    style: str = Field(
        "0",
        description="style index 0-25, or a blend such as '3:0.5,12:0.5' (fixed per style)",
    )
    strength: float = Field(1.0, ge=0.0, le=1.0, description="1 = full style, 0 = the original photo")
    max_side: int = Field(1024, ge=MIN_SIDE, le=4096, description="longer side of the output, in pixels")
    preserve_color: bool = Field(False, description="keep the photo's colours, take the style's brushwork")

    @field_validator("style", mode="before")
    @classmethod
    def _style_text(cls, value: object) -> str:
        return str(value)

    @field_validator("style")
    @classmethod
    def _style_parses(cls, value: str) -> str:
        style_weights(value)
        return value


def style_weights(spec: str) -> np.ndarray:
    """'7' or '3:0.5,12:0.5' -> a normalised float32 vector of 26 weights."""
    weights = np.zeros(NUM_STYLES, dtype=np.float32)
    for part in spec.split(","):
        index_text, _, weight_text = part.strip().partition(":")
        try:
            index = int(index_text)
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise ValueError(f"bad style {spec!r}; use e.g. '7' or '3:0.5,12:0.5'") from None
        if not 0 <= index < NUM_STYLES:
            raise ValueError(f"style index must be 0 to {NUM_STYLES - 1}, got {index}")
        weights[index] += weight
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("style weights must be non-negative and not all zero")
    return weights / weights.sum()


# -- arbitrary (restyle) ---------------------------------------------------------------------------


class RestyleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strength: float = Field(1.0, ge=0.0, le=1.0, description="1 = the style image's style, 0 = the photo's own")
    max_side: int = Field(1024, ge=MIN_SIDE, le=4096, description="longer side of the output, in pixels")
    preserve_color: bool = Field(False, description="keep the photo's colours, take the style's brushwork")


# -- u2netp (remove-background) --------------------------------------------------------------------


class EdgeParams(BaseModel):
    """The matte's edge controls; id-photo passes its own to the matte it asks for."""

    model_config = ConfigDict(extra="forbid")

    alpha_matting: bool = Field(
        False, description="refine the edge (hair, fur, soft outlines) by closed-form matting on a trimap from the matte; slower"
    )
    threshold: int | None = Field(
        None, ge=1, le=255, description="hard edge: opaque where the matte is at least this (0-255), transparent elsewhere"
    )
    erode_px: int = Field(0, ge=0, le=64, description="shrink the subject by this many pixels (drops a fringe of old background)")
    feather_px: float = Field(0.0, ge=0.0, le=64.0, description="soften the edge: Gaussian blur of the alpha, sigma in pixels")

    def edges(self) -> dict[str, object]:
        """Just the edge controls (a subclass's other params left out)."""
        return {name: getattr(self, name) for name in EdgeParams.model_fields}


class RemoveBackgroundParams(EdgeParams):

    bg_color: str | None = Field(
        None, description="flatten onto this colour (#rrggbb, 'white' or 'black'); default: transparent"
    )
    max_side: int = Field(4096, ge=8, le=8192, description="longer side of the output, in pixels")
    only_mask: bool = Field(False, description="return the matte itself (white = subject) instead of the cutout")

    @field_validator("bg_color")
    @classmethod
    def _colour(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_color(value)
            return value
        return None


# -- haar-face --------------------------------------------------------------------------------------


class FaceDetectParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_side: int = Field(512, ge=128, le=2048, description="longer side the photo is scaled down to before detection")
    min_neighbors: int = Field(8, ge=1, le=64, description="overlapping detections a face needs (higher: fewer false faces)")


# -- face-mesh --------------------------------------------------------------------------------------


class FaceMeshParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_score: float = Field(0.5, ge=0.05, le=0.99, description="BlazeFace confidence a face needs (MediaPipe's default 0.5)")
    max_faces: int = Field(4, ge=1, le=16, description="the most faces given landmarks, highest scores first")


# -- id-photo ---------------------------------------------------------------------------------------

# Named backgrounds. Blue and red are the usual ID-photo backdrops (Chinese ID and visa photos).
BG_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "blue": (67, 142, 219),  # #438edb
    "red": (255, 0, 0),  # #ff0000
}
FRAME_PX_LIMITS = (64, 4096)


class IdPhotoParams(EdgeParams):
    """The photo's size, background and layout; the matte's edge controls come from ``EdgeParams``."""

    model_config = ConfigDict(extra="forbid")

    size: SizeName = Field("passport", description="size preset (README lists them with their standards), or custom")
    width_mm: float | None = Field(None, ge=5, le=300, description="size=custom: photo width in mm (with height_mm)")
    height_mm: float | None = Field(None, ge=5, le=300, description="size=custom: photo height in mm (with width_mm)")
    width_px: int | None = Field(
        None, ge=FRAME_PX_LIMITS[0], le=FRAME_PX_LIMITS[1], description="size=custom: width in pixels (with height_px)"
    )
    height_px: int | None = Field(
        None, ge=FRAME_PX_LIMITS[0], le=FRAME_PX_LIMITS[1], description="size=custom: height in pixels (with width_px)"
    )
    bg_color: str = Field("white", description="white (255,255,255), blue (67,142,219), red (255,0,0), or #rrggbb")
    dpi: int = Field(300, ge=72, le=1200, description="print resolution: sets the pixel size of mm presets, written in the file")
    max_kb: int | None = Field(None, ge=1, le=20480, description="largest file in KiB (format=jpeg): the quality is lowered to fit")
    layout: Literal["none", "4r"] = Field("none", description="4r: as many copies as fit on a 4x6 in sheet at 300 dpi, with cut guides")
    face: Literal["single", "largest"] = Field("single", description="single: several faces is an error; largest: use the largest")
    checks: Literal["strict", "warn", "off"] = Field(
        "warn",
        description="quality checks (pose, eyes, mouth, face size, sharpness): strict refuses with the finding's code; "
        "warn returns the photo with the findings in X-Stylefleet-Checks (a face cut off is refused); off skips them",
    )

    @field_validator("bg_color")
    @classmethod
    def _colour(cls, value: str) -> str:
        background(value)
        return value

    @model_validator(mode="after")
    def _size(self) -> IdPhotoParams:
        sizes = {"width_mm": self.width_mm, "height_mm": self.height_mm, "width_px": self.width_px, "height_px": self.height_px}
        given = [name for name, value in sizes.items() if value is not None]
        if self.size != "custom":
            if given:
                raise ValueError(f"{', '.join(given)} only go with size=custom")
            return self
        if given not in (["width_mm", "height_mm"], ["width_px", "height_px"]):
            raise ValueError("size=custom needs width_mm and height_mm, or width_px and height_px (one pair)")
        frame = self.frame()
        lo, hi = FRAME_PX_LIMITS
        if not (lo <= frame.width_px <= hi and lo <= frame.height_px <= hi):
            raise ValueError(f"the custom size is {frame.width_px}x{frame.height_px} px at {self.dpi} dpi; each side must be {lo}-{hi} px")
        return self

    def frame(self) -> Frame:
        return frame_for(
            self.size, self.dpi, width_mm=self.width_mm, height_mm=self.height_mm, width_px=self.width_px, height_px=self.height_px
        )


def background(value: str) -> tuple[int, int, int]:
    named = BG_COLORS.get(value.strip().lower())
    if named is not None:
        return named
    try:
        return parse_color(value)
    except InvalidParams:
        raise InvalidParams(f"bg_color {value!r} is not a colour; use white, blue, red or #rrggbb") from None


# -- stable-diffusion -------------------------------------------------------------------------------

PipelineKind = Literal["text-to-image", "img2img", "controlnet-canny"]
MAX_SEED = 2**32 - 1
SIZE_MULTIPLE = 8  # diffusers needs width and height divisible by 8


class DiffusionParams(BaseModel):
    """A preset (fixed by the style) plus what a request may set: ``prompt``, ``seed``, ``steps``."""

    model_config = ConfigDict(extra="forbid")

    pipeline: PipelineKind = Field("text-to-image", description="which diffusers pipeline the preset runs")
    prompt_template: str = Field("{prompt}", max_length=2000, description="the prompt; {prompt} is replaced by the subject")
    negative_prompt: str = Field("", max_length=2000, description="what the image should not show")
    prompt: str = Field("", max_length=1000, description="the subject, put into the preset's prompt template")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="noise seed: the same seed, prompt and preset give the same image")
    steps: int = Field(25, ge=1, le=200, description="denoising steps, within the preset's min_steps..max_steps")
    min_steps: int = Field(1, ge=1, le=200, description="fewest steps a request may ask for")
    max_steps: int = Field(50, ge=1, le=200, description="most steps a request may ask for")
    guidance_scale: float = Field(7.5, ge=0.0, le=30.0, description="classifier-free guidance")
    strength: float = Field(0.75, gt=0.0, le=1.0, description="img2img: how far from the input image")
    controlnet_scale: float = Field(1.0, ge=0.0, le=2.0, description="controlnet-canny: weight of the edges")
    canny_low: int = Field(100, ge=0, le=1000, description="controlnet-canny: Canny's lower hysteresis threshold")
    canny_high: int = Field(200, ge=0, le=1000, description="controlnet-canny: Canny's upper hysteresis threshold")
    width: int = Field(
        512, ge=64, le=2048, multiple_of=SIZE_MULTIPLE, description="output width; with an input image, the box it is fitted into"
    )
    height: int = Field(
        512, ge=64, le=2048, multiple_of=SIZE_MULTIPLE, description="output height; with an input image, the box it is fitted into"
    )

    @model_validator(mode="after")
    def _steps_within_bounds(self) -> DiffusionParams:
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) is above max_steps ({self.max_steps})")
        if not self.min_steps <= self.steps <= self.max_steps:
            raise ValueError(f"steps: {self.steps} is outside this style's bounds {self.min_steps}..{self.max_steps}")
        if self.canny_low > self.canny_high:
            raise ValueError("canny_low is above canny_high")
        return self

    def full_prompt(self) -> str:
        return self.prompt_template.replace("{prompt}", self.prompt.strip())


# -- AnimeGANv2 -------------------------------------------------------------------------------------


class AnimeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    face_crop: bool | None = Field(None, description="crop the largest face, centred, to 512x512 (default: on for the face models)")
    max_side: int = Field(1024, ge=32, le=4096, description="longer side of the output, in pixels (no face crop)")
