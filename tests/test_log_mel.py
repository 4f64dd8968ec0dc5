"""The numpy log-mel against an independent torch reference, and streaming against one-shot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from avbind.realtime.features.log_mel import LogMelSettings, LogMelStream, log_mel, mel_filters

torch = pytest.importorskip("torch")


def _slaney_mel(hz: torch.Tensor) -> torch.Tensor:
    # Written from the definition (Slaney's Auditory Toolbox), independently of the numpy code:
    # 3 mels per 200 Hz up to 1 kHz, then 27 mels per factor 6.4.
    linear = hz * 3.0 / 200.0
    log_part = 15.0 + 27.0 * torch.log(hz.clamp_min(1e-9) / 1000.0) / math.log(6.4)
    return torch.where(hz >= 1000.0, log_part, linear)


def _slaney_hz(mel: torch.Tensor) -> torch.Tensor:
    linear = mel * 200.0 / 3.0
    log_part = 1000.0 * torch.exp((mel - 15.0) * math.log(6.4) / 27.0)
    return torch.where(mel >= 15.0, log_part, linear)


def _torch_log_mel(x: np.ndarray, s: LogMelSettings) -> np.ndarray:
    """torch.stft + a triangle filterbank built from band edges; float64 throughout."""
    signal = torch.from_numpy(x.astype(np.float64))
    # torch centres a short window inside n_fft; padding by that margin on both sides makes stft's
    # frame k cover samples [k*hop, k*hop+window) exactly like the non-centred numpy frames.
    margin = (s.n_fft - s.window) // 2
    signal = torch.nn.functional.pad(signal, (margin, s.n_fft - s.window - margin))
    window = torch.hann_window(s.window, periodic=True, dtype=torch.float64)
    spec = torch.stft(
        signal, n_fft=s.n_fft, hop_length=s.hop, win_length=s.window, window=window,
        center=False, return_complex=True,
    )  # (n_bins, n_frames)
    power = spec.abs() ** 2
    edges_hz = _slaney_hz(torch.linspace(
        float(_slaney_mel(torch.tensor(s.f_min, dtype=torch.float64))),
        float(_slaney_mel(torch.tensor(s.f_max, dtype=torch.float64))),
        s.n_mels + 2, dtype=torch.float64,
    ))
    bins_hz = torch.fft.rfftfreq(s.n_fft, d=1.0 / s.sample_rate, dtype=torch.float64)
    bank = torch.zeros(s.n_mels, bins_hz.numel(), dtype=torch.float64)
    for m in range(s.n_mels):
        lo, mid, hi = edges_hz[m], edges_hz[m + 1], edges_hz[m + 2]
        rising = (bins_hz - lo) / (mid - lo)
        falling = (hi - bins_hz) / (hi - mid)
        bank[m] = torch.clamp(torch.minimum(rising, falling), min=0.0) * 2.0 / (hi - lo)
    mel = bank @ power  # (n_mels, n_frames)
    return torch.log(mel.clamp_min(s.log_floor)).T.numpy()


def _test_signal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16_000
    chirp = 0.5 * np.sin(2 * np.pi * (200 * t + 1500 * t**2))
    return (chirp + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("n_mels", [64, 128])
def test_matches_torch_reference(n_mels: int) -> None:
    s = LogMelSettings(n_mels=n_mels)
    x = _test_signal(16_000)
    ours = log_mel(x, s)
    ref = _torch_log_mel(x, s)
    assert ours.shape == ref.shape == (s.frames_for(x.size), n_mels)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_silence_hits_the_floor_not_minus_infinity() -> None:
    s = LogMelSettings()
    out = log_mel(np.zeros(4000, dtype=np.float32), s)
    assert np.all(out == np.float32(np.log(s.log_floor)))


def test_filterbank_rejects_empty_bands() -> None:
    with pytest.raises(ValueError, match="empty"):
        mel_filters(LogMelSettings(n_mels=256, n_fft=512))


@pytest.mark.parametrize("chunk", [1, 160, 7919, 400, 3])
def test_streaming_equals_one_shot(chunk: int) -> None:
    s = LogMelSettings()
    x = _test_signal(12_345 if chunk > 1 else 2_345, seed=1)
    whole = log_mel(x, s)
    stream = LogMelStream(s)
    parts = [stream.push(x[i : i + chunk]) for i in range(0, x.size, chunk)]
    streamed = np.concatenate(parts)
    assert streamed.shape == whole.shape
    assert stream.frames_emitted == whole.shape[0]
    np.testing.assert_allclose(streamed, whole, atol=1e-5, rtol=0)


def test_stream_reset_starts_over() -> None:
    x = _test_signal(3000)
    stream = LogMelStream()
    stream.push(x[:1234])
    stream.reset()
    np.testing.assert_allclose(stream.push(x), log_mel(x), atol=1e-5, rtol=0)


def test_bad_audio_names_shape_and_dtype() -> None:
    with pytest.raises(ValueError, match=r"expected mono samples of shape \(n_samples,\), got shape \(2, 100\)"):
        log_mel(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(TypeError, match="got dtype int16"):
        LogMelStream().push(np.zeros(100, dtype=np.int16))


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match="hop <= window"):
        LogMelSettings(hop=500)
    with pytest.raises(ValueError, match="f_max"):
        LogMelSettings(f_max=9000.0)
