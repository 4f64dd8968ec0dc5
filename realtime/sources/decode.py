"""Decode a media file (or stream recording) with PyAV into timestamped frames and audio.

Training, evaluation and the realtime file source all read media through here, so a clip is
seen identically offline and online: same decoder, same resampler, same timestamps.
:func:`iter_media` streams a file (or a time range of it) in bounded memory, for hour-long
videos; :func:`decode_media` collects it whole, for clips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

# A file's timestamps are its timeline, but not blindly: concatenations, splices and broken muxers
# leave jumps and overlaps that, followed literally, stall a stream or drift its audio from its video.
CLOCK_JUMP_BACK_S = 1.0  # s; timestamps this far backwards are a jump (a sender restarted, a splice) ...
CLOCK_JUMP_AHEAD_S = 10.0  # s; ... or this far forwards
# s; audio timestamps this far from the samples counted since the last realignment mean the audio
# overlaps or misses data (a ``-f concat -c copy`` join repeats 60-80 ms of AAC priming per part):
# the audio is realigned to its timestamps. 20 ms is under half a 25 fps frame and above any
# timestamp rounding of real muxers.
AUDIO_SLIP_S = 0.02


class MediaError(RuntimeError):
    """Media that cannot be opened or decoded; the message names the file and the problem."""


@dataclass
class DecodedMedia:
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, after the optional per-frame transform
    frame_times: np.ndarray  # (N,) float64 seconds, presentation times
    audio: np.ndarray  # (S,) float32 mono in [-1, 1] at sample_rate; empty if the file has no audio
    sample_rate: int  # Hz
    audio_start: float  # seconds: presentation time of audio[0], on the frames' clock
    problems: list[str] = field(default_factory=list)  # what was survived: timestamp jumps, a truncated end

    @property
    def duration(self) -> float:
        video_end = self.frame_times[-1] if len(self.frame_times) else 0.0
        return max(float(video_end), self.audio_start + len(self.audio) / self.sample_rate)


class AudioRun:
    """Audio resampled to the model's rate, timed from the timestamp where the current run began.

    Within a run, time advances by samples (exact, no timestamp rounding); a new run starts
    wherever the timestamps and the sample count disagree by more than ``AUDIO_SLIP_S``.
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = int(sample_rate)
        self.resampler: av.AudioResampler | None = None
        self.start = 0.0  # s, stream time of the run's first sample
        self.in_pts = 0.0  # s, timestamp (as compared by the caller) of that first sample
        self.in_samples = 0  # input samples since
        self.emitted = 0  # resampled samples since

    @property
    def running(self) -> bool:
        return self.resampler is not None

    def slip(self, pts: float, input_rate: int) -> float:
        """How far ``pts`` is from where the samples counted so far say the next frame starts."""
        return pts - (self.in_pts + self.in_samples / input_rate)

    def begin(self, stream_time: float, pts: float) -> None:
        self.start, self.in_pts, self.in_samples, self.emitted = stream_time, pts, 0, 0
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate)

    def push(self, frame: av.AudioFrame) -> list[tuple[float, np.ndarray]]:
        """(time, samples) of what the resampler gives back. ValueError: the input format changed."""
        self.in_samples += frame.samples
        return self._timed(self.resampler.resample(frame))

    def end(self) -> list[tuple[float, np.ndarray]]:
        """The resampler's held-back tail; the run is over."""
        if self.resampler is None:
            return []
        tail = self._timed(self.resampler.resample(None))
        self.resampler = None
        return tail

    def _timed(self, frames: list[av.AudioFrame]) -> list[tuple[float, np.ndarray]]:
        out = []
        for resampled in frames:
            samples = resampled.to_ndarray().reshape(-1).astype(np.float32, copy=False)  # (n,) mono
            if len(samples):
                out.append((self.start + self.emitted / self.sample_rate, samples))
                self.emitted += len(samples)
        return out


@dataclass
class FileTimeline:
    """Stream times of one file's frames and audio, as both the live file source and ``decode_media`` use them.

    Time 0 is ``origin`` (where the video starts). A jump in the video's or the audio's timestamps
    (``CLOCK_JUMP_*``) is closed over: the stream continues one frame (or sample) after where it
    was, so a +1000 s splice neither stalls playback for 1000 s nor leaves the audio behind.
    Smaller disagreements between audio timestamps and sample counts realign the audio to its
    timestamps, so a concatenated file's audio stays with its video. Each returns a note for
    people (None when nothing happened); ``jumps`` and ``resyncs`` count them.
    """

    origin: float
    sample_rate: int
    video_shift: float = 0.0  # s taken off video timestamps after jumps
    audio_shift: float = 0.0  # s taken off audio timestamps after jumps
    jumps: int = 0
    resyncs: int = 0
    last_video_pts: float | None = None
    video_interval: float = 0.0  # s, the last regular gap between two frames
    audio: AudioRun = field(init=False)

    def __post_init__(self) -> None:
        self.audio = AudioRun(self.sample_rate)

    def video(self, pts: float) -> tuple[float, str | None]:
        note = None
        if self.last_video_pts is not None:
            jump = pts - self.last_video_pts
            if jump < -CLOCK_JUMP_BACK_S or jump > CLOCK_JUMP_AHEAD_S:
                self.video_shift += jump - self.video_interval
                self.jumps += 1
                note = f"video timestamps jumped by {jump:+.1f} s; timeline closed over the jump"
            else:
                self.video_interval = jump
        self.last_video_pts = pts
        return pts - self.origin - self.video_shift, note

    def audio_frame(self, frame: av.AudioFrame) -> tuple[list[tuple[float, np.ndarray]], str | None]:
        """(time, samples) ready for delivery (possibly none yet) and a note.

        ValueError: the audio format changed mid-way (the caller ends the run and goes on).
        """
        run, note, out = self.audio, None, []
        pts = float(frame.time) if frame.time is not None else None
        if pts is None:  # no clock of its own: continue the run, or start it with the video
            if not run.running:
                start = self.last_video_pts if self.last_video_pts is not None else self.origin
                run.begin(start - self.origin - self.video_shift, start)
            return run.push(frame), None
        pts -= self.audio_shift
        if run.running:
            slip = run.slip(pts, frame.sample_rate)
            if slip < -CLOCK_JUMP_BACK_S or slip > CLOCK_JUMP_AHEAD_S:
                self.audio_shift += slip
                pts -= slip
                self.jumps += 1
                note = f"audio timestamps jumped by {slip:+.1f} s; timeline closed over the jump"
            elif abs(slip) > AUDIO_SLIP_S:
                out = run.end()
                self.resyncs += 1
                what = "overlaps itself" if slip < 0 else "misses data"
                note = f"audio {what} by {abs(slip):.3f} s at {pts - self.origin:.2f} s; realigned to its timestamps"
        if not run.running:
            run.begin(pts - self.origin, pts)
        return out + run.push(frame), note

    def end_audio(self) -> list[tuple[float, np.ndarray]]:
        return self.audio.end()


class AudioPlacer:
    """Timed chunks into one continuous signal, as the engine's ring places them: gaps silent,
    overlaps trimmed. Incremental, so an hour of audio never has to sit in memory at once."""

    def __init__(self, sample_rate: int) -> None:
        from avbind.realtime.buffers.audio_ring import GAP_TOLERANCE_S

        self.sample_rate = sample_rate
        self.tolerance = GAP_TOLERANCE_S * sample_rate
        self.start: float | None = None  # s, time of the first placed sample
        self.end = 0  # samples placed so far

    def push(self, t: float, samples: np.ndarray) -> np.ndarray:
        """The samples to append for a chunk starting at ``t`` (silence first for a gap)."""
        if self.start is None:
            self.start = float(t)
        lead = (t - self.start) * self.sample_rate - self.end
        parts = []
        if lead > self.tolerance:
            parts.append(np.zeros(round(lead), np.float32))
        elif lead < -self.tolerance:
            samples = samples[min(round(-lead), len(samples)):]
        parts.append(np.asarray(samples, np.float32))
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        self.end += len(out)
        return out


def place_audio(chunks: list[tuple[float, np.ndarray]], sample_rate: int) -> tuple[np.ndarray, float]:
    """One array from timed chunks (see :class:`AudioPlacer`); returns the samples and the time of the first.

    Offline evaluation thereby hears exactly what the live ring holds (see
    :mod:`avbind.realtime.buffers.audio_ring`).
    """
    if not chunks:
        return np.zeros(0, np.float32), 0.0
    placer = AudioPlacer(sample_rate)
    parts = [placer.push(t, samples) for t, samples in chunks]
    return np.concatenate(parts).astype(np.float32, copy=False), float(placer.start)


def media_origin(streams: list) -> float:
    """The presentation time that is time 0 of a file: where its video starts (else its earliest stream).

    MPEG-TS files start their clocks anywhere (1.4 s is common); counted from the raw timestamps,
    every segment would straddle two seconds of content. The realtime file source uses the same
    origin, so a file is cut identically live and offline, whatever its container.
    """
    starts = [float(s.start_time * s.time_base) for s in streams if s.start_time is not None and s.time_base]
    video = streams[0] if streams and streams[0].type == "video" and streams[0].start_time is not None else None
    if video is not None:
        return float(video.start_time * video.time_base)
    return min(starts) if starts else 0.0


@dataclass
class MediaEvent:
    """One decoded item of :func:`iter_media`: a video frame or a run of audio samples, timed."""

    kind: str  # "video", "audio" or "note" (something survived: a jump, a truncated end)
    time: float  # s on the file's timeline (0 = where its video starts); notes: 0
    frame: av.VideoFrame | None = None  # video: still in the decoder's format (convert what you keep)
    samples: np.ndarray | None = None  # audio: (n,) float32 mono at the requested rate
    note: str = ""


def open_media(path: str | Path) -> av.container.InputContainer:
    """``path`` opened for decoding; MediaError naming the file when it is missing or not media."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such media file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise MediaError(f"{path}: cannot open media ({err})") from err
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: no video stream")
    return container


SEEK_MARGIN_S = 2.0  # s decoded before a range's start: the resampler and the frame before it settle


def iter_media(path: str | Path, sample_rate: int = 16_000, start_s: float = 0.0,
               stop_s: float | None = None) -> Iterator[MediaEvent]:
    """The file's video frames and audio (mono, ``sample_rate``) in decode order, on its timeline.

    With ``start_s`` > 0 the decoder seeks to the keyframe before ``start_s - SEEK_MARGIN_S`` and
    starts there; with ``stop_s`` it stops once both streams have passed ``stop_s``. Nothing is
    kept: memory does not grow with the file's length. A file cut short ends the iteration with
    a note (MediaError if nothing decoded at all).
    """
    container = open_media(path)
    with container:
        streams = [container.streams.video[0], *container.streams.audio[:1]]
        timeline = FileTimeline(media_origin(streams), sample_rate)
        video = streams[0]
        if start_s > SEEK_MARGIN_S and video.time_base:
            target = timeline.origin + start_s - SEEK_MARGIN_S
            container.seek(int(target / video.time_base), stream=video, backward=True, any_frame=False)
        frames = 0
        passed = {"video": False, "audio": len(streams) == 1}
        try:
            for frame in container.decode(*streams):
                if isinstance(frame, av.VideoFrame):
                    if frame.time is None:
                        continue
                    t, note = timeline.video(float(frame.time))
                    frames += 1
                    yield MediaEvent("video", t, frame=frame)
                    passed["video"] = stop_s is not None and t > stop_s
                else:
                    try:
                        out, note = timeline.audio_frame(frame)
                    except ValueError:  # the audio format changed: a new run from the next frame
                        out, note = timeline.end_audio(), "audio format changed; audio realigned"
                    for t, samples in out:
                        yield MediaEvent("audio", t, samples=samples)
                        passed["audio"] = stop_s is not None and t > stop_s
                if note:
                    yield MediaEvent("note", 0.0, note=note)
                if all(passed.values()):
                    break
        except av.error.FFmpegError as err:
            # A file cut short (a recording that was still being written, a partial download)
            # keeps what decoded, as live playback does; with nothing decoded it is an error.
            if not frames:
                raise MediaError(f"{path}: corrupt media, nothing decodable ({err})") from err
            yield MediaEvent("note", 0.0, note=f"decoding stopped after {frames} frames ({err}); the rest is missing")
        for t, samples in timeline.end_audio():
            yield MediaEvent("audio", t, samples=samples)
    if not frames:
        raise MediaError(f"{path}: no decodable video frames")


def decode_media(
    path: str | Path, sample_rate: int = 16_000,
    frame_transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> DecodedMedia:
    """All video frames (RGB) and all audio (mono, resampled to ``sample_rate``) of ``path``.

    ``frame_transform`` is applied to each frame as it is decoded (e.g. resizing to the model's
    input), so a long clip never sits in memory at full resolution.
    """
    frames, times, chunks, problems = [], [], [], []
    for event in iter_media(path, sample_rate):
        if event.kind == "video":
            rgb = event.frame.to_ndarray(format="rgb24")
            frames.append(frame_transform(rgb) if frame_transform else rgb)
            times.append(event.time)
        elif event.kind == "audio":
            chunks.append((event.time, event.samples))
        else:
            problems.append(event.note)
    audio, audio_start = place_audio(chunks, sample_rate)
    return DecodedMedia(np.stack(frames), np.asarray(times), audio, sample_rate, audio_start, problems)
