"""The router's figures as Prometheus metrics through ``ray.util.metrics``.

Ray exports them on the metrics port with a ``ray_`` prefix (``ray_stylefleet_...``). Tag values
come from small fixed sets: style and variant names from the config, outcomes from the error
codes. Never a client key or a request id.

Ray exports a gauge's value only for the export interval after it was set, so the shadow gate's
gauge is set again every ``GATE_REFRESH_S`` by a daemon thread, started by the first verdict.
"""

from __future__ import annotations

import math
import threading
import time

from stylefleet.deployments.log import serve_logger

logger = serve_logger(__name__)

LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0]
PSNR_BUCKETS_DB = [10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 50.0]
UNIT_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
MAD_BUCKETS = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
IOU_BUCKETS = [0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999]
ALPHA_MAD_BUCKETS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2]
EDGE_ERROR_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
GATE_REFRESH_S = 5.0


class RayRecorder:
    """Implements ``stylefleet.router.core.Recorder``."""

    def __init__(self) -> None:
        from ray.serve.metrics import Gauge  # adds the replica's tags: each replica judges its own comparisons
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

        self._iou = Histogram(
            "stylefleet_shadow_matte_iou",
            description="shadow vs primary IoU of the mattes' subjects (alpha >= 0.5)",
            boundaries=IOU_BUCKETS,
            tag_keys=shadow_tags,
        )
        self._alpha_mad = Histogram(
            "stylefleet_shadow_alpha_mad",
            description="shadow vs primary mean absolute alpha difference (0-1)",
            boundaries=ALPHA_MAD_BUCKETS,
            tag_keys=shadow_tags,
        )
        self._edge_error = Histogram(
            "stylefleet_shadow_edge_error",
            description="shadow vs primary mean Sobel gradient difference over the primary matte's edge band",
            boundaries=EDGE_ERROR_BUCKETS,
            tag_keys=shadow_tags,
        )
        self._gate = Gauge(
            "stylefleet_shadow_gate",
            description="the shadow's quality gate on this router replica: 1 pass, 0 fail, -1 pending",
            tag_keys=(*shadow_tags, "metric"),  # type: ignore[arg-type]  # Ray annotates it Tuple[str], one key
        )
        self._verdicts: dict[tuple[str, str, str, str], int] = {}  # the gate gauge's last value per series
        self._verdicts_lock = threading.Lock()
        self._refresher: threading.Thread | None = None

    def request(self, style: str, variant: str, outcome: str, seconds: float) -> None:
        self._images.inc(1.0, tags={"style": style, "variant": variant, "outcome": outcome})
        self._latency.observe(seconds, tags={"style": style, "variant": variant})

    def shadow(self, style: str, primary: str, shadow: str, psnr_db: float, ssim: float, mad: float) -> None:
        tags = {"style": style, "primary": primary, "shadow": shadow}
        self._psnr.observe(psnr_db if math.isfinite(psnr_db) else 100.0, tags=tags)
        self._ssim.observe(ssim, tags=tags)
        self._mad.observe(mad, tags=tags)

    def shadow_matte(self, style: str, primary: str, shadow: str, iou: float, alpha_mad: float, edge_error: float) -> None:
        tags = {"style": style, "primary": primary, "shadow": shadow}
        self._iou.observe(iou, tags=tags)
        self._alpha_mad.observe(alpha_mad, tags=tags)
        self._edge_error.observe(edge_error, tags=tags)

    def shadow_gate(self, style: str, primary: str, shadow: str, metric: str, value: int) -> None:
        with self._verdicts_lock:
            self._verdicts[(style, primary, shadow, metric)] = value
            if self._refresher is None:
                self._refresher = threading.Thread(target=self._refresh_gates, name="stylefleet-gate-gauge", daemon=True)
                self._refresher.start()
        self._set_gate((style, primary, shadow, metric), value)

    def _set_gate(self, key: tuple[str, str, str, str], value: int) -> None:
        self._gate.set(value, tags=dict(zip(("style", "primary", "shadow", "metric"), key)))

    def _refresh_gates(self) -> None:
        while True:
            time.sleep(GATE_REFRESH_S)  # a period, not a wait for something: the process's lifetime
            with self._verdicts_lock:
                verdicts = list(self._verdicts.items())
            try:
                for key, value in verdicts:
                    self._set_gate(key, value)
            except Exception:  # noqa: BLE001 - a missed refresh is retried, never fatal
                logger.debug("gate gauge refresh failed", exc_info=True)
