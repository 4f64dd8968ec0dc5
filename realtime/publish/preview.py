"""Small JPEG pictures of each stream's latest frame (``--preview-fps N``), for the browser dashboard.

Off by default: a picture is a few kilobytes per stream each time, which is more than all the other
messages of a stream together, and a deployment that only wants predictions should not pay for it.
When on, the engine thread calls :meth:`Previews.publish_due` once per tick; it encodes only when a
stream's period has passed and a newer frame has arrived, and it scales the frame down before
anything else, so one preview costs the engine thread about a millisecond for a VGA frame and a few
for 1080p (a 320 px JPEG).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MAX_SIDE = 320  # px: the longest side of a preview (smaller frames are not scaled up)
QUALITY = 70  # JPEG quality: small files, still readable at dashboard size
LOG_EVERY_S = 30.0  # at most one "preview failed" log line this often


def encode_preview(rgb: np.ndarray, max_side: int = MAX_SIDE, quality: int = QUALITY) -> tuple[bytes, int, int]:
    """``rgb`` (H, W, 3) uint8 as a JPEG no larger than ``max_side`` on its longest side: (jpeg, width, height)."""
    import cv2  # OpenCV is a core dependency, but only the engine with previews on needs it here

    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = np.ascontiguousarray(rgb)
    if scale < 1.0:
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        if scale < 0.5:  # area averaging over a whole 1080p frame costs ~10 ms: a cheap step to twice the size first
            small = cv2.resize(small, (2 * w, 2 * h), interpolation=cv2.INTER_LINEAR)
        small = cv2.resize(small, (w, h), interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)  # converted once small
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {w}x{h} frame as JPEG")
    return buffer.tobytes(), w, h


class Previews:
    """Publishes each stream's newest frame at most ``fps`` times per second (engine thread only)."""

    def __init__(self, publisher: Any, fps: float, max_side: int = MAX_SIDE, quality: int = QUALITY) -> None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"preview fps must be a finite number > 0, got {fps}")
        self.publisher = publisher
        self.period = 1.0 / fps
        self.max_side, self.quality = max_side, quality
        self._last: dict[str, tuple[float, float]] = {}  # stream -> (monotonic sent, frame time sent)
        self.sent = 0
        self.failed = 0
        self._logged_at = -math.inf

    def publish_due(self, streams: Iterable[Any], now: float) -> None:
        """Publish a preview of every stream whose period has passed and that has a newer frame."""
        names = set()
        for stream in streams:
            names.add(stream.name)
            last = self._last.get(stream.name)
            if last is not None and now - last[0] < self.period:
                continue
            frame = stream.aligner.frames.peek_at(math.inf)  # the newest frame, nothing forgotten
            if frame is None or (last is not None and frame.time == last[1]):
                continue
            try:
                jpeg, width, height = encode_preview(frame.rgb, self.max_side, self.quality)
                self.publisher.publish_preview(stream.name, jpeg, width, height, frame.time, frame.capture)
                self.sent += 1
            except Exception:  # a picture must never cost a stream its predictions
                self.failed += 1
                if time.monotonic() - self._logged_at > LOG_EVERY_S:
                    self._logged_at = time.monotonic()
                    log.exception("preview of stream %s failed (%d so far)", stream.name, self.failed)
            self._last[stream.name] = (now, frame.time)
        for name in set(self._last) - names:  # ended streams
            del self._last[name]
