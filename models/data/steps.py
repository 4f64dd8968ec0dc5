"""Turn decoded clips into what the model consumes per step: one frame, one log-mel window, labels.

Uses the realtime path's own decoder (:mod:`avbind.realtime.sources.decode`), frame preparation,
log-mel and timestamp windowing, so training samples are cut exactly as live input is. Torch-free:
evaluation and int8 calibration with ONNX Runtime use it too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from avbind.models.config import ModelConfig
from avbind.models.data.ave import AveVideo
from avbind.models.data.dataset import IGNORE, SEGMENT_S, DataSet
from avbind.realtime.features.frames import square_resize, to_model_input
from avbind.realtime.features.log_mel import log_mel
from avbind.realtime.sources.decode import DecodedMedia, MediaError, decode_media
from avbind.realtime.sync.windows import cut_log_mel_window, frame_index_at, log_mel_window_range, step_times

log = logging.getLogger(__name__)



@dataclass
class PreparedVideo:
    video_id: str
    frames: np.ndarray  # (T, S, S, 3) uint8: the frame each step sees
    log_mel: np.ndarray  # (K, n_mels) float32: the whole clip's log-mel frames
    window_first: np.ndarray  # (T,) int64: first log-mel frame of each step's window
    labels: np.ndarray  # (T,) int64 event class per step; background = num_classes
    segment_labels: np.ndarray  # (segments,) int64
    step_segments: np.ndarray  # (T,) int64: the segment each step falls in
    verbs: np.ndarray  # (T,) int64, IGNORE where there is no verb
    nouns: np.ndarray  # (T,) int64, IGNORE where there is no noun
    # (A, 5) annotated segments scored one prediction each: [first step, stop step, event, verb, noun]
    actions: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.int64))
    start_s: float = 0.0  # s, time of the first step

    def windows(self, start: int, stop: int, window_frames: int, floor_value: float) -> np.ndarray:
        """(stop - start, window_frames, n_mels) log-mel windows of steps [start, stop).

        The log-mel may be on disk (:class:`~avbind.models.data.cache.DiskArray`): the stretch the
        windows cover is read once, as float32.
        """
        firsts = self.window_first[start:stop]
        n_mels = self.log_mel.shape[1]
        if not len(firsts):
            return np.zeros((0, window_frames, n_mels), np.float32)
        lo = max(int(firsts.min()), 0)
        hi = max(min(int(firsts.max()) + window_frames, len(self.log_mel)), lo)
        span = np.asarray(self.log_mel[lo:hi], dtype=np.float32)
        return np.stack([cut_log_mel_window(span, int(f) - lo, int(f) - lo + window_frames, floor_value)
                         for f in firsts])

    def step_inputs(self, start: int, stop: int, config: ModelConfig) -> dict[str, np.ndarray]:
        """Model inputs for steps [start, stop): frames (T, 3, S, S) float32, log-mel windows."""
        floor_value = float(np.log(config.features.log_floor))
        return {
            "frame": to_model_input(self.frames[start:stop]),
            "log_mel": self.windows(start, stop, config.audio.window_frames, floor_value),
        }

    def stream_steps(self, config: ModelConfig, mask: tuple[float, float] = (1.0, 1.0),
                     chunk: int = 256) -> Iterator[dict[str, np.ndarray]]:
        """The video as a runtime backend sees it: one batch-of-1 input dict per step, in order
        (read ``chunk`` steps at a time, so an hour-long video streams in bounded memory)."""
        modality_mask = np.asarray([mask], dtype=np.float32)
        for start in range(0, len(self.labels), chunk):
            inputs = self.step_inputs(start, min(start + chunk, len(self.labels)), config)
            for i in range(len(inputs["frame"])):
                yield {"frame": inputs["frame"][i : i + 1], "log_mel": inputs["log_mel"][i : i + 1],
                       "modality_mask": modality_mask}


def window_firsts(times: np.ndarray, config: ModelConfig, audio_start: float) -> np.ndarray:
    """(T,) int64: each step's first log-mel frame, by the binding window rule."""
    return np.array([
        log_mel_window_range(t, config.features, config.audio.window_frames, config.audio.end_offset_s,
                             audio_start)[0]
        for t in times
    ], dtype=np.int64)


def step_audio(media: DecodedMedia, times: np.ndarray, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """The clip's log-mel (K, n_mels) and each step's first window frame (T,): the binding window rule."""
    features = config.features
    mel = log_mel(media.audio, features) if media.audio.size else np.zeros((0, features.n_mels), np.float32)
    return mel.astype(np.float32), window_firsts(times, config, media.audio_start)


class PreparedVideos(list):
    """The prepared videos of a set, and the ones that could not be decoded (``skipped``).

    One unreadable file in a thousand must not cost a whole evaluation or training run: it is
    left out and named, as (video id, reason) pairs, for the caller to report.
    """

    def __init__(self, videos: list[PreparedVideo] = (), skipped: list[tuple[str, str]] = ()) -> None:
        super().__init__(videos)
        self.skipped = list(skipped)


def prepare_video(
    video: AveVideo, segment_labels: np.ndarray, config: ModelConfig,
    verb_noun_of_class: dict[int, tuple[int, int]] | None = None,
) -> PreparedVideo:
    size = config.video.input_size
    media = decode_media(video.path, config.features.sample_rate, partial(square_resize, size=size))
    for problem in media.problems:  # decoded, with something survived: say so, keep it
        log.warning("%s: %s", video.path, problem)
    segments = len(segment_labels)
    times = step_times(segments * SEGMENT_S, config.step_rate_hz)
    frames = media.frames[frame_index_at(media.frame_times, times)]
    mel, first = step_audio(media, times, config)
    step_segments = np.minimum((times // SEGMENT_S).astype(np.int64), segments - 1)
    labels = segment_labels[step_segments]
    verbs = np.full(len(times), IGNORE, np.int64)
    nouns = np.full(len(times), IGNORE, np.int64)
    for i, label in enumerate(labels):
        if verb_noun_of_class and int(label) in verb_noun_of_class:
            verbs[i], nouns[i] = verb_noun_of_class[int(label)]
    return PreparedVideo(video.video_id, frames, mel, first, labels,
                         segment_labels, step_segments, verbs, nouns)


def prepare_dataset(
    dataset: DataSet, config: ModelConfig, cache_dir: str | Path | None = None, workers: int | None = None,
    progress: bool = True,
) -> PreparedVideos:
    """Every decodable clip of ``dataset``, prepared on disk (:mod:`avbind.models.data.cache`) once.

    Frames and log-mel stay on disk and are read by slices; labels come from the annotations now.
    ``cache_dir`` defaults to the data set's ``cache_home``. A clip whose media cannot be decoded
    is skipped, logged and listed in ``.skipped``; if none can be, MediaError.
    """
    from avbind.models.data.cache import prepare_clips

    clips = dataset.clips()
    ready, skipped = prepare_clips(clips, config, cache_dir or dataset.cache_home, workers, progress)
    if clips and len(skipped) == len(clips):
        raise MediaError(f"none of the {len(clips)} videos could be decoded (first: {skipped[0][1]})")
    videos = []
    for clip in clips:
        cached = ready.get(clip.clip_id)
        if cached is None:
            continue
        times = cached.step_times(config.step_rate_hz)
        targets = dataset.targets(clip, times)
        first = window_firsts(times, config, cached.audio_start)
        videos.append(PreparedVideo(clip.clip_id, cached.frames, cached.log_mel, first, targets.labels,
                                    targets.segment_labels, targets.step_segments, targets.verbs, targets.nouns,
                                    targets.actions, float(times[0]) if len(times) else 0.0))
    return PreparedVideos(videos, skipped)
