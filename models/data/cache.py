"""``avbind data prepare``: each video decoded once, into per-step frames and log-mel on disk.

Training reads thousands of random crops per epoch; decoding a 1080p60 hour for each would cost
more than the training. So every clip a data set names (a :class:`~avbind.models.data.dataset.Clip`:
a video and the stretch of it that is needed) is decoded once, streaming, into a folder of the cache:

* ``frames.u8``: (steps, S, S, 3) uint8, the frame each model step sees, at the model's input size;
* ``log_mel.f16``: (frames, n_mels) float16, the stretch's log-mel;
* ``meta.json``: shapes, the first step's index, the audio's start time; written last.

Memory does not grow with a video's length: frames are kept only at step times (and converted to
RGB only then), audio is turned into log-mel as it is decoded, and both go straight to disk.
Readers read slices with plain file reads (:class:`DiskArray`), not memory maps, so the pages a
training run touches stay in the page cache and out of its resident set.

A folder's name is a hash of every setting its content depends on (input size, step rate, audio
features, this module's ``VERSION``) and of the media file's identity and stretch, so a change to
any of them prepares again, and labels (read from the annotations at load time) are not part of
it: fixing an annotation does not decode anything again. A folder appears by an atomic rename when
complete, so a killed run leaves only ``*.part-PID`` folders, which the next run removes and redoes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from avbind.models.config import ModelConfig
from avbind.realtime.features.frames import square_resize
from avbind.realtime.features.log_mel import LogMelStream
from avbind.realtime.sources.decode import AudioPlacer, MediaError, iter_media
from avbind.realtime.sync.windows import EPSILON_S

if TYPE_CHECKING:
    from avbind.models.data.dataset import Clip

log = logging.getLogger(__name__)

VERSION = 3  # 3: per-clip folders, float16 log-mel, streaming decode by time range
AUDIO_MARGIN_S = 1.0  # s decoded past a stretch's end: the last step's audio window looks ahead (<= 0.5 s)


class DiskArray:
    """A read-only array in a raw file, read by slices.

    Unlike ``np.memmap``, what has been read does not stay mapped, so a training run's resident
    memory is its batches, not every page of a 30-minute video it has sampled crops from.
    """

    def __init__(self, path: Path, dtype: np.dtype | str, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(shape)
        self._row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index: slice | int) -> np.ndarray:
        if isinstance(index, int | np.integer):
            i = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} rows")
            return self[i : i + 1][0]
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError(f"{self.path.name}: read by contiguous slices, got {index!r}")
        start, stop, _ = index.indices(len(self))
        count = max(stop - start, 0)
        if not count:
            return np.zeros((0, *self.shape[1:]), self.dtype)
        with self.path.open("rb") as handle:
            handle.seek(start * self._row)
            data = np.fromfile(handle, self.dtype, count * self._row // self.dtype.itemsize)
        return data.reshape(count, *self.shape[1:])

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        whole = self[:]
        return whole.astype(dtype) if dtype is not None else whole


@dataclass(frozen=True)
class CachedClip:
    """One prepared clip: step frames and log-mel on disk, and where its steps sit on the timeline."""

    folder: Path
    first_step: int  # global index k of the first step (its time is k / step_rate)
    steps: int
    audio_start: float  # s, time of the first log-mel sample (0 with no audio)
    duration: float  # s, the decoded media's end (video or audio, whichever is later)
    problems: tuple[str, ...]  # what was survived while decoding
    frames: DiskArray  # (steps, S, S, 3) uint8
    log_mel: DiskArray  # (mel frames, n_mels) float16

    def step_times(self, step_rate_hz: float) -> np.ndarray:
        return (self.first_step + np.arange(self.steps)) / step_rate_hz


def feature_key(config: ModelConfig) -> str:
    """Hash of every setting a prepared clip's content depends on."""
    relevant = {"input_size": config.video.input_size, "step_rate_hz": config.step_rate_hz,
                "features": config.features.to_dict(), "version": VERSION}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def clip_key(clip: Clip) -> str:
    """Hash of a clip's media file (path, size, modification time) and stretch."""
    path = Path(clip.path).resolve()
    stat = path.stat()
    identity = [str(path), stat.st_size, stat.st_mtime_ns, clip.start_s, clip.stop_s]
    return hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:16]


def clip_folder(cache_dir: Path, clip: Clip, config: ModelConfig) -> Path:
    return Path(cache_dir) / f"features-{feature_key(config)}" / clip_key(clip)


def _step_range(clip: Clip, step_rate_hz: float) -> tuple[int, int | None]:
    """[first, stop) global step indices of the clip's stretch; stop None: to the media's end."""
    first = math.ceil(clip.start_s * step_rate_hz - EPSILON_S)
    stop = None if clip.stop_s is None else math.floor(clip.stop_s * step_rate_hz + EPSILON_S)
    return first, stop


def write_clip(clip: Clip, config: ModelConfig, folder: Path) -> CachedClip:
    """Decode ``clip``'s stretch of its video into ``folder`` (see the module docstring).

    Step k takes the latest frame at or before its time (the first frame before any), as
    :func:`~avbind.realtime.sync.windows.frame_index_at` rules; steps after the video's end take
    its last frame. MediaError when the file cannot be decoded at all.
    """
    rate, size = config.step_rate_hz, config.video.input_size
    first, stop = _step_range(clip, rate)
    part = folder.with_name(f"{folder.name}.part-{os.getpid()}")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    placer = AudioPlacer(config.features.sample_rate)
    mels = LogMelStream(config.features)
    problems: list[str] = []
    k, mel_frames, video_end = first, 0, 0.0
    last: list = [None, None]  # the av.VideoFrame last converted, and its resized RGB

    def rgb_of(frame) -> bytes:
        if last[0] is not frame:
            last[0], last[1] = frame, square_resize(frame.to_ndarray(format="rgb24"), size).tobytes()
        return last[1]

    previous = None
    decode_stop = None if clip.stop_s is None else clip.stop_s + AUDIO_MARGIN_S
    try:
        with (part / "frames.u8").open("wb") as frames_out, (part / "log_mel.f16").open("wb") as mel_out:
            for event in iter_media(clip.path, config.features.sample_rate, clip.start_s, decode_stop):
                if event.kind == "video":
                    while (stop is None or k < stop) and event.time > k / rate + EPSILON_S:
                        frames_out.write(rgb_of(previous if previous is not None else event.frame))
                        k += 1
                    previous, video_end = event.frame, max(video_end, event.time)
                elif event.kind == "audio":
                    mel = mels.push(placer.push(event.time, event.samples))
                    mel_out.write(mel.astype(np.float16).tobytes())
                    mel_frames += len(mel)
                else:
                    problems.append(event.note)
            audio_end = placer.start + placer.end / placer.sample_rate if placer.start is not None else 0.0
            duration = max(video_end, audio_end)
            end = stop if stop is not None else math.floor(duration * rate + EPSILON_S)
            while k < end:
                frames_out.write(rgb_of(previous))
                k += 1
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    meta = {"version": VERSION, "source": str(clip.path), "start_s": clip.start_s, "stop_s": clip.stop_s,
            "first_step": first, "steps": max(k - first, 0), "frame_shape": [size, size, 3],
            "mel_frames": mel_frames, "n_mels": config.features.n_mels,
            "audio_start": placer.start if placer.start is not None else 0.0, "duration": duration,
            "problems": problems}
    (part / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        part.rename(folder)
    except OSError:  # another process finished the same clip first: keep theirs
        shutil.rmtree(part, ignore_errors=True)
    return read_clip(folder)


def read_clip(folder: Path) -> CachedClip:
    meta = json.loads((folder / "meta.json").read_text())
    return CachedClip(
        folder, int(meta["first_step"]), int(meta["steps"]), float(meta["audio_start"]), float(meta["duration"]),
        tuple(meta["problems"]), DiskArray(folder / "frames.u8", np.uint8, (meta["steps"], *meta["frame_shape"])),
        DiskArray(folder / "log_mel.f16", np.float16, (meta["mel_frames"], meta["n_mels"])),
    )


def _remove_stale_parts(root: Path) -> None:
    """Half-written folders of runs that were killed (their process is gone): they are redone."""
    if not root.is_dir():
        return
    for part in root.glob("*.part-*"):
        pid = part.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)
            alive = True
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            log.info("removing %s, left half-written by a run that was stopped", part)
            shutil.rmtree(part, ignore_errors=True)


def _prepare_one(clip: Clip, config: ModelConfig, folder: Path) -> tuple[str, CachedClip | str]:
    try:
        return clip.clip_id, write_clip(clip, config, folder)
    except MediaError as err:
        return clip.clip_id, str(err)


def prepare_clips(
    clips: list[Clip], config: ModelConfig, cache_dir: str | Path, workers: int | None = None, progress: bool = True,
) -> tuple[dict[str, CachedClip], list[tuple[str, str]]]:
    """Every clip's prepared folder, decoding the ones not yet in the cache; and (clip id, reason)
    of those that could not be decoded (logged, left out)."""
    from tqdm import tqdm

    cache_dir = Path(cache_dir)
    folders = {clip.clip_id: clip_folder(cache_dir, clip, config) for clip in clips}
    if folders:
        _remove_stale_parts(next(iter(folders.values())).parent)
    ready = {cid: read_clip(f) for cid, f in folders.items() if (f / "meta.json").is_file()}
    todo: dict[Path, list[Clip]] = {}  # one decode per folder: AVE's doubly-labelled clips share a video
    for clip in clips:
        if clip.clip_id not in ready:
            todo.setdefault(folders[clip.clip_id], []).append(clip)
    skipped: list[tuple[str, str]] = []
    if todo:
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        bar = tqdm(total=len(todo), desc="prepare", unit="video", disable=not progress, leave=False)
        results = []
        if workers == 1:
            for folder, same in todo.items():
                results.append((same, _prepare_one(same[0], config, folder)[1]))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_prepare_one, same[0], config, folder): same for folder, same in todo.items()}
                for future in as_completed(futures):
                    results.append((futures[future], future.result()[1]))
                    bar.update()
        bar.close()
        for same, result in results:
            for clip in same:
                if isinstance(result, CachedClip):
                    ready[clip.clip_id] = result
                else:
                    skipped.append((clip.clip_id, result))
        for same, result in results:  # decoded, with something survived: say so once, keep it
            for problem in getattr(result, "problems", ()):
                log.warning("%s: %s", same[0].path, problem)
    for clip_id, reason in skipped:
        log.warning("skipped video %s: %s", clip_id, reason)
    return ready, skipped
