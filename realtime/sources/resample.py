"""Streaming sample-rate conversion of numpy audio, for devices that do not run at the model's rate.

Built on PyAV's ``av.AudioResampler`` (libswresample), the resampler ``decode_media`` uses, so a
microphone and a file reach the model through the same filter.

Delay: libswresample compensates its own filter delay. The first output sample lies at the time of
the first input sample, and the output never starts with filter padding. The cost is a small
hold-back: while streaming, the newest ``filter_length / 2`` output samples (16 at the default
settings, 1 ms at 16 kHz) are withheld until more input arrives or :meth:`flush` is called. So
``out_samples / out_rate`` after the first input sample is always the exact time of the next output
sample.
"""

from __future__ import annotations

import av
import numpy as np

INT16_SCALE = 32768.0  # full scale of int16 PCM


def to_mono_float32(samples: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) float or int16 PCM -> (n,) float32 in [-1, 1], channels averaged."""
    samples = np.asarray(samples)
    if samples.ndim not in (1, 2):
        raise ValueError(f"audio must be (n,) or (n, channels), got shape {samples.shape}")
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / INT16_SCALE
    elif not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"audio must be float or int16, got {samples.dtype}")
    if samples.ndim == 2:
        samples = samples.mean(axis=1)  # (n,)
    return np.ascontiguousarray(samples, dtype=np.float32)


class AudioResampler:
    """Mono float32 at ``out_rate`` from chunks of any size at ``in_rate``.

    ``in_samples`` and ``out_samples`` count what went in and came out, so a caller that knows the
    time of the first input sample, ``t0``, timestamps each output chunk exactly as
    ``t0 + out_samples_before_the_chunk / out_rate``.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self.in_samples = 0  # mono samples fed
        self.out_samples = 0  # mono samples returned
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.out_rate)

    def resample(self, samples: np.ndarray) -> np.ndarray:
        """The output that ``samples`` completes; may be empty, may be a little shorter than the ratio says."""
        mono = to_mono_float32(samples)
        self.in_samples += len(mono)
        if len(mono) == 0:
            return np.zeros(0, np.float32)
        if self.in_rate == self.out_rate:
            return self._count(mono)
        frame = av.AudioFrame.from_ndarray(mono[None, :], format="flt", layout="mono")  # (1, n): packed
        frame.sample_rate = self.in_rate
        return self._count(self._collect(self._resampler.resample(frame)))

    def flush(self) -> np.ndarray:
        """The held-back tail; call at the end of a stream (the resampler is then spent)."""
        if self.in_rate == self.out_rate:
            return np.zeros(0, np.float32)
        return self._count(self._collect(self._resampler.resample(None)))

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)

    def _count(self, out: np.ndarray) -> np.ndarray:
        self.out_samples += len(out)
        return out
