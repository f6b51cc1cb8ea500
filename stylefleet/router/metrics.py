"""The router's figures as Prometheus metrics through ``ray.util.metrics``.

Ray exports them on the metrics port with a ``ray_`` prefix (``ray_stylefleet_...``). Tag values
come from small fixed sets: style and variant names from the config, outcomes from the error
codes. Never a client key or a request id.
"""

from __future__ import annotations

import math

LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0]
PSNR_BUCKETS_DB = [10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 50.0]
UNIT_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
MAD_BUCKETS = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]


class RayRecorder:
    """Implements ``stylefleet.router.core.Recorder``."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        self._latency = Histogram(
            "stylefleet_request_latency_seconds",
            description="time from request to response in the router, by style and variant",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("style", "variant"),
        )
        self._images = Counter(
            "stylefleet_images",
            description="images processed per style and variant; outcome is 'ok' or the error code",
            tag_keys=("style", "variant", "outcome"),
        )
        shadow_tags = ("style", "primary", "shadow")
        self._psnr = Histogram(
            "stylefleet_shadow_psnr_db", description="shadow vs primary PSNR", boundaries=PSNR_BUCKETS_DB, tag_keys=shadow_tags
        )
        self._ssim = Histogram(
            "stylefleet_shadow_ssim", description="shadow vs primary SSIM", boundaries=UNIT_BUCKETS, tag_keys=shadow_tags
        )
        self._mad = Histogram(
            "stylefleet_shadow_mean_abs_diff",
            description="shadow vs primary mean absolute difference (0-255)",
            boundaries=MAD_BUCKETS,
            tag_keys=shadow_tags,
        )

    def request(self, style: str, variant: str, outcome: str, seconds: float) -> None:
        self._images.inc(1.0, tags={"style": style, "variant": variant, "outcome": outcome})
        self._latency.observe(seconds, tags={"style": style, "variant": variant})

    def shadow(self, style: str, primary: str, shadow: str, psnr_db: float, ssim: float, mad: float) -> None:
        tags = {"style": style, "primary": primary, "shadow": shadow}
        self._psnr.observe(psnr_db if math.isfinite(psnr_db) else 100.0, tags=tags)
        self._ssim.observe(ssim, tags=tags)
        self._mad.observe(mad, tags=tags)
