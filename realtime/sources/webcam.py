"""A camera (or anything OpenCV's ``VideoCapture`` opens) as a video-only live source.

``time`` is ``capture - origin``, where ``capture`` is ``time.monotonic()`` right after ``read()``
returns: the camera's own timestamps are driver dependent, and a microphone started with the same
origin then shares the timeline. A camera that vanishes is reopened a few times with backoff before
the source gives up; a video file path simply ends at its last frame (it is read as fast as OpenCV
decodes it, unless ``realtime`` paces it at its own frame rate, as a camera would deliver it: a
recorded scene then plays as the camera in tests of the capture path; ``MediaStreamSource`` plays
files with audio).
"""

from __future__ import annotations

import contextlib
import os
import time

import cv2

from avbind.realtime.sources.base import Source, SourceSink, SourceStatus, VideoFrame

MS_PER_S = 1000


def _silence_opencv_log() -> None:
    """Quiet OpenCV's own log ("[ WARN:0@...] global cap_v4l.cpp ... can't open camera by index").

    Those lines bury this source's status message, which says the same thing and what happens next.
    Set when a camera opens, not at import, so merely importing the module changes nothing.
    """
    with contextlib.suppress(AttributeError):  # an OpenCV build without the utils.logging binding
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class WebcamSource(Source):
    """``device``: a camera index (``0`` or ``"0"``) or a path/URL OpenCV accepts.

    ``width``, ``height`` and ``fps`` are requests to the driver; the frames say what it gave.
    ``max_reopens`` bounds consecutive failed reopen attempts, waited for from ``backoff_s``
    doubling up to ``max_backoff_s``. ``realtime``: a file is delivered at its own frame rate
    (frame timestamps from ``started_at``, the monotonic time of its first frame) instead of as
    fast as it decodes.
    """

    has_video = True
    has_audio = False

    def __init__(
        self,
        device: int | str = 0,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        max_reopens: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = 2.0,
        realtime: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        self.device = device
        self.name = f"webcam {device}" if isinstance(device, int) else str(device)
        self.width, self.height, self.fps = width, height, fps
        self.max_reopens = max_reopens
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.open_timeout_s, self.read_timeout_s = float(open_timeout_s), float(read_timeout_s)
        self.is_file = isinstance(device, str) and os.path.isfile(device)
        self.realtime = realtime
        self.started_at: float | None = None  # monotonic time of the first frame delivered

    def _open(self) -> cv2.VideoCapture | None:
        _silence_opencv_log()
        if isinstance(self.device, int):
            capture = cv2.VideoCapture(self.device)
        else:  # files and URLs go through OpenCV's FFmpeg backend, which honours timeouts
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(self.open_timeout_s * MS_PER_S),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(self.read_timeout_s * MS_PER_S),
            ]  # fmt: skip
            capture = cv2.VideoCapture(self.device, cv2.CAP_ANY, params)
        if not capture.isOpened():
            capture.release()
            return None
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.height),
                            (cv2.CAP_PROP_FPS, self.fps)):  # fmt: skip
            if value is not None:
                capture.set(prop, float(value))
        return capture

    def _serve(self, sink: SourceSink, origin: float) -> None:
        failures = 0  # consecutive openings that delivered nothing
        delay = self.backoff_s
        delivered_ever = False
        while not self.stopped:
            try:
                capture = self._open()
            except cv2.error as err:
                capture, problem = None, f"cannot open ({err})"
            else:
                problem = "cannot open the camera" if capture is None else ""
            if capture is not None:
                if failures and delivered_ever:
                    self.counters.reconnects += 1
                    sink.on_status(SourceStatus("info", f"{self.name}: reopened", discontinuity=True))
                try:
                    delivered = self._read_frames(capture, sink, origin)
                finally:
                    capture.release()
                if self.stopped:
                    return
                if delivered and self.is_file:
                    sink.on_status(SourceStatus("info", f"{self.name}: end of video", ended=True))
                    return
                if delivered:
                    delivered_ever, failures, delay = True, 0, self.backoff_s
                self.counters.errors += 1
                problem = "read failed (camera disconnected?)"
            failures += 1
            if failures > self.max_reopens:
                message = f"{self.name}: {problem}; giving up after {self.max_reopens} reopen attempts"
                sink.on_status(SourceStatus("error", message, ended=True))
                return
            retry = f"reopen attempt {failures} of {self.max_reopens} in {delay:g} s"
            sink.on_status(SourceStatus("error", f"{self.name}: {problem}; {retry}"))
            if self._stop.wait(delay):
                return
            delay = min(2 * delay, self.max_backoff_s)

    def _read_frames(self, capture: cv2.VideoCapture, sink: SourceSink, origin: float) -> bool:
        """Deliver until a read fails or ``stop``; True if any frame was delivered."""
        delivered = False
        paced = self.realtime and self.is_file
        while not self.stopped:
            ok, bgr = capture.read()
            now = time.monotonic()
            if not ok or bgr is None:
                return delivered
            if paced and self.started_at is not None:  # wait for the frame's time in the file
                due = self.started_at + capture.get(cv2.CAP_PROP_POS_MSEC) / MS_PER_S
                if due > now and self._stop.wait(due - now):
                    return delivered
                now = time.monotonic()
            if self.started_at is None:
                self.started_at = now
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # (H, W, 3) uint8
            sink.on_video(VideoFrame(rgb=rgb, time=now - origin, capture=now))
            self.counters.frames += 1
            delivered = True
        return delivered
