"""Log-mel spectrogram in numpy, shared by serving and training.

It lives in ``realtime/`` because inference must run without torch; training imports the very same
functions, so there is no train/serve skew in the audio features.

Frames are *not* centred (no reflect padding): frame ``k`` covers samples
``[k * hop, k * hop + window)``. That is what makes the computation streamable: a frame can be
emitted as soon as its last sample has arrived, and :class:`LogMelStream` fed any chunking yields
exactly the frames that :func:`log_mel` computes over the whole signal at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16_000  # Hz
WINDOW = 400  # samples: 25 ms at 16 kHz
HOP = 160  # samples: 10 ms at 16 kHz
N_FFT = 512  # samples: window zero-padded to the next power of two
LOG_FLOOR = 1e-6  # mel power below this is clipped before the log: silence is -13.8, not -inf


@dataclass(frozen=True)
class LogMelSettings:
    """Everything that fixes the features; stored in checkpoints and ONNX metadata."""

    sample_rate: int = SAMPLE_RATE  # Hz; input audio must already be at this rate
    window: int = WINDOW  # samples per analysis frame
    hop: int = HOP  # samples between frame starts
    n_fft: int = N_FFT  # FFT size (>= window)
    n_mels: int = 64  # mel bands
    f_min: float = 0.0  # Hz
    f_max: float = SAMPLE_RATE / 2  # Hz
    log_floor: float = LOG_FLOOR  # power floor before the natural log

    def __post_init__(self) -> None:
        if not 0 < self.hop <= self.window <= self.n_fft:
            raise ValueError(
                f"log-mel settings need 0 < hop <= window <= n_fft, got hop={self.hop}, "
                f"window={self.window}, n_fft={self.n_fft}"
            )
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(
                f"log-mel settings need 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, "
                f"f_max={self.f_max}, sample_rate={self.sample_rate}"
            )
        if self.log_floor <= 0:
            raise ValueError(f"log_floor must be > 0, got {self.log_floor}")

    def to_dict(self) -> dict:
        return asdict(self)

    def frames_for(self, n_samples: int) -> int:
        """Number of complete frames in ``n_samples`` samples."""
        return 0 if n_samples < self.window else 1 + (n_samples - self.window) // self.hop


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3  # Hz per mel in the linear part
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f < min_log_hz, f / f_sp, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m < min_log_mel, m * f_sp, min_log_hz * np.exp(logstep * (m - min_log_mel)))


@lru_cache(maxsize=8)
def mel_filters(settings: LogMelSettings) -> np.ndarray:
    """Triangular, area-normalised (Slaney) filters, shape (n_fft // 2 + 1, n_mels), float32.

    Raises if a band would be empty: an all-zero band is a silent bug (too many mels for n_fft).
    """
    n_bins = settings.n_fft // 2 + 1
    fft_hz = np.linspace(0.0, settings.sample_rate / 2, n_bins)
    mel_pts = np.linspace(_hz_to_mel(settings.f_min), _hz_to_mel(settings.f_max), settings.n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)
    lower = (fft_hz[None, :] - hz_pts[:-2, None]) / np.diff(hz_pts)[:-1, None]
    upper = (hz_pts[2:, None] - fft_hz[None, :]) / np.diff(hz_pts)[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))  # (n_mels, n_bins)
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    empty = np.flatnonzero(weights.max(axis=1) == 0)
    if empty.size:
        raise ValueError(
            f"{settings.n_mels} mel bands over n_fft={settings.n_fft} leave bands {empty.tolist()} empty; "
            "use fewer mels or a larger n_fft"
        )
    return np.ascontiguousarray(weights.T, dtype=np.float32)


@lru_cache(maxsize=8)
def _window(settings: LogMelSettings) -> np.ndarray:
    # Periodic Hann, as torch.hann_window and librosa use for spectral analysis.
    n = np.arange(settings.window)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / settings.window)).astype(np.float32)


def _check_audio(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"audio: expected mono samples of shape (n_samples,), got shape {samples.shape}")
    if not np.issubdtype(samples.dtype, np.floating):
        raise TypeError(
            f"audio: expected floating-point samples in [-1, 1] of shape (n_samples,), got dtype {samples.dtype}"
        )
    return samples.astype(np.float32, copy=False)


def _frames_to_log_mel(frames: np.ndarray, settings: LogMelSettings) -> np.ndarray:
    # frames: (n_frames, window) -> (n_frames, n_mels)
    spectrum = np.fft.rfft(frames * _window(settings), n=settings.n_fft, axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)  # (n_frames, n_bins)
    mel = power @ mel_filters(settings)  # (n_frames, n_mels)
    return np.log(np.maximum(mel, settings.log_floor)).astype(np.float32)


def log_mel(samples: np.ndarray, settings: LogMelSettings | None = None) -> np.ndarray:
    """Log-mel frames of a whole mono signal at ``settings.sample_rate``: (n_frames, n_mels), float32."""
    settings = settings or LogMelSettings()
    samples = _check_audio(samples)
    n_frames = settings.frames_for(samples.shape[0])
    if n_frames == 0:
        return np.zeros((0, settings.n_mels), dtype=np.float32)
    # (n_frames, window) view without copying the signal.
    frames = np.lib.stride_tricks.sliding_window_view(samples, settings.window)[:: settings.hop][:n_frames]
    return _frames_to_log_mel(frames, settings)


class LogMelStream:
    """Incremental log-mel: feed chunks of any size, get only the frames they complete.

    Keeps at most ``window - hop`` samples of the past (plus the not-yet-complete tail), so each hop
    of audio is transformed exactly once however the input is chunked.
    """

    def __init__(self, settings: LogMelSettings | None = None) -> None:
        self.settings = settings or LogMelSettings()
        self.reset()

    def reset(self) -> None:
        """Forget the pending samples; call on a stream discontinuity."""
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_emitted = 0  # frame index of the next emitted frame, from the last reset

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append samples; return the newly completed frames, (n_new, n_mels)."""
        samples = _check_audio(samples)
        buffered = np.concatenate([self._pending, samples]) if self._pending.size else samples
        out = log_mel(buffered, self.settings)
        consumed = out.shape[0] * self.settings.hop
        self._pending = np.array(buffered[consumed:], dtype=np.float32)
        self.frames_emitted += out.shape[0]
        return out
