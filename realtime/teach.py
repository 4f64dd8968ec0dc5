"""``avbind teach record`` and ``avbind teach train``: teach avbind your own events in minutes.

Recording is guided: for each class in turn (round robin, so slow changes of light or position
over the session reach every class) and for background ("none of these"), a countdown, then a
take of ``--seconds`` from the same sources ``avbind run`` opens, shown in the OpenCV window (or
on the terminal without a display) with what is being recorded and the audio level. Each take is
written while it is recorded as real media (H.264 + AAC mp4 through PyAV) into
``DIR/<class>/take-NNN.mp4``, and ``DIR/teach.json`` says what was recorded when; a later session
adds takes to the same folder. ``teach train`` (:mod:`avbind.models.teach`) learns from it.

Frames are written at a constant rate: output frame i (time ``start + i / fps``) is the latest
camera frame at or before that time, the rule the model's steps follow, so the camera's own
jittery rate does not matter. Audio is placed by its timestamps (a gap stays silent).

Torch-free: recording needs only the core install; ``teach train`` imports torch when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np

from avbind.realtime.sources.base import AudioChunk, Source, SourceStatus, VideoFrame

log = logging.getLogger(__name__)

BACKGROUND = "background"  # the folder of "none of these" takes (models/config.py's name too)
MANIFEST = "teach.json"
SAMPLE_RATE = 16_000  # Hz: the model's rate, what sources deliver
FPS = 15  # frames per second written: three per model step at 5 steps/s
MAX_SIDE = 640  # px: longer side of the written picture (the model sees a 128-224 px square)
LEVEL_WINDOW_S = 0.1  # s of audio in the level meter
FIRST_DATA_TIMEOUT_S = 15.0  # s the sources get to deliver their first frame / audio
AUDIO_LATENESS_S = 0.5  # s a take waits past its end for audio still on its way
KEY_QUIT, KEY_REDO, KEY_SKIP = ("q", "\x1b", "\x03"), "r", "s"


@dataclass(frozen=True)
class PlannedTake:
    category: str  # a class name or "background"
    number: int  # 1-based among this session's takes of the category
    of: int  # this session's takes of the category


def plan_takes(classes: list[str], takes: int, background_takes: int) -> list[PlannedTake]:
    """Round robin over the classes, background last in each round; extra background rounds at the end."""
    plan = []
    for k in range(max(takes, background_takes)):
        if k < takes:
            plan += [PlannedTake(c, k + 1, takes) for c in classes]
        if k < background_takes:
            plan.append(PlannedTake(BACKGROUND, k + 1, background_takes))
    return plan


def next_take_path(folder: Path, category: str) -> Path:
    """``folder/category/take-NNN.mp4``, the first number not yet used (earlier sessions' takes stay)."""
    numbers = (p.stem.split("-")[-1] for p in (folder / category).glob("take-*.mp4"))
    used = [int(n) for n in numbers if n.isdigit()]
    return folder / category / f"take-{max(used, default=0) + 1:03d}.mp4"


class Capture:
    """The sources' sink: the newest frame and audio level for the view; while a take records,
    its frames and audio in arrival order for the writer (drained by the recording loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latest: VideoFrame | None = None
        self.audio_end: float | None = None  # s, stream time just past the newest audio sample
        self.statuses: deque[SourceStatus] = deque(maxlen=50)
        self._level: deque[np.ndarray] = deque(maxlen=64)
        self._pending: list[VideoFrame | AudioChunk] = []
        self.recording = False

    def on_video(self, frame: VideoFrame) -> None:
        with self._lock:
            self.latest = frame
            if self.recording:
                self._pending.append(frame)

    def on_audio(self, chunk: AudioChunk) -> None:
        with self._lock:
            self.audio_end = chunk.time + len(chunk.samples) / SAMPLE_RATE
            self._level.append(chunk.samples)
            if self.recording:
                self._pending.append(chunk)

    def on_status(self, status: SourceStatus) -> None:
        with self._lock:
            self.statuses.append(status)

    def start_recording(self) -> None:
        with self._lock:
            self._pending, self.recording = [], True

    def stop_recording(self) -> None:
        with self._lock:
            self.recording = False

    def drain(self) -> list[VideoFrame | AudioChunk]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def level_db(self) -> float | None:
        """dBFS of the newest ``LEVEL_WINDOW_S`` of audio; None before any."""
        with self._lock:
            recent = list(self._level)
        if not recent:
            return None
        samples = np.concatenate(recent)[-round(LEVEL_WINDOW_S * SAMPLE_RATE) :].astype(np.float64)
        return 20 * float(np.log10(max(float(np.sqrt(np.mean(samples**2))), 1e-5)))


class TakeWriter:
    """One take written as it is recorded: H.264 + AAC in an mp4, under a ``.part`` name until done.

    ``shape`` is the camera's picture (H, W, ...), known from the frames before the take, so both
    streams exist before the first packet (the mp4 muxer needs that). Video is encoded as it
    comes; audio, placed by timestamps, is encoded at the end, when all of it is there.
    """

    def __init__(self, path: Path, start: float, seconds: float, shape: tuple[int, ...], audio: bool,
                 fps: int = FPS) -> None:
        import av

        self.path, self.start, self.seconds, self.fps = Path(path), start, seconds, fps
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.part = self.path.with_name(self.path.name + ".part")
        h, w = shape[:2]
        scale = min(1.0, MAX_SIDE / max(h, w))
        self.size = (max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2))  # (W, H), even: yuv420p
        self._container = av.open(str(self.part), "w", format="mp4")
        self._video = self._container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "23"})
        self._video.width, self._video.height, self._video.pix_fmt = *self.size, "yuv420p"
        self._video.codec_context.time_base = Fraction(1, fps)
        self._sound = self._container.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if audio else None
        self._index = 0  # next output frame
        self._n_frames = round(seconds * fps)
        self._last: VideoFrame | None = None
        self.camera_frames = 0  # camera frames that fell inside the take
        self._audio = np.zeros(round(seconds * SAMPLE_RATE), np.float32)
        self._covered = np.zeros(len(self._audio), bool)

    def _emit(self, frame: VideoFrame) -> None:
        import av
        import cv2

        rgb = frame.rgb
        if rgb.shape[1::-1] != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        out = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        out.pts = self._index
        self._container.mux(self._video.encode(out))
        self._index += 1

    def add(self, item: VideoFrame | AudioChunk) -> None:
        if isinstance(item, VideoFrame):
            # Output frame i shows the latest camera frame at or before its time (the first one before any).
            while self._index < self._n_frames and self.start + self._index / self.fps < item.time:
                self._emit(self._last or item)
            if self.start <= item.time < self.start + self.seconds:
                self.camera_frames += 1
            self._last = item
        elif self._sound is not None:
            first = round((item.time - self.start) * SAMPLE_RATE)
            lo, hi = max(first, 0), min(first + len(item.samples), len(self._audio))
            if hi > lo:
                self._audio[lo:hi] = item.samples[lo - first : hi - first]
                self._covered[lo:hi] = True

    @property
    def audio_coverage(self) -> float:
        return float(self._covered.mean())

    def finish(self) -> dict:
        """Complete the take (the last frame held to its end), move it to its name; what it holds."""
        import av

        if self._last is None:
            self.abort()
            raise RuntimeError("no camera frame arrived during the take")
        while self._index < self._n_frames:
            self._emit(self._last)
        self._container.mux(self._video.encode())
        if self._sound is not None:
            for first in range(0, len(self._audio), 1024):  # AAC's frame size
                frame = av.AudioFrame.from_ndarray(self._audio[None, first : first + 1024], format="fltp",
                                                   layout="mono")
                frame.sample_rate, frame.pts = SAMPLE_RATE, first
                self._container.mux(self._sound.encode(frame))
            self._container.mux(self._sound.encode())
        self._container.close()
        os.replace(self.part, self.path)
        return {"frames": self._n_frames, "camera_frames": self.camera_frames,
                "audio_coverage": self.audio_coverage if self._sound is not None else None}

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._container.close()
        self.part.unlink(missing_ok=True)


# -- what the user sees, and the keys they press --------------------------------------------------


@dataclass
class Screen:
    """What the view shows at one moment."""

    phase: str  # "countdown" or "recording"
    take: PlannedTake
    remaining_s: float  # of the countdown or the take
    level_db: float | None
    done: int  # takes finished this session
    total: int  # takes planned
    note: str = ""  # the last thing worth saying (a take kept, skipped, a source problem)

    def headline(self) -> str:
        what = "background (none of these)" if self.take.category == BACKGROUND else self.take.category
        where = f"take {self.take.number} of {self.take.of}"
        if self.phase == "countdown":
            return f"get ready: {what}, {where}, in {math.ceil(self.remaining_s):d} s"
        return f"REC {what}, {where}: {self.remaining_s:.1f} s left"


class TeachScreen(Protocol):
    """Where a recording session shows itself: the window or the terminal."""

    def show(self, screen: Screen) -> None: ...

    def say(self, text: str) -> None: ...

    def pressed(self) -> list[str]: ...

    def close(self) -> None: ...


HINT = "r: redo (in the countdown: the previous take)   s: skip   q: quit, keeping finished takes"


class TerminalScreen:
    """The terminal: one line rewritten in place on a TTY, a line per change otherwise; keys read
    one at a time (cbreak mode) where stdin is a terminal."""

    def __init__(self, out=None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self._last = ""
        self._keys = _TerminalKeys()

    def show(self, screen: Screen) -> None:
        level = "   -- dBFS" if screen.level_db is None else f"{screen.level_db:6.1f} dBFS"
        bar = "#" * int(np.clip(((screen.level_db or -60) + 60) / 3, 0, 20))
        line = f"[{screen.done}/{screen.total}] {screen.headline()}  audio {level} {bar:<20}"
        if self.tty:
            self.out.write("\r" + line[:118].ljust(118))
            self.out.flush()
            self._last = line
            return
        key = f"{screen.phase} {screen.take}"
        if key != self._last:  # a log, not an animation: one line per phase
            print(line, file=self.out, flush=True)
            self._last = key

    def say(self, text: str) -> None:
        if self.tty:
            self.out.write("\r" + " " * 118 + "\r")
        print(text, file=self.out, flush=True)
        self._last = ""

    def pressed(self) -> list[str]:
        return self._keys.read()

    def close(self) -> None:
        self._keys.close()
        if self.tty:
            self.out.write("\n")


def terminal_screen(capture: Capture) -> TerminalScreen:
    """The terminal view, for :func:`record` (which passes its capture; the terminal shows no picture)."""
    return TerminalScreen()


class _TerminalKeys:
    """Single key presses from a terminal stdin, without Enter; nothing where stdin is not a TTY."""

    def __init__(self) -> None:
        self._saved = None
        try:
            import termios
            import tty

            if sys.stdin.isatty():
                self._fd = sys.stdin.fileno()
                self._saved = termios.tcgetattr(self._fd)
                tty.setcbreak(self._fd)
        except (ImportError, OSError, ValueError):  # Windows, a closed stdin
            self._saved = None

    def read(self) -> list[str]:
        if self._saved is None:
            return []
        import select

        keys = []
        while select.select([self._fd], [], [], 0)[0]:
            keys.append(os.read(self._fd, 1).decode(errors="replace"))
        return keys

    def close(self) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None


class WindowScreen:
    """The OpenCV window (in its own process, see views/overlay.py): the camera picture with a
    banner saying what to do and what is recorded, the audio level, and the keys."""

    WIDTH = 640  # px

    def __init__(self, capture: Capture, title: str = "avbind teach") -> None:
        from avbind.realtime.views.overlay import WindowProcess

        self.capture = capture
        self.window = WindowProcess(title)
        self.note = ""
        self.closed = False

    def show(self, screen: Screen) -> None:
        import cv2

        frame = self.capture.latest
        if frame is not None:
            h, w = frame.rgb.shape[:2]
            picture = cv2.resize(cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR), (self.WIDTH, round(h * self.WIDTH / w)))
        else:
            picture = np.zeros((self.WIDTH * 3 // 4, self.WIDTH, 3), np.uint8)
        recording = screen.phase == "recording"
        banner = np.full((70, self.WIDTH, 3), (0, 0, 170) if recording else (40, 40, 40), np.uint8)
        cv2.putText(banner, screen.headline(), (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1,
                    cv2.LINE_AA)
        cv2.putText(banner, f"{screen.done}/{screen.total} done  {screen.note}"[:90], (10, 56),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, (220, 220, 220), 1, cv2.LINE_AA)
        if recording:
            cv2.circle(picture, (self.WIDTH - 24, 24), 10, (0, 0, 255), -1)
        elif screen.remaining_s > 0:
            text = f"{int(np.ceil(screen.remaining_s))}"
            cv2.putText(picture, text, (self.WIDTH // 2 - 30, picture.shape[0] // 2 + 30), cv2.FONT_HERSHEY_SIMPLEX,
                        3.0, (0, 255, 255), 6, cv2.LINE_AA)
        panel = np.full((50, self.WIDTH, 3), 24, np.uint8)
        cv2.putText(panel, "audio", (10, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (200, 200, 200), 1)
        cv2.rectangle(panel, (60, 10), (620, 22), (70, 70, 70), 1)
        if screen.level_db is not None:
            fill = int(np.clip((screen.level_db + 60) / 60, 0, 1) * 558)
            cv2.rectangle(panel, (61, 11), (61 + fill, 21), (0, 200, 0) if screen.level_db < -6 else (0, 0, 230), -1)
        cv2.putText(panel, HINT, (10, 42), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (160, 160, 160), 1, cv2.LINE_AA)
        self.window.show(np.vstack([banner, picture, panel]))

    def say(self, text: str) -> None:
        print(text, flush=True)

    def pressed(self) -> list[str]:
        keys = self.window.pressed()
        if self.window.closed:  # q, Esc or the window closed
            keys.append("q")
        return keys

    def close(self) -> None:
        self.window.close()


# -- the session ------------------------------------------------------------------------------------


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("takes"), list):
            raise ValueError(f"{path}: not a teach manifest (no list of takes)")
        return manifest
    return {"classes": [], "takes": []}


def _write_manifest(folder: Path, manifest: dict) -> None:
    path = folder / MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)  # a Ctrl-C never leaves half a manifest


def _wait_for_data(capture: Capture, sources: list[Source], timeout_s: float) -> None:
    """Until every source delivered something: the countdown must not start on a black window."""
    want_video = any(s.has_video for s in sources)
    want_audio = any(s.has_audio for s in sources)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (capture.latest is not None or not want_video) and (capture.audio_end is not None or not want_audio):
            return
        ended = [s for s in capture.statuses if s.ended and s.level == "error"]
        if ended:
            raise RuntimeError(ended[0].message)
        time.sleep(0.02)
    problems = "; ".join(s.message for s in capture.statuses) or "no message from the sources"
    missing = "video" if want_video and capture.latest is None else "audio"
    raise RuntimeError(f"no {missing} within {timeout_s:g} s ({problems})")


def record(folder: str | Path, sources: list[Source], classes: list[str], seconds: float = 10.0, takes: int = 3,
           background_takes: int | None = None, countdown_s: float = 3.0,
           screen: Callable[[Capture], TeachScreen] | None = None,
           before_take: Callable[[PlannedTake], None] | None = None, fps: float = 25.0) -> list[dict]:
    """Record the planned takes into ``folder``; returns the manifest entries of those kept.

    ``screen`` makes the view from the session's :class:`Capture`: :class:`WindowScreen` or
    :func:`terminal_screen` (the default).
    ``before_take`` is called as each countdown starts (tests use it to start what the camera and
    microphone should catch). Ctrl-C, q or a closed window end the session: finished takes are
    kept and listed in ``teach.json``, the take being recorded is discarded.
    """
    if not any(s.has_video for s in sources):
        raise ValueError("teach record needs a camera or video (--video): the model learns from both")
    bad = [c for c in classes if not c or c.startswith(".") or "/" in c or c == BACKGROUND]
    if bad or not classes:
        raise ValueError(f"class names must be non-empty folder names other than {BACKGROUND!r}, got {classes}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(folder)
    manifest["classes"] = list(dict.fromkeys([*manifest.get("classes", []), *classes]))
    _write_manifest(folder, manifest)
    plan = plan_takes(classes, takes, takes if background_takes is None else background_takes)
    capture = Capture()
    screen = (screen or terminal_screen)(capture)
    origin = time.monotonic()
    kept: list[dict] = []
    has_audio = any(s.has_audio for s in sources)
    for source in sources:
        source.start(capture, origin)
    writer: TakeWriter | None = None
    try:
        _wait_for_data(capture, sources, FIRST_DATA_TIMEOUT_S)
        i, note = 0, ""
        while i < len(plan):
            take = plan[i]
            if before_take is not None:
                before_take(take)
            action = _countdown(capture, screen, take, countdown_s, len(kept), len(plan), note, fps)
            if action == "quit":
                break
            if action == "skip":
                note, i = f"skipped {take.category} take {take.number}", i + 1
                continue
            if action == "redo" and kept:
                last = kept.pop()
                (folder / last["file"]).unlink(missing_ok=True)
                manifest["takes"] = [t for t in manifest["takes"] if t is not last]
                _write_manifest(folder, manifest)
                note, i = f"deleted {last['file']}: again", max(i - 1, 0)
                continue
            path = next_take_path(folder, take.category)
            start = time.monotonic() - origin
            shape = capture.latest.rgb.shape
            writer = TakeWriter(path, start, seconds, shape, has_audio)
            capture.start_recording()
            action = _recording(capture, screen, writer, take, len(kept), len(plan), has_audio, origin, fps)
            capture.stop_recording()
            if action != "done":
                writer.abort()
                writer = None
                if action == "quit":
                    break
                note = f"{take.category} take {take.number}: " + ("again" if action == "redo" else "skipped")
                i += action == "skip"
                continue
            for item in capture.drain():
                writer.add(item)
            stats = writer.finish()
            writer = None
            entry = {"class": take.category, "file": str(path.relative_to(folder)),
                     "recorded_at": datetime.now().astimezone().isoformat(timespec="seconds"),
                     "stream_start_s": round(start, 3), "seconds": seconds, **stats,
                     "sources": [s.name for s in sources]}
            manifest["takes"].append(entry)
            _write_manifest(folder, manifest)
            kept.append(entry)
            note, i = f"kept {entry['file']}", i + 1
            if has_audio and stats["audio_coverage"] is not None and stats["audio_coverage"] < 0.9:
                note += f" (audio covered only {stats['audio_coverage']:.0%} of it)"
            screen.say(f"{note}")
    except KeyboardInterrupt:
        pass
    finally:
        if writer is not None:
            writer.abort()
        for source in sources:
            source.stop()
        screen.close()
    return kept


def _handle_keys(screen: TeachScreen) -> str | None:
    for key in screen.pressed():
        if key in KEY_QUIT:
            return "quit"
        if key.lower() == KEY_REDO:
            return "redo"
        if key.lower() == KEY_SKIP:
            return "skip"
    return None


def _countdown(capture: Capture, screen: TeachScreen, take: PlannedTake, countdown_s: float, done: int, total: int,
               note: str, fps: float) -> str:
    end = time.monotonic() + countdown_s
    while (left := end - time.monotonic()) > 0:
        screen.show(Screen("countdown", take, left, capture.level_db(), done, total, note))
        if (action := _handle_keys(screen)) is not None:
            return action
        time.sleep(min(1 / fps, max(left, 0)))
    return "go"


def _recording(capture: Capture, screen: TeachScreen, writer: TakeWriter, take: PlannedTake, done: int, total: int,
               has_audio: bool, origin: float, fps: float) -> str:
    """Feed the writer until the take's end is covered (audio arrives later than it was heard)."""
    end = writer.start + writer.seconds
    while True:
        now = time.monotonic() - origin
        for item in capture.drain():
            writer.add(item)
        audio_in = not has_audio or (capture.audio_end or 0.0) >= end
        if now >= end and (audio_in or now >= end + AUDIO_LATENESS_S):
            return "done"
        screen.show(Screen("recording", take, max(end - now, 0.0), capture.level_db(), done, total))
        if (action := _handle_keys(screen)) is not None:
            return action
        time.sleep(1 / fps)


# -- the commands -------------------------------------------------------------------------------------


def _record_command(args: argparse.Namespace) -> int:
    from avbind.realtime.sources.open_source import stream_sources

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    sources = stream_sources(args.video, None if args.audio == "none" else args.audio, SAMPLE_RATE)
    screen: Callable[[Capture], TeachScreen] = terminal_screen
    if args.window != "off":
        from avbind.realtime.views.overlay import display_available

        if args.window == "on" or display_available():
            screen = WindowScreen
    print(f"recording {', '.join(classes)} and background into {args.folder}: {args.takes} takes of "
          f"{args.seconds:g} s each ({HINT})", flush=True)
    kept = record(args.folder, sources, classes, args.seconds, args.takes, args.background_takes, args.countdown,
                  screen)
    counts: dict[str, int] = {}
    for entry in kept:
        counts[entry["class"]] = counts.get(entry["class"], 0) + 1
    shown = ", ".join(f"{c} {n}" for c, n in counts.items()) or "none"
    print(f"kept {len(kept)} takes in {args.folder} ({shown}); next: avbind teach train {args.folder} "
          f"--out {Path(args.folder) / 'model.onnx'}")
    return 0


def _train_command(args: argparse.Namespace) -> int:
    from avbind.models.config import TeachConfig
    from avbind.models.teach import teach

    given = {k: getattr(args, k) for k in ("input_size", "steps", "audio_init", "seed", "threads")
             if getattr(args, k) is not None}
    report = teach(args.folder, args.out, TeachConfig(**given), cache_dir=args.cache)
    takes = ", ".join(f"{c} {n['train']}+{n['val']}" for c, n in report.takes.items())
    print(f"takes (train+validation): {takes}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    for how, result in report.validation.items():
        kept = " (kept)" if how == report.audio_init else ""
        if "fusion" not in result:
            print(f"audio encoder {how}{kept}: no held-out takes to validate on")
            continue
        print(f"validation, audio encoder {how}{kept}:")
        for name, entry in ((n, result[n]) for n in ("fusion", "video only", "audio only")):
            per_class = "  ".join(f"{c} {_pct(a)}" for c, a in entry["per_class"].items())
            print(f"  {name:<10} {_pct(entry['segment_accuracy'])}   {per_class}")
    seconds = report.seconds
    print(f"trained in {seconds['total']:.0f} s (features {seconds['video_features']:.0f} s, export "
          f"{seconds['export']:.0f} s); model: {args.out} (classes {', '.join(report.classes)}); "
          f"run it: avbind run --model {args.out} --video 0 --audio mic")
    return 0


def _pct(value: float | None) -> str:
    return "  n/a" if value is None or value != value else f"{value:5.1%}"


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    teach = subparsers.add_parser("teach", help="record your own events and train a model on them")
    sub = teach.add_subparsers(dest="teach_command", metavar="TEACH_COMMAND", required=True)
    rec = sub.add_parser("record", help="guided recording of takes of each class and of background")
    rec.add_argument("folder", type=Path, help="where takes go: FOLDER/<class>/take-NNN.mp4 and FOLDER/teach.json")
    rec.add_argument("--video", default="0", help="camera index, device, file or URL, as avbind run takes (default 0)")
    rec.add_argument("--audio", default="mic",
                     help="mic, mic:DEVICE, a file or URL; none: no separate audio (default mic)")
    rec.add_argument("--classes", required=True, help='comma-separated class names, e.g. "knock,kettle,wave"')
    rec.add_argument("--seconds", type=float, default=10.0, help="seconds per take (default 10)")
    rec.add_argument("--takes", type=int, default=3, help="takes of each class (default 3)")
    rec.add_argument("--background-takes", type=int, help="takes of background, none of the classes (default: --takes)")
    rec.add_argument("--countdown", type=float, default=3.0, help="seconds of countdown before each take (default 3)")
    rec.add_argument("--window", choices=("auto", "on", "off"), default="auto",
                     help="the OpenCV window (auto: where a display is; off: the terminal)")
    rec.set_defaults(func=_record_command)
    train = sub.add_parser("train", help="fine-tune avbind-lite0 on a folder of takes and export the ONNX step model")
    train.add_argument("folder", type=Path, help="FOLDER/<class>/*.mp4, FOLDER/background/ optional")
    train.add_argument("--out", type=Path, required=True, help="the ONNX model to write (also .pt and .json beside it)")
    train.add_argument("--input-size", type=int,
                       help="frame size in pixels (default 128, the shipped model's, so it can replace it live)")
    train.add_argument("--steps", type=int, help="optimisation steps (default 200)")
    train.add_argument("--audio-init", choices=("shipped", "scratch", "best"),
                       help="audio encoder: the shipped avbind-s's, fixed (default); trained from scratch (slow); "
                            "or best: both, keeping the better on the held-out takes")
    train.add_argument("--seed", type=int)
    train.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    train.add_argument("--cache", type=Path, help="prepared-features folder (default: FOLDER/.avbind-cache)")
    train.set_defaults(func=_train_command)
