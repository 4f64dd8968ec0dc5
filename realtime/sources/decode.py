"""Decode a whole media file (or stream recording) with PyAV into timestamped frames and audio.

Training, evaluation and the realtime file source all read media through here, so a clip is
seen identically offline and online: same decoder, same resampler, same timestamps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np


class MediaError(RuntimeError):
    """Media that cannot be opened or decoded; the message names the file and the problem."""


@dataclass
class DecodedMedia:
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB, after the optional per-frame transform
    frame_times: np.ndarray  # (N,) float64 seconds, presentation times
    audio: np.ndarray  # (S,) float32 mono in [-1, 1] at sample_rate; empty if the file has no audio
    sample_rate: int  # Hz
    audio_start: float  # seconds: presentation time of audio[0], on the frames' clock

    @property
    def duration(self) -> float:
        video_end = self.frame_times[-1] if len(self.frame_times) else 0.0
        return max(float(video_end), self.audio_start + len(self.audio) / self.sample_rate)


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
    audio_start = None
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        streams = [container.streams.video[0], *container.streams.audio[:1]]
        origin = media_origin(streams)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        try:
            for frame in container.decode(*streams):
                if isinstance(frame, av.VideoFrame):
                    rgb = frame.to_ndarray(format="rgb24")
                    frames.append(frame_transform(rgb) if frame_transform else rgb)
                    times.append(float(frame.time) - origin)
                else:
                    if audio_start is None and frame.time is not None:
                        audio_start = float(frame.time) - origin
                    chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(frame)]
            chunks += [r.to_ndarray().reshape(-1) for r in resampler.resample(None)]
        except av.error.FFmpegError as err:
            raise MediaError(f"{path}: corrupt media, decoding stopped ({err})") from err
    if not frames:
        raise MediaError(f"{path}: no decodable video frames")
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return DecodedMedia(np.stack(frames), np.asarray(times), audio, sample_rate, audio_start or 0.0)
