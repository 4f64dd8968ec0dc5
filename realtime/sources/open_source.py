"""Turn what a user types after ``--video`` / ``--audio`` into a source.

* a number or ``/dev/videoN``: a webcam through OpenCV;
* ``mic`` or ``mic:DEVICE`` (a sounddevice name or index): a microphone;
* ``synthetic`` or ``synthetic:SEED``: the live avsynth stream;
* anything else: a file or network URL through PyAV (rtsp://, udp://, srt://, http://...).
"""

from __future__ import annotations

import re

from avbind.realtime.sources.base import Source


def open_source(spec: str, sample_rate: int = 16_000, speed: float = 1.0, reconnect_for_s: float | None = None,
                start_s: float = 0.0) -> Source:
    """``start_s``: where a file starts playing, and a network stream's timeline starts (a stream
    resumed on another cluster worker); cameras, microphones and the synthetic stream start live."""
    spec = spec.strip()
    if not spec:
        raise ValueError("empty source: give a file, URL, camera index, 'mic' or 'synthetic'")
    if re.fullmatch(r"\d+", spec) or re.fullmatch(r"/dev/video\d+", spec):
        from avbind.realtime.sources.webcam import WebcamSource

        return WebcamSource(int(spec) if spec.isdigit() else spec)
    if spec == "mic" or spec.startswith("mic:"):
        from avbind.realtime.sources.microphone import MicrophoneSource

        device = spec[4:] or None
        return MicrophoneSource(int(device) if device and device.isdigit() else device, sample_rate=sample_rate)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        from avbind.realtime.sources.synthetic import SyntheticSource

        seed = spec.partition(":")[2]
        return SyntheticSource(seed=int(seed) if seed else 2026, speed=speed)
    from avbind.realtime.sources.media_stream import MediaStreamSource, not_regular_file

    # Refuse now, in one line, what would block the caller (a FIFO) or can never play (a directory).
    if (problem := not_regular_file(spec)) is not None:
        raise ValueError(f"{_shown(spec)}: {problem}")
    return MediaStreamSource(spec, sample_rate=sample_rate, speed=speed, give_up_s=reconnect_for_s, start_s=start_s)


class _FilteringSink:
    def __init__(self, sink, video: bool, audio: bool) -> None:
        self.sink, self.video, self.audio = sink, video, audio

    def on_video(self, frame) -> None:
        if self.video:
            self.sink.on_video(frame)

    def on_audio(self, chunk) -> None:
        if self.audio:
            self.sink.on_audio(chunk)

    def on_status(self, status) -> None:
        self.sink.on_status(status)


class ModalitySelection(Source):
    """Use only some modalities of a source: a file's video with a separate microphone's audio."""

    def __init__(self, source: Source, video: bool, audio: bool) -> None:
        super().__init__()
        self.source = source
        self.name = source.name
        self.has_video = source.has_video and video
        self.has_audio = source.has_audio and audio
        self.counters = source.counters

    def start(self, sink, origin: float) -> None:
        self.source.start(_FilteringSink(sink, self.has_video, self.has_audio), origin)

    def stop(self) -> None:
        self.source.stop()


def _shown(spec: str) -> str:
    """A source as it may be printed: without the password of its URL."""
    from avbind.realtime.sources.media_stream import redact_credentials

    return redact_credentials(spec)


def stream_sources(
    video: str | None, audio: str | None, sample_rate: int = 16_000, speed: float = 1.0,
    reconnect_for_s: float | None = None, start_s: float = 0.0,
) -> list[Source]:
    """The sources of one stream: a video spec, an audio spec, or both (a media spec given for video
    contributes its own audio unless a separate audio source is named)."""
    if video is None and audio is None:
        raise ValueError("a stream needs --video, --audio or both")
    sources: list[Source] = []
    if video is not None:
        source = open_source(video, sample_rate, speed, reconnect_for_s, start_s)
        if not source.has_video:
            raise ValueError(f"--video {_shown(video)}: this source has no video")
        sources.append(ModalitySelection(source, video=True, audio=audio is None) if audio else source)
    if audio is not None:
        source = open_source(audio, sample_rate, speed, reconnect_for_s, start_s)
        if not source.has_audio:
            raise ValueError(f"--audio {_shown(audio)}: this source has no audio")
        sources.append(ModalitySelection(source, video=False, audio=True) if source.has_video else source)
    return sources
