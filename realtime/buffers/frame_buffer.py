"""Latest-frames buffer: the few newest video frames of a stream, picked by timestamp.

A camera may deliver 30 frames/s while the model steps 5 times/s; a step takes the latest frame
at or before its time and the frames before it are discarded unseen. That is by design and not
counted. What is counted is eviction of a frame the steps had not yet reached: the buffer was too
small for how far behind the engine was.
"""

from __future__ import annotations

import threading
from collections import deque

from avbind.realtime.sources.base import VideoFrame
from avbind.realtime.sync.windows import EPSILON_S


class FrameBuffer:
    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._frames: deque[VideoFrame] = deque()
        self._lock = threading.Lock()
        self.received = 0
        self.evicted_unread = 0  # frames dropped before any step could look at them
        self._consumed_until = float("-inf")  # stream time up to which steps have looked

    def push(self, frame: VideoFrame) -> None:
        with self._lock:
            if self._frames and frame.time <= self._frames[-1].time:
                return  # a repeated or out-of-order timestamp: keep the first frame shown for it
            self._frames.append(frame)
            self.received += 1
            while len(self._frames) > self.capacity:
                old = self._frames.popleft()
                if old.time > self._consumed_until:
                    self.evicted_unread += 1

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self._consumed_until = float("-inf")

    @property
    def latest_time(self) -> float | None:
        with self._lock:
            return self._frames[-1].time if self._frames else None

    @property
    def first_time(self) -> float | None:
        with self._lock:
            return self._frames[0].time if self._frames else None

    def peek_at(self, t: float) -> VideoFrame | None:
        """The frame :meth:`frame_at` would pick, without forgetting anything."""
        with self._lock:
            chosen = None
            for frame in self._frames:
                if frame.time > t + EPSILON_S and chosen is not None:
                    break
                chosen = frame
            return chosen

    def ready_capture(self, t: float) -> float | None:
        """When the step at ``t`` became servable: the capture of the first frame at or after ``t``.

        A step is late by how long it waited since its input was complete, not by the age of the
        frame it shows: at 1 frame/s the frame a step takes may be a second old the moment the
        step can first run, and nothing lagged.
        """
        with self._lock:
            for frame in self._frames:
                if frame.time >= t - EPSILON_S:
                    return frame.capture
            return None

    def frame_at(self, t: float) -> VideoFrame | None:
        """The latest frame shown at or before ``t`` (the first one if all are later), and forget
        the frames before it; None when empty."""
        with self._lock:
            if not self._frames:
                return None
            chosen = self._frames[0]
            while len(self._frames) > 1 and self._frames[1].time <= t + EPSILON_S:
                self._frames.popleft()
                chosen = self._frames[0]
            self._consumed_until = max(self._consumed_until, t)
            return chosen
