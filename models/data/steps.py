"""Turn decoded clips into what the model consumes per step: one frame, one log-mel window, labels.

Uses the realtime path's own decoder (:mod:`avbind.realtime.sources.decode`), frame preparation,
log-mel and timestamp windowing, so training samples are cut exactly as live input is. Torch-free:
evaluation and int8 calibration with ONNX Runtime use it too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from avbind.models.config import ModelConfig
from avbind.models.data.ave import SEGMENTS, AveDataset, AveVideo
from avbind.realtime.features.frames import square_resize, to_model_input
from avbind.realtime.features.log_mel import log_mel
from avbind.realtime.sources.decode import DecodedMedia, MediaError, decode_media
from avbind.realtime.sync.windows import cut_log_mel_window, frame_index_at, log_mel_window_range, step_times

log = logging.getLogger(__name__)

IGNORE = -100  # label value that losses skip (e.g. verb/noun of a background step)
SEGMENT_S = 1.0  # s: AVE segment length


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

    def windows(self, start: int, stop: int, window_frames: int, floor_value: float) -> np.ndarray:
        """(stop - start, window_frames, n_mels) log-mel windows of steps [start, stop)."""
        return np.stack([
            cut_log_mel_window(self.log_mel, int(f), int(f) + window_frames, floor_value)
            for f in self.window_first[start:stop]
        ])

    def step_inputs(self, start: int, stop: int, config: ModelConfig) -> dict[str, np.ndarray]:
        """Model inputs for steps [start, stop): frames (T, 3, S, S) float32, log-mel windows."""
        floor_value = float(np.log(config.features.log_floor))
        return {
            "frame": to_model_input(self.frames[start:stop]),
            "log_mel": self.windows(start, stop, config.audio.window_frames, floor_value),
        }

    def stream_steps(self, config: ModelConfig, mask: tuple[float, float] = (1.0, 1.0)) -> list[dict[str, np.ndarray]]:
        """The video as a runtime backend sees it: one batch-of-1 input dict per step, in order."""
        inputs = self.step_inputs(0, len(self.labels), config)
        modality_mask = np.asarray([mask], dtype=np.float32)
        return [
            {"frame": inputs["frame"][i : i + 1], "log_mel": inputs["log_mel"][i : i + 1],
             "modality_mask": modality_mask}
            for i in range(len(self.labels))
        ]


def step_audio(media: DecodedMedia, times: np.ndarray, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """The clip's log-mel (K, n_mels) and each step's first window frame (T,): the binding window rule."""
    features = config.features
    mel = log_mel(media.audio, features) if media.audio.size else np.zeros((0, features.n_mels), np.float32)
    first = np.array([
        log_mel_window_range(t, features, config.audio.window_frames, config.audio.end_offset_s, media.audio_start)[0]
        for t in times
    ], dtype=np.int64)
    return mel.astype(np.float32), first


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


def verb_noun_indices(dataset: AveDataset) -> dict[int, tuple[int, int]] | None:
    if not dataset.class_verb_noun:
        return None
    verbs, nouns = dataset.verbs, dataset.nouns
    return {
        dataset.class_names.index(name): (verbs.index(v), nouns.index(n))
        for name, (v, n) in dataset.class_verb_noun.items()
    }


def _prepare_one(args: tuple) -> PreparedVideo | tuple[str, str]:
    try:
        return prepare_video(*args)
    except MediaError as err:
        return args[0].video_id, str(err)


def _cache_key(dataset: AveDataset, config: ModelConfig) -> str:
    relevant = {
        # A clip's length only where it is not AVE's 10 s, so that caches of 10 s sets keep their keys.
        "videos": [
            (v.video_id, v.events, v.path.stat().st_size, *([v.duration_s] if v.duration_s != SEGMENTS else []))
            for v in dataset.videos
        ],
        "input_size": config.video.input_size,
        "step_rate_hz": config.step_rate_hz,
        "features": config.features.to_dict(),
        "end_offset_s": config.audio.end_offset_s,
        "window_frames": config.audio.window_frames,
        "version": 2,  # 2: audio realigned to its timestamps, jumps closed over, cut files kept
    }
    return hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_dataset(
    dataset: AveDataset, config: ModelConfig, cache_dir: str | Path | None = None, workers: int | None = None,
    progress: bool = True,
) -> PreparedVideos:
    """Prepared steps of every decodable video, decoded in parallel and cached on disk when ``cache_dir`` is set.

    A video whose media cannot be decoded is skipped, logged and listed in ``.skipped``; if none
    can be decoded, MediaError.
    """
    cache = Path(cache_dir) / f"steps-{_cache_key(dataset, config)}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            prepared = _unpack(data)
        _report_skipped(prepared.skipped, len(dataset.videos))
        return prepared
    verb_noun = verb_noun_indices(dataset)
    jobs = [(v, dataset.labels(v), config, verb_noun) for v in dataset.videos]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    from tqdm import tqdm

    with ProcessPoolExecutor(max_workers=max(workers, 1)) as pool:
        results = list(tqdm(pool.map(_prepare_one, jobs, chunksize=4), total=len(jobs), desc="decode",
                            unit="clip", disable=not progress, leave=False))
    prepared = PreparedVideos([r for r in results if isinstance(r, PreparedVideo)],
                              [r for r in results if not isinstance(r, PreparedVideo)])
    _report_skipped(prepared.skipped, len(jobs))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, **_pack(prepared))
        tmp.replace(cache)
    return prepared


def _report_skipped(skipped: list[tuple[str, str]], total: int) -> None:
    for video_id, reason in skipped:
        log.warning("skipped video %s: %s", video_id, reason)
    if total and len(skipped) == total:
        raise MediaError(f"none of the {total} videos could be decoded (first: {skipped[0][1]})")


_FIELDS = ("frames", "log_mel", "window_first", "labels", "segment_labels", "step_segments", "verbs", "nouns")


def _pack(videos: list[PreparedVideo]) -> dict[str, np.ndarray]:
    packed = {"video_ids": np.array([v.video_id for v in videos])}
    skipped = getattr(videos, "skipped", [])
    packed["skipped"] = np.array([f"{vid}\t{reason}" for vid, reason in skipped], dtype=str)
    for name in _FIELDS:
        arrays = [getattr(v, name) for v in videos]
        packed[name] = np.concatenate(arrays)
        packed[name + "_lengths"] = np.array([len(a) for a in arrays])
    return packed


def _unpack(data: np.lib.npyio.NpzFile) -> PreparedVideos:
    parts = {}
    for name in _FIELDS:
        bounds = np.cumsum(data[name + "_lengths"])[:-1]
        parts[name] = np.split(data[name], bounds)
    videos = [
        PreparedVideo(str(vid), *(parts[name][i] for name in _FIELDS))
        for i, vid in enumerate(data["video_ids"])
    ]
    skipped = [tuple(str(s).split("\t", 1)) for s in data["skipped"]] if "skipped" in data else []
    return PreparedVideos(videos, skipped)
