"""Timestamp rules that tie a model step to one frame and one log-mel window.

The same functions cut training samples from decoded files and cut live input from ring buffers,
so a model sees online exactly what it was trained on.

* Steps happen at ``k / step_rate`` seconds; each takes the latest frame shown at or before it.
* Its audio window is the temporal binding window: the ``window_frames`` log-mel frames that end
  at or before ``t + end_offset_s`` (a bounded lookahead).
"""

from __future__ import annotations

import math

import numpy as np

from avbind.realtime.features.log_mel import LogMelSettings

EPSILON_S = 1e-6  # s: tolerance for timestamps that should coincide exactly


def step_times(duration_s: float, step_rate_hz: float, start_s: float = 0.0) -> np.ndarray:
    """Times of the steps in [start, start + duration)."""
    n = math.floor(duration_s * step_rate_hz + EPSILON_S)
    return start_s + np.arange(n) / step_rate_hz


def frame_index_at(frame_times: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    """Index of the latest frame at or before ``t``; 0 when ``t`` precedes the first frame."""
    idx = np.searchsorted(frame_times, np.asarray(t) + EPSILON_S, side="right") - 1
    return np.maximum(idx, 0)


def log_mel_window_range(
    t: float, settings: LogMelSettings, window_frames: int, end_offset_s: float, audio_start_s: float = 0.0,
) -> tuple[int, int]:
    """[first, stop) indices of the log-mel frames in the step at time ``t``.

    Frame k covers samples [k*hop, k*hop + window) after ``audio_start_s``; the window's last frame
    is the last one that is complete at ``t + end_offset_s``. Indices may be negative or beyond
    the audio: the caller fills those with silence.
    """
    end_sample = (t + end_offset_s - audio_start_s) * settings.sample_rate
    stop = math.floor((end_sample - settings.window) / settings.hop + EPSILON_S) + 1
    return stop - window_frames, stop


def cut_log_mel_window(log_mel: np.ndarray, first: int, stop: int, floor_value: float) -> np.ndarray:
    """log_mel[first:stop] with out-of-range frames filled by ``floor_value`` (silence)."""
    out = np.full((stop - first, log_mel.shape[1]), floor_value, dtype=np.float32)
    lo, hi = max(first, 0), min(stop, log_mel.shape[0])
    if hi > lo:
        out[lo - first : hi - first] = log_mel[lo:hi]
    return out
