"""Files and network streams (RTSP, UDP, SRT, HTTP, anything FFmpeg opens) as a live source.

One PyAV demux loop reads the first video and the first audio stream. Files keep their own
timeline and are paced to real time (or run unpaced for tests); network streams are rebased to
start at 0, survive a vanished sender by reconnecting with backoff, and never go back in time.

Timeline (``time``, seconds):

* Files: times come from a :class:`~avbind.realtime.sources.decode.FileTimeline`, exactly as
  ``decode_media`` computes them, so the engine cuts a file exactly as offline evaluation does:
  video ``time`` is the frame's PTS from where the video starts, and audio ``time`` counts
  samples from the timestamp of the current audio run, realigned to the timestamps whenever the
  two disagree (a concatenated file's overlaps) and closed over jumps. ``capture`` is
  ``origin + time / speed`` and the thread sleeps until then; with ``speed`` 0 or inf nothing
  waits and ``capture`` is the delivery time.
* Network: ``time = PTS - base + offset``, with one ``base`` for video and audio (the video
  stream's start, else the earliest stream start, else the first frame's PTS). ``offset`` is 0 for the first
  connection; after a reconnect, or when the sender's clock jumps, it is the monotonic time since
  ``origin`` (never less than the last delivered time), so the timeline continues and never goes
  backwards. ``capture`` is ``time.monotonic()`` on arrival; nothing is paced.
"""

from __future__ import annotations

import heapq
import math
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from avbind.realtime.sources.base import AudioChunk, Source, SourceSink, SourceStatus, VideoFrame
from avbind.realtime.sources.decode import (
    AUDIO_SLIP_S,
    CLOCK_JUMP_AHEAD_S,
    CLOCK_JUMP_BACK_S,
    SEEK_MARGIN_S,
    AudioRun,
    FileTimeline,
    media_origin,
)

URL_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
# Options that make common protocols behave as a live camera should; the caller's options win.
PROTOCOL_OPTIONS = {
    "rtsp": {"rtsp_transport": "tcp"},  # UDP RTP loses packets behind NAT and on busy links
    "rtsps": {"rtsp_transport": "tcp"},
    "udp": {"overrun_nonfatal": "1"},  # a full socket buffer drops packets instead of ending the stream
}
STOP_WAIT_S = 2.0  # s; longest stop() waits for the thread
WARNING_INTERVAL_S = 1.0  # s; at most one decode warning per interval, the rest only counted
# A paced file is delivered in presentation order, not packet order: decoded data is held until
# every stream has been decoded up to it. These bound how far ahead the demuxer may read.
DEMUX_AHEAD_S = 10.0  # s of media held at most (a file's streams interleaved further apart play degraded)
DEMUX_AHEAD_BYTES = 256 << 20  # bytes of decoded frames held at most (4000x3000 RGB is 36 MB a frame)
LATE_FRAME_S = 0.5  # s; a paced file's frame decoded this long after its time is dropped (counted), not shown late


# ``scheme://user:password@host``: the userinfo part of a URL, which carries camera passwords.
URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]*)@")
# Query options that carry secrets (SRT's passphrase, tokens of HTTP and RTMP streams).
SECRET_OPTION = re.compile(r"(?P<key>[?&](?:passphrase|password|passwd|pass|pwd|token|key|secret)=)[^&\s]*", re.I)


def redact_credentials(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``.

    Source names go into status messages, the terminal and logs, all of which reach people and
    subscribers who must not learn a camera's password; the user name stays so a wrong account
    can still be recognised.
    """

    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match.group("userinfo").partition(":")
        return f"{match.group('scheme')}{user}{':***' if colon else ''}@"

    return SECRET_OPTION.sub(r"\g<key>***", URL_USERINFO.sub(hide, text))


# Open errors that no retry can fix: an unknown protocol (a typo in the scheme, an FFmpeg built
# without it), an option FFmpeg does not know, a refused or missing login.
PERMANENT_ERRORS = (av.error.ProtocolNotFoundError, av.error.OptionNotFoundError, av.error.PermissionError)


def is_network_url(url: str) -> bool:
    """``scheme://...`` other than ``file://``: something that can vanish and come back."""
    match = URL_SCHEME.match(url)
    return bool(match) and match.group("scheme").lower() != "file"


def not_regular_file(path: str) -> str | None:
    """Why a local path is no media file FFmpeg can open without blocking, or None (a regular file,
    a URL, or a missing path, which the source reports as such).

    A FIFO blocks ``av.open`` until a writer appears and a directory or device is never a media file.
    """
    if URL_SCHEME.match(path):
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    kind = next((name for test, name in kinds if test(mode)), "not a file")
    return f"not a regular file: is {kind}"


def _describe(err: BaseException) -> str:
    """FFmpeg errors repeat the URL in their text; keep the reason only."""
    if isinstance(err, av.error.FFmpegError) and err.strerror:
        return redact_credentials(str(err.strerror))
    return redact_credentials(str(err)) or type(err).__name__


@dataclass
class _Connection:
    """Timeline and audio state of one opened container."""

    base: float | None = None  # s, PTS that maps to ``offset``
    offset: float = 0.0  # s, stream time of ``base``
    start_hint: float | None = None  # s, the video's start_time (else the earliest) the container reported
    first: bool = True  # the first connection that delivers: its timeline starts at 0
    arrival: float = 0.0  # monotonic s when the first packet arrived (at the latest)
    last_video_pts: float | None = None  # s, raw
    timeline: FileTimeline | None = None  # files: their times, as decode_media computes them
    audio: AudioRun | None = None  # network: the current audio run
    delivered: bool = False
    stats: dict[str, int] = field(default_factory=dict)
    # Paced files: decoded data waiting for its presentation time, as a heap of
    # (time, order, kind, payload), and how far each stream ("video", "audio") has been decoded.
    held: list = field(default_factory=list)
    heads: dict[str, float] = field(default_factory=dict)
    held_bytes: int = 0
    held_count: int = 0


class MediaStreamSource(Source):
    """A media file or network stream through PyAV.

    ``reconnect`` defaults to True for network URLs and False for files; ``max_reconnects`` bounds
    the consecutive failed attempts (None: forever) and ``give_up_s``, when given, bounds instead
    the seconds spent trying since the stream was lost (inf: forever); waits between attempts start at ``backoff_s``
    and double up to ``max_backoff_s``. ``options`` go to FFmpeg (format and protocol options, e.g.
    ``{"rtsp_transport": "udp"}``). ``open_timeout_s`` and ``read_timeout_s`` bound every blocking
    call, so a dead sender becomes a status within ``read_timeout_s`` and ``stop()`` returns within
    about that long.
    """

    # stop() returns within about 2 s. A thread still inside ``av.open`` (which only its timeout can
    # interrupt) finishes on its own within ``open_timeout_s`` and delivers nothing more.
    stop_wait_s = STOP_WAIT_S

    def __init__(
        self,
        url_or_path: str | os.PathLike[str],
        sample_rate: int = 16_000,
        speed: float = 1.0,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = 2.0,
        reconnect: bool | None = None,
        max_reconnects: int | None = 10,
        give_up_s: float | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        options: dict[str, str] | None = None,
        start_s: float = 0.0,
    ) -> None:
        super().__init__()
        if not start_s >= 0 or not math.isfinite(start_s):
            raise ValueError(f"start_s must be a finite number >= 0, got {start_s}")
        # Where the stream's timeline starts: a stream resumed on another cluster worker continues
        # there. A file seeks to it; a network stream's first connection starts its timeline at it.
        self.start_s = float(start_s)
        if speed < 0:
            raise ValueError(f"speed must be >= 0 (0 or inf: unpaced), got {speed}")
        self.url = os.fspath(url_or_path)
        self.name = redact_credentials(self.url)  # the URL with its password: only FFmpeg sees it
        self.is_network = is_network_url(self.url)
        self.sample_rate = int(sample_rate)
        self.speed = float(speed)
        self.paced = not self.is_network and 0 < self.speed < math.inf
        self.open_timeout_s, self.read_timeout_s = float(open_timeout_s), float(read_timeout_s)
        self.reconnect = self.is_network if reconnect is None else bool(reconnect)
        self.max_reconnects = max_reconnects
        if give_up_s is not None and not give_up_s >= 0:
            raise ValueError(f"give_up_s must be >= 0 (inf: never give up), got {give_up_s}")
        self.give_up_s = give_up_s
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        scheme = URL_SCHEME.match(self.url)
        self.options = {**PROTOCOL_OPTIONS.get(scheme.group("scheme").lower() if scheme else "", {}), **(options or {})}
        # A network stream's content is unknown until it is opened; a file is cheap to look at now.
        self.has_video, self.has_audio = True, True
        if not self.is_network:
            self._probe_file()
        self._last_time = -math.inf  # s, latest time delivered on any stream
        self._last_warning = -math.inf  # monotonic s of the last decode warning sent
        self._suppressed = 0  # decode warnings counted but not sent since then

    def _probe_file(self) -> None:
        if not_regular_file(self.url) is not None:
            return  # av.open on a FIFO blocks until a writer comes: never in the caller's thread
        try:
            with av.open(self.url, timeout=(self.open_timeout_s, self.read_timeout_s)) as container:
                self.has_video = bool(container.streams.video)
                self.has_audio = bool(container.streams.audio)
        except Exception:  # the thread reports it, as for a stream that fails later
            pass

    # -- connection loop ------------------------------------------------------------------------

    def _serve(self, sink: SourceSink, origin: float) -> None:
        if self.paced and not self.is_network:
            origin -= self.start_s / self.speed  # the resumed point plays at once, not after start_s
        failures = 0  # consecutive attempts that delivered nothing
        delay = self.backoff_s
        lost_at = time.monotonic()  # when the stream was last lost (or first asked for)
        delivered_ever = False
        while not self.stopped:
            problem, level = None, "error"
            container = None
            # Probing inside av.open reads (and buffers) the first packets, so the call's start is
            # the best available arrival time of the data it returns.
            opened_at = time.monotonic()
            if not URL_SCHEME.match(self.url) and not Path(self.url).is_file():
                problem = not_regular_file(self.url) or "no such media file"
            else:
                try:
                    container = av.open(
                        self.url, timeout=(self.open_timeout_s, self.read_timeout_s), options=self.options
                    )
                except av.error.ExitError:  # the interrupt callback: the open timeout ran out
                    problem = f"cannot open (no stream within {self.open_timeout_s:g} s)"
                except PERMANENT_ERRORS as err:  # retrying cannot help: say so at once and end
                    sink.on_status(SourceStatus("error", f"{self.name}: cannot open ({_describe(err)})", ended=True))
                    return
                except Exception as err:  # FFmpeg, OS and option errors alike: a status, never a crash
                    problem = f"cannot open ({_describe(err)})"
            if self.stopped:
                if container is not None:
                    container.close()
                return
            if container is not None:
                if failures and delivered_ever:
                    self.counters.reconnects += 1
                    sink.on_status(SourceStatus("info", f"{self.name}: reconnected", discontinuity=True))
                elif failures:
                    sink.on_status(SourceStatus("info", f"{self.name}: connected after {failures} failed attempts"))
                try:
                    conn = _Connection(first=not delivered_ever, arrival=opened_at)
                    problem = self._pump(container, conn, sink, origin)
                finally:
                    container.close()
                if self.stopped:
                    return
                if conn.delivered:
                    delivered_ever, failures, delay = True, 0, self.backoff_s
                    lost_at = time.monotonic()
                if problem is None:
                    # A clean end is the end, for a network stream too: a finite RTSP or HTTP
                    # source would otherwise be replayed from the start by its server forever.
                    # (A vanished sender is a read timeout or error, not a clean end.)
                    sink.on_status(SourceStatus("info", f"{self.name}: end of stream", ended=True))
                    return
                level = "warning" if conn.delivered else "error"
            if not self.reconnect:
                sink.on_status(SourceStatus("error", f"{self.name}: {problem}", ended=True))
                return
            failures += 1
            if self.give_up_s is not None:
                down = time.monotonic() - lost_at
                if down + delay > self.give_up_s:
                    message = f"{self.name}: {problem}; giving up after {down:.0f} s of reconnect attempts"
                    sink.on_status(SourceStatus("error", message, ended=True))
                    return
                of = ""
            elif self.max_reconnects is not None and failures > self.max_reconnects:
                message = f"{self.name}: {problem}; giving up after {self.max_reconnects} reconnect attempts"
                sink.on_status(SourceStatus("error", message, ended=True))
                return
            else:
                of = f" of {self.max_reconnects}" if self.max_reconnects is not None else ""
            retry = f"reconnect attempt {failures}{of} in {delay:g} s"
            sink.on_status(SourceStatus(level, f"{self.name}: {problem}; {retry}", reconnecting=True))
            if self._stop.wait(delay):
                return
            delay = min(2 * delay, self.max_backoff_s)

    def _pump(
        self, container: av.container.InputContainer, conn: _Connection, sink: SourceSink, origin: float
    ) -> str | None:
        """Deliver until the end (None), a failure (its description) or ``stop``."""
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is None and audio is None:
            return "no audio or video stream"
        self.has_video, self.has_audio = video is not None, audio is not None
        streams = [s for s in (video, audio) if s is not None]
        conn.heads = {kind: -math.inf for kind, s in (("video", video), ("audio", audio)) if s is not None}
        # The base is the video's start when there is video, so frames fall on the step grid as in a
        # file (audio that starts earlier, e.g. AAC priming, gets slightly negative times).
        starts = [float(s.start_time * s.time_base) for s in streams if s.start_time is not None and s.time_base]
        video_start = starts[0] if video is not None and video.start_time is not None and starts else None
        conn.start_hint = video_start if video_start is not None else (min(starts) if starts else None)
        if self.is_network:
            conn.audio = AudioRun(self.sample_rate)
        else:
            conn.timeline = FileTimeline(media_origin(streams), self.sample_rate)
            seek_to = self.start_s - SEEK_MARGIN_S
            if seek_to > 0:  # the keyframe before the margin: the frame at start_s and its audio decode whole
                anchor = video or audio
                if anchor.time_base:
                    try:
                        container.seek(int((conn.timeline.origin + seek_to) / anchor.time_base), stream=anchor,
                                       backward=True, any_frame=False)
                    except (av.error.FFmpegError, OSError) as err:
                        self._decode_warning(sink, f"cannot seek to {self.start_s:.1f} s ({_describe(err)}); "
                                                   "decoding from the start")
        try:
            for packet in container.demux(*streams):
                if self.stopped:
                    return None
                try:
                    frames = packet.decode()
                except (av.error.FFmpegError, ValueError) as err:
                    self._decode_warning(sink, f"corrupt {packet.stream.type} data skipped ({_describe(err)})")
                    continue
                for frame in frames:
                    if isinstance(frame, av.VideoFrame):
                        self._on_video_frame(frame, conn, sink, origin)
                    else:
                        self._on_audio_frame(frame, conn, sink, origin)
                    if self.stopped:
                        return None
        except av.error.ExitError:  # the interrupt callback: no data within the read timeout
            self._flush_audio(conn, sink, origin)
            self._release(conn, sink, origin, final=True)
            return f"no data for {self.read_timeout_s:g} s (read timeout)"
        except (av.error.FFmpegError, OSError) as err:
            self._flush_audio(conn, sink, origin)
            self._release(conn, sink, origin, final=True)
            return f"read error ({_describe(err)})"
        self._flush_audio(conn, sink, origin)
        self._release(conn, sink, origin, final=True)
        return None

    # -- timeline -------------------------------------------------------------------------------

    def _stream_time(self, pts: float, conn: _Connection, origin: float) -> float:
        """Stream time of a raw PTS (seconds) on this connection."""
        if conn.base is None:
            hint = conn.start_hint
            conn.base = hint if hint is not None and abs(pts - hint) < CLOCK_JUMP_AHEAD_S else pts
            conn.offset = self.start_s if conn.first else max(conn.arrival - origin, self._last_time)
        return pts - conn.base + conn.offset

    def _restart_timeline(self, pts: float, conn: _Connection, sink: SourceSink, origin: float, why: str) -> None:
        """The sender's clock jumped: continue from now, never backwards, with the same base for both streams."""
        self._flush_audio(conn, sink, origin)
        conn.base, conn.start_hint, conn.last_video_pts = None, None, None
        conn.arrival = time.monotonic()
        conn.first = False
        self.counters.errors += 1
        sink.on_status(SourceStatus("warning", f"{self.name}: {why}; timeline continues from now", discontinuity=True))
        self._stream_time(pts, conn, origin)

    def _due(self, t: float, origin: float) -> float | None:
        """``capture`` for data at stream time ``t``; sleeps first when paced. None: stopped while waiting."""
        if not self.paced:
            return time.monotonic()
        due = origin + t / self.speed
        if self._stop.wait(max(0.0, due - time.monotonic())):
            return None
        return due

    # -- video ----------------------------------------------------------------------------------

    def _on_video_frame(self, frame: av.VideoFrame, conn: _Connection, sink: SourceSink, origin: float) -> None:
        if frame.time is None:
            self._decode_warning(sink, "video frame without timestamp skipped")
            return
        pts = float(frame.time)
        if conn.timeline is not None:  # a file: jumps are closed over (see FileTimeline)
            t, note = conn.timeline.video(pts)
            if note:
                self.counters.errors += 1
                sink.on_status(SourceStatus("warning", f"{self.name}: {note}"))
        else:
            if conn.last_video_pts is not None:
                jump = pts - conn.last_video_pts
                if jump < -CLOCK_JUMP_BACK_S or jump > CLOCK_JUMP_AHEAD_S:
                    self._restart_timeline(pts, conn, sink, origin, f"video timestamps jumped by {jump:+.1f} s")
            conn.last_video_pts = pts
            t = self._stream_time(pts, conn, origin)
        if self.start_s > 0 and conn.timeline is not None and t < self.start_s - 1e-6:
            return  # before the resumed point: decoded only to reach it
        if self.paced and time.monotonic() - (origin + t / self.speed) > LATE_FRAME_S:
            # Decoding cannot keep up (a huge picture, a slow machine): skip the colour conversion
            # and catch up, so latency stays bounded instead of growing without end.
            self.counters.frames_dropped += 1
            self._decode_warning(sink, "decoding is slower than real time: late video frames dropped")
            return
        rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
        self._hold(conn, sink, origin, "video", t, t, rgb)

    # -- presentation order ---------------------------------------------------------------------

    def _hold(self, conn: _Connection, sink: SourceSink, origin: float, kind: str, t: float, end: float,
              data: np.ndarray) -> None:
        """Deliver decoded data, or, for a paced file, keep it until its turn in presentation order.

        A file's packets may be interleaved far from their presentation time (audio a second
        behind its video, a decoder that outputs a frame only after the next ones): pacing in
        packet order would deliver one modality late and every step would run degraded.
        """
        if not self.paced:
            self._deliver(conn, sink, kind, t, data, time.monotonic())
            return
        heapq.heappush(conn.held, (t, conn.held_count, kind, data))
        conn.held_count += 1
        conn.held_bytes += data.nbytes
        conn.heads[kind] = max(conn.heads.get(kind, -math.inf), end)
        self._release(conn, sink, origin)

    def _release(self, conn: _Connection, sink: SourceSink, origin: float, final: bool = False) -> None:
        """Deliver, at its time, what every stream has been decoded up to (everything when ``final``)."""
        while conn.held and not self.stopped:
            t = conn.held[0][0]
            newest = max(conn.heads.values(), default=t)
            ready = (final or t <= min(conn.heads.values(), default=t) or newest - t > DEMUX_AHEAD_S
                     or conn.held_bytes > DEMUX_AHEAD_BYTES)
            if not ready:
                return
            _, _, kind, data = heapq.heappop(conn.held)
            conn.held_bytes -= data.nbytes
            capture = self._due(t, origin)
            if capture is None:
                return
            self._deliver(conn, sink, kind, t, data, capture)
        if self.stopped:
            conn.held.clear()

    def _deliver(self, conn: _Connection, sink: SourceSink, kind: str, t: float, data: np.ndarray,
                 capture: float) -> None:
        if kind == "video":
            sink.on_video(VideoFrame(rgb=data, time=t, capture=capture))
            self.counters.frames += 1
        else:
            sink.on_audio(AudioChunk(samples=data, time=t, capture=capture))
            self.counters.audio_samples += len(data)
        self._last_time = max(self._last_time, t)
        conn.delivered = True

    # -- audio ----------------------------------------------------------------------------------

    def _on_audio_frame(self, frame: av.AudioFrame, conn: _Connection, sink: SourceSink, origin: float) -> None:
        if conn.timeline is not None:
            self._on_file_audio(frame, conn, sink, origin)
            return
        pts = float(frame.time) if frame.time is not None else None
        run = conn.audio
        if run.running and pts is not None:
            slip = run.slip(pts, frame.sample_rate)
            if slip < -CLOCK_JUMP_BACK_S or slip > CLOCK_JUMP_AHEAD_S:
                self._restart_timeline(pts, conn, sink, origin, f"audio timestamps jumped by {slip:+.1f} s")
            elif abs(slip) > AUDIO_SLIP_S:
                # Lost packets, or a sender whose sample clock drifts from its timestamps: follow the
                # timestamps. The engine's ring fills the gap with silence or trims the overlap (and
                # resets the stream only for a gap of over a second), so sync holds without a reset.
                self._flush_audio(conn, sink, origin)
                self.counters.audio_resyncs += 1
                what = "misses data" if slip > 0 else "overlaps itself"
                self._decode_warning(sink, f"audio {what} by {abs(slip):.3f} s; realigned to its timestamps",
                                     count=False)
        if not run.running:
            if pts is None:  # no clock of its own: start it with the video
                pts = conn.last_video_pts if conn.last_video_pts is not None else 0.0
            run.begin(self._stream_time(pts, conn, origin), pts)
        try:
            out = run.push(frame)
        except ValueError:  # the stream changed format mid-way: a fresh resampler from this frame on
            self._flush_audio(conn, sink, origin)
            self._decode_warning(sink, "audio format changed; audio realigned")
            return
        self._deliver_audio(out, conn, sink, origin)

    def _on_file_audio(self, frame: av.AudioFrame, conn: _Connection, sink: SourceSink, origin: float) -> None:
        timeline = conn.timeline
        resyncs = timeline.resyncs
        try:
            out, note = timeline.audio_frame(frame)
        except ValueError:  # the stream changed format mid-way: a fresh resampler from the next frame
            self._deliver_audio(timeline.end_audio(), conn, sink, origin)
            self._decode_warning(sink, "audio format changed; audio realigned")
            return
        if note and timeline.resyncs > resyncs:
            self.counters.audio_resyncs += 1
            self._decode_warning(sink, note, count=False)
        elif note:  # a jump, closed over
            self.counters.errors += 1
            sink.on_status(SourceStatus("warning", f"{self.name}: {note}"))
        self._deliver_audio(out, conn, sink, origin)

    def _flush_audio(self, conn: _Connection, sink: SourceSink, origin: float) -> None:
        """Deliver the resampler's held-back tail and end the current audio run."""
        run = conn.timeline.audio if conn.timeline is not None else conn.audio
        self._deliver_audio(run.end(), conn, sink, origin)

    def _deliver_audio(self, chunks: list[tuple[float, np.ndarray]], conn: _Connection, sink: SourceSink,
                       origin: float) -> None:
        for t, samples in chunks:
            if self.start_s > 0 and conn.timeline is not None and t < self.start_s - 1e-6:
                # Before the resumed point: cut. Audio there would start the stream's steps before
                # its first frame, repeating segments another worker already published.
                skip = round((self.start_s - t) * self.sample_rate)
                if skip >= len(samples):
                    continue
                t, samples = t + skip / self.sample_rate, samples[skip:]
            self._hold(conn, sink, origin, "audio", t, t + len(samples) / self.sample_rate, samples)

    def _decode_warning(self, sink: SourceSink, problem: str, count: bool = True) -> None:
        """Count every survived error; report at most one per interval so a broken stream cannot flood the sink."""
        if count:
            self.counters.errors += 1
        now = time.monotonic()
        if now - self._last_warning < WARNING_INTERVAL_S:
            self._suppressed += 1
            return
        more = f" (+{self._suppressed} more)" if self._suppressed else ""
        sink.on_status(SourceStatus("warning", f"{self.name}: {problem}{more}"))
        self._last_warning, self._suppressed = now, 0
