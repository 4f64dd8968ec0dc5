"""The OpenCV window of ``avbind live``: the camera picture with what the engine thinks of it.

Drawn from the engine's own state (the newest frame, the last step's scores, the audio ring) and
its messages (event boundaries and source status). The picture is rendered here, but shown by a child
Python process that imports only OpenCV: with PyAV imported first (it is, by the media sources),
``cv2.namedWindow`` spins forever, because both wheels bundle X libraries under the same sonames
(``libxcb-shm``, ``libxcb-shape``, ``libxcb-xfixes``, ``libXau``) and PyAV's copies, linked against
PyAV's own ``libxcb``, get bound into OpenCV's Qt (PyAV issues 978 and 1050). A process that never
imports ``av`` does not have the clash, whatever the import order here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
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


PROBE_TIMEOUT_S = 15.0  # s: a child that cannot open a probe window by then means no usable display

# The window process: imports only cv2 (never av), reads frames from stdin, reports on stdout.
# Protocol in: 8-byte header (height, width as little-endian uint32) then height*width*3 BGR bytes;
# EOF closes. Out: "ready", "key N" for each other key pressed (its code), then "closed" when the
# user closed the window or pressed q / Esc.
_WINDOW_CHILD = r"""
import os, signal, sys, threading
os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C and closes our stdin
import cv2, numpy as np
title = sys.argv[1]
probe = len(sys.argv) > 2 and sys.argv[2] == "probe"
cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE)
if probe:
    cv2.destroyWindow(title)
    print("ready", flush=True)
    sys.exit(0)
print("ready", flush=True)
latest = [None]
done = threading.Event()
def reader():
    stream = sys.stdin.buffer
    while True:
        head = stream.read(8)
        if len(head) < 8:
            break
        h, w = int.from_bytes(head[:4], "little"), int.from_bytes(head[4:], "little")
        body = stream.read(h * w * 3)
        if len(body) < h * w * 3:
            break
        latest[0] = np.frombuffer(body, np.uint8).reshape(h, w, 3)
    done.set()
threading.Thread(target=reader, daemon=True).start()
shown = False
while not done.is_set():
    image, latest[0] = latest[0], None
    if image is not None:
        cv2.imshow(title, image)
        shown = True
    key = cv2.waitKey(20) & 0xFF
    if key in (ord("q"), 27):
        break
    if key != 255:
        print(f"key {key}", flush=True)
    if shown:
        try:
            if cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
                break
        except cv2.error:
            break
if not done.is_set():
    print("closed", flush=True)
cv2.destroyAllWindows()
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    return env


def display_available(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a window can be opened: a display server, and an OpenCV built with HighGUI.

    Probed in a child process with a timeout, never here: a HighGUI call in a process that imported
    PyAV can hang for good (see the module docstring), and a missing display must not cost a freeze.
    """
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        done = subprocess.run([sys.executable, "-c", _WINDOW_CHILD, "avbind-probe", "probe"], capture_output=True,
                              text=True, timeout=timeout_s, env=_child_env(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "ready" in done.stdout


class WindowProcess:
    """A HighGUI window in a child process that never imports ``av``; fed BGR images through a pipe.

    Frames are handed to a writer thread that sends only the newest one, so a slow or stuck child
    never blocks the caller (and so never blocks ``--seconds`` or Ctrl-C).
    """

    def __init__(self, title: str, ready_timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.title = title
        self.process = subprocess.Popen([sys.executable, "-c", _WINDOW_CHILD, title], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=_child_env())
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._frame: np.ndarray | None = None
        self._keys: list[str] = []  # pressed since pressed() last took them (q and Esc close instead)
        self._wake = threading.Condition()
        self._stopping = False
        threading.Thread(target=self._read_events, daemon=True).start()
        self._writer = threading.Thread(target=self._write_frames, daemon=True)
        self._writer.start()
        if not self._ready.wait(ready_timeout_s):
            self.close()
            raise RuntimeError(f"the window process did not open a window within {ready_timeout_s:g} s")

    def _read_events(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            word = line.strip()
            if word == b"ready":
                self._ready.set()
            elif word == b"closed":
                self._closed.set()
            elif word.startswith(b"key "):
                with self._wake:
                    self._keys.append(chr(int(word[4:])))
        self._closed.set()  # the child ended
        self._ready.set()

    def _write_frames(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        while True:
            with self._wake:
                while self._frame is None and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                frame, self._frame = self._frame, None
            h, w = frame.shape[:2]
            try:
                stdin.write(h.to_bytes(4, "little") + w.to_bytes(4, "little") + frame.tobytes())
                stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._closed.set()
                return

    @property
    def closed(self) -> bool:
        """True once the user closed the window (or pressed q / Esc), or the child ended."""
        return self._closed.is_set() or self.process.poll() is not None

    def pressed(self) -> list[str]:
        """The keys pressed in the window since the last call, oldest first (``avbind teach record``)."""
        with self._wake:
            keys, self._keys = self._keys, []
        return keys

    def show(self, image: np.ndarray) -> None:
        """Queue ``image`` (BGR uint8) for display; an older one not yet sent is dropped."""
        with self._wake:
            self._frame = np.ascontiguousarray(image, dtype=np.uint8)
            self._wake.notify()

    def close(self, timeout_s: float = 3.0) -> None:
        """End the child: EOF on its stdin, then terminate / kill if it does not go by itself."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._writer.join(timeout_s)
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class OverlayView:
    def __init__(self, stream: Stream, window: str = "avbind live") -> None:
        self.stream = stream
        self.window = window
        self.names = stream.info.event_names
        self.events: deque[list] = deque(maxlen=200)  # [class, start, end or None while open]
        self._open: dict[int, list] = {}  # event id -> its entry in events
        self.problem: str | None = None  # the last warning/error status text, shown until a source recovers
        self._window: WindowProcess | None = None

    def on_message(self, message: dict[str, Any]) -> None:
        """Engine listener: keep event boundaries for the timeline and the last source problem for the picture."""
        if message.get("stream") != self.stream.name:
            return
        if message.get("type") == "status":
            if message.get("level") in ("warning", "error"):
                self.problem = str(message.get("message", ""))
            elif message.get("state") == "running" and message.get("level") == "info" and "reopened" in str(
                    message.get("message", "")):
                self.problem = None
            return
        if message.get("type") != "event":
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
            if self.problem:
                _put_wrapped(picture, self.problem, (20, 80), (80, 80, 255))
            now_t = self.stream.aligner.audio_end_time() or 0.0
        panel = np.full((PANEL, WIDTH, 3), 24, np.uint8)
        self._draw_scores(panel)
        self._draw_level(panel)
        self._draw_timeline(panel, now_t)
        latencies = list(self.stream.latencies)[-50:]
        if latencies:
            text = f"latency p50 {1000 * float(np.median(latencies)):.0f} ms   steps {self.stream.counters.steps}"
            cv2.putText(panel, text, (330, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (200, 200, 200), 1)
        if frame is not None and self.problem:
            _put_wrapped(picture, self.problem, (10, 24), (80, 80, 255))
        return np.vstack([picture, panel])

    def _draw_scores(self, panel: np.ndarray) -> None:
        outputs = self.stream.outputs  # names from the same outputs as the scores: a model swap replaces both
        probs, names = outputs.last_probs, outputs.info.event_names
        if probs is None:
            return
        for row, i in enumerate(np.argsort(-probs)[:3]):
            y = 20 + 22 * row
            cv2.rectangle(panel, (10, y - 12), (10 + int(120 * probs[i]), y + 4), PALETTE[i % len(PALETTE)], -1)
            cv2.putText(panel, f"{names[i]} {probs[i]:.2f}", (136, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
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
        if self._window is None:
            self._window = WindowProcess(self.window)
        if self._window.closed:
            return False
        self._window.show(self.render())
        return True

    def close(self) -> None:
        """Close the window process (idempotent)."""
        if self._window is not None:
            self._window.close()
            self._window = None

    def run(self, until: float | None = None, fps: float = 25.0, done: Callable[[], bool] | None = None) -> None:
        """Redraw at ``fps`` until ``until`` (monotonic), the window closes, ``done()`` (a stop signal
        arrived), or KeyboardInterrupt."""
        try:
            while (until is None or time.monotonic() < until) and not (done is not None and done()):
                if not self.show():
                    break
                time.sleep(1.0 / fps)
        finally:
            self.close()


def _put_wrapped(image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int],
                 max_chars: int = 60) -> None:
    """Draw ``text`` on ``image`` over as many lines as it needs: a failure reason is worth reading in full."""
    x, y = origin
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > max_chars:
            cv2.putText(image, line, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
            y, line = y + 22, word
        else:
            line = f"{line} {word}" if line else word
    if line:
        cv2.putText(image, line, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
