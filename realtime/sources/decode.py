"""Decode a whole media file (or stream recording) with PyAV into timestamped frames and audio.

Training, evaluation and the realtime file source all read media through here, so a clip is
seen identically offline and online: same decoder, same resampler, same timestamps.
"""

from __future__ import annotations

from collections.abc import Callable
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


def place_audio(chunks: list[tuple[float, np.ndarray]], sample_rate: int) -> tuple[np.ndarray, float]:
    """One array from timed chunks, as the engine's ring places them: gaps silent, overlaps trimmed.

    Returns the samples and the time of the first. Offline evaluation thereby hears exactly what
    the live ring holds (see :mod:`avbind.realtime.buffers.audio_ring`).
    """
    from avbind.realtime.buffers.audio_ring import GAP_TOLERANCE_S

    if not chunks:
        return np.zeros(0, np.float32), 0.0
    start = chunks[0][0]
    parts, end = [], 0
    tolerance = GAP_TOLERANCE_S * sample_rate
    for t, samples in chunks:
        lead = (t - start) * sample_rate - end
        if lead > tolerance:
            parts.append(np.zeros(round(lead), np.float32))
            end += round(lead)
        elif lead < -tolerance:
            samples = samples[min(round(-lead), len(samples)):]
        parts.append(samples)
        end += len(samples)
    return np.concatenate(parts).astype(np.float32, copy=False), float(start)


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


def decode_media(
    path: str | Path, sample_rate: int = 16_000,
    frame_transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> DecodedMedia:
    """All video frames (RGB) and all audio (mono, resampled to ``sample_rate``) of ``path``.

    ``frame_transform`` is applied to each frame as it is decoded (e.g. resizing to the model's
    input), so a long clip never sits in memory at full resolution.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such media file")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise MediaError(f"{path}: cannot open media ({err})") from err
    frames, times, chunks = [], [], []
    problems: list[str] = []
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        streams = [container.streams.video[0], *container.streams.audio[:1]]
        timeline = FileTimeline(media_origin(streams), sample_rate)
        try:
            for frame in container.decode(*streams):
                if isinstance(frame, av.VideoFrame):
                    if frame.time is None:
                        continue
                    t, note = timeline.video(float(frame.time))
                    rgb = frame.to_ndarray(format="rgb24")
                    frames.append(frame_transform(rgb) if frame_transform else rgb)
                    times.append(t)
                else:
                    try:
                        out, note = timeline.audio_frame(frame)
                    except ValueError:  # the audio format changed: a new run from the next frame
                        out, note = timeline.end_audio(), "audio format changed; audio realigned"
                    chunks += out
                if note:
                    problems.append(note)
        except av.error.FFmpegError as err:
            # A file cut short (a recording that was still being written, a partial download)
            # keeps what decoded, as live playback does; with nothing decoded it is an error.
            if not frames:
                raise MediaError(f"{path}: corrupt media, nothing decodable ({err})") from err
            problems.append(f"decoding stopped after {len(frames)} frames ({err}); the rest is missing")
        chunks += timeline.end_audio()
    if not frames:
        raise MediaError(f"{path}: no decodable video frames")
    audio, audio_start = place_audio(chunks, sample_rate)
    return DecodedMedia(np.stack(frames), np.asarray(times), audio, sample_rate, audio_start, problems)
