"""The OpenCV window of ``avbind live``: the camera picture with what the engine thinks of it.

Drawn from the engine's own state (the newest frame, the last step's scores, the audio ring) and
its messages (event boundaries), in the main thread, as OpenCV's HighGUI requires.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import Any

import cv2
import numpy as np

from avbind.realtime.scheduler.stream import Stream

WIDTH = 640  # px: the picture is scaled to this width
PANEL = 150  # px of text and bars under the picture
TIMELINE_S = 30.0  # s of event history shown
LEVEL_WINDOW_S = 0.1  # s of audio in the level meter
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167), (120, 120, 120), (255, 255, 255), (150, 60, 190)]  # BGR-agnostic, distinct


def display_available() -> bool:
    """Whether a window can be opened: a display server, and an OpenCV built with HighGUI."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("avbind-probe", cv2.WINDOW_AUTOSIZE)
        cv2.destroyWindow("avbind-probe")
    except cv2.error:
        return False
    return True


class OverlayView:
    def __init__(self, stream: Stream, window: str = "avbind live") -> None:
        self.stream = stream
        self.window = window
        self.names = stream.info.event_names
        self.events: deque[list] = deque(maxlen=200)  # [class, start, end or None while open]
        self._open: dict[int, list] = {}  # event id -> its entry in events

    def on_message(self, message: dict[str, Any]) -> None:
        """Engine listener: keep event boundaries of this stream for the timeline."""
        if message.get("stream") != self.stream.name or message.get("type") != "event":
            return
        if message["event"] == "start":
            entry = [message["class_index"], message["start"], None]
            self.events.append(entry)
            self._open[message["event_id"]] = entry
        elif (entry := self._open.pop(message["event_id"], None)) is not None:
            entry[2] = message["end"]

    def _audio_level_db(self) -> float | None:
        ring = self.stream.aligner.samples
        if ring.start_time is None:
            return None
        n = int(LEVEL_WINDOW_S * ring.rate)
        samples, _ = ring.read(ring.end - n, ring.end)
        rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
        return 20 * np.log10(max(rms, 1e-5))

    def render(self) -> np.ndarray:
        """The window's content as a BGR image."""
        frame = self.stream.aligner.frames.peek_at(float("inf"))
        if frame is not None:
            h, w = frame.rgb.shape[:2]
            picture = cv2.resize(cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR), (WIDTH, max(1, round(h * WIDTH / w))))
            now_t = frame.time
        else:
            picture = np.zeros((WIDTH * 3 // 4, WIDTH, 3), np.uint8)
            cv2.putText(picture, "no video", (20, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
            now_t = self.stream.aligner.audio_end_time() or 0.0
        panel = np.full((PANEL, WIDTH, 3), 24, np.uint8)
        self._draw_scores(panel)
        self._draw_level(panel)
        self._draw_timeline(panel, now_t)
        latencies = list(self.stream.latencies)[-50:]
        if latencies:
            text = f"latency p50 {1000 * float(np.median(latencies)):.0f} ms   steps {self.stream.counters.steps}"
            cv2.putText(panel, text, (330, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (200, 200, 200), 1)
        return np.vstack([picture, panel])

    def _draw_scores(self, panel: np.ndarray) -> None:
        probs = self.stream.outputs.last_probs
        if probs is None:
            return
        for row, i in enumerate(np.argsort(-probs)[:3]):
            y = 20 + 22 * row
            cv2.rectangle(panel, (10, y - 12), (10 + int(120 * probs[i]), y + 4), PALETTE[i % len(PALETTE)], -1)
            cv2.putText(panel, f"{self.names[i]} {probs[i]:.2f}", (136, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 255), 1)

    def _draw_level(self, panel: np.ndarray) -> None:
        level = self._audio_level_db()
        cv2.putText(panel, "audio", (330, 48), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 200, 200), 1)
        cv2.rectangle(panel, (380, 38), (620, 50), (70, 70, 70), 1)
        if level is not None:
            fill = int(np.clip((level + 60) / 60, 0, 1) * 238)
            cv2.rectangle(panel, (381, 39), (381 + fill, 49), (0, 200, 0) if level < -6 else (0, 0, 230), -1)

    def _draw_timeline(self, panel: np.ndarray, now_t: float) -> None:
        top, bottom, left, right = 95, 125, 10, WIDTH - 10
        cv2.rectangle(panel, (left, top), (right, bottom), (70, 70, 70), 1)
        cv2.putText(panel, f"events, last {TIMELINE_S:.0f} s", (left, top - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (200, 200, 200), 1)
        scale = (right - left) / TIMELINE_S
        for c, start, end in self.events:
            end = now_t if end is None else end
            x0 = int(right - (now_t - start) * scale)
            x1 = int(right - (now_t - end) * scale)
            if x1 < left:
                continue
            cv2.rectangle(panel, (max(x0, left), top + 2), (min(x1, right), bottom - 2), PALETTE[c % len(PALETTE)], -1)

    def show(self) -> bool:
        """Draw once; False when the user closed the window or pressed q / Esc."""
        cv2.imshow(self.window, self.render())
        key = cv2.waitKey(1) & 0xFF
        try:
            visible = cv2.getWindowProperty(self.window, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            visible = False
        return visible and key not in (ord("q"), 27)

    def run(self, until: float | None = None, fps: float = 25.0) -> None:
        try:
            while until is None or time.monotonic() < until:
                if not self.show():
                    break
                time.sleep(1.0 / fps)
        finally:
            cv2.destroyWindow(self.window)
