"""Live sources against real parts: avsynth clips as mp4 files, an ffmpeg UDP sender, OpenCV, PyAV.

Each source is checked against the offline path it must agree with (``decode_media``, ``render_clip``)
and against the failures it must survive (missing and corrupt files, a sender that dies and comes
back, a camera that is not there) without raising or hanging.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from avbind_testing import free_port, wait_for

from avbind.models.data.avsynth import CLASS_NAMES, SynthConfig, annotate_clip, render_clip, write_mp4
from avbind.realtime.sources.base import CollectingSink, SourceStatus
from avbind.realtime.sources.decode import decode_media
from avbind.realtime.sources.media_stream import MediaStreamSource, is_network_url
from avbind.realtime.sources.resample import AudioResampler
from avbind.realtime.sources.synthetic import SyntheticSource
from avbind.realtime.sources.webcam import WebcamSource

MODEL_RATE = 16_000  # Hz
SHORT = SynthConfig(n_train=0, n_val=0, n_test=1, duration_s=3, min_event_s=1)  # one 3 s clip
CLIP_S = SHORT.duration_s
requires_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary (apt: ffmpeg)")


# -- helpers ------------------------------------------------------------------------------------



def run_to_end(source, timeout_s: float = 20.0) -> tuple[CollectingSink, float]:
    """Start ``source``, wait for its ended status; returns the sink and the origin."""
    sink = CollectingSink()
    origin = time.monotonic()
    source.start(sink, origin)
    assert sink.ended.wait(timeout_s), f"{source.name} did not end within {timeout_s} s: {sink.statuses}"
    source.stop()
    return sink, origin


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(round(rate * seconds)) / rate)).astype(np.float32)


def peak_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def audio_of(sink: CollectingSink) -> np.ndarray:
    return np.concatenate([c.samples for c in sink.audio]) if sink.audio else np.zeros(0, np.float32)


def assert_contiguous(chunks: list, rate: int) -> None:
    """Each chunk starts where the previous one ended, to floating-point precision."""
    times = np.array([c.time for c in chunks])
    ends = times[:-1] + np.array([len(c.samples) for c in chunks[:-1]]) / rate
    np.testing.assert_allclose(times[1:], ends, rtol=0, atol=1e-9)




@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same 3 s avsynth clip with 16 kHz audio (the model's rate) and with 48 kHz audio."""
    out = tmp_path_factory.mktemp("media")
    frames, audio, _ = render_clip(SHORT, 0)
    write_mp4(out / "clip16k.mp4", frames, audio, SHORT.fps, MODEL_RATE)
    up = AudioResampler(MODEL_RATE, 48_000)
    audio48 = np.concatenate([up.resample(audio), up.flush()])
    write_mp4(out / "clip48k.mp4", frames, audio48, SHORT.fps, 48_000)
    return out


# -- resampler ----------------------------------------------------------------------------------


@pytest.mark.parametrize("in_rate", [48_000, 44_100])
def test_resampler_keeps_pitch_length_and_timing(in_rate: int) -> None:
    resampler = AudioResampler(in_rate, MODEL_RATE)
    tone = sine(1000.0, in_rate, 1.0)
    out = np.concatenate([resampler.resample(tone), resampler.flush()])
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(tone) * MODEL_RATE / in_rate) <= 2
    assert resampler.in_samples == len(tone) and resampler.out_samples == len(out)
    assert abs(peak_frequency(out, MODEL_RATE) - 1000.0) <= 2.0
    # No delay: output sample k is the input signal at k / out_rate (edges aside, where the filter sees zeros).
    ideal = sine(1000.0, MODEL_RATE, len(out) / MODEL_RATE)
    inner = slice(64, len(out) - 64)
    assert np.max(np.abs(out[inner] - ideal[inner])) < 1e-3


@pytest.mark.parametrize("in_rate", [48_000, 44_100])
def test_resampler_chunked_equals_whole(in_rate: int) -> None:
    rng = np.random.default_rng(7)
    signal = (0.3 * rng.standard_normal(in_rate) + sine(440.0, in_rate, 1.0)).astype(np.float32)
    whole = AudioResampler(in_rate, MODEL_RATE)
    expected = np.concatenate([whole.resample(signal), whole.flush()])
    chunked = AudioResampler(in_rate, MODEL_RATE)
    cuts = np.cumsum(rng.integers(1, 2000, 200))
    pieces = [chunked.resample(part) for part in np.split(signal, cuts[cuts < len(signal)])]
    got = np.concatenate([*pieces, chunked.flush()])
    assert len(got) == len(expected)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # While streaming, the output so far is exactly what a caller can timestamp: a prefix of the whole.
    streamed = sum(len(p) for p in pieces)
    assert len(expected) - streamed <= 32
    np.testing.assert_allclose(np.concatenate(pieces), expected[:streamed], atol=1e-5)


def test_resampler_downmixes_int16_and_passes_the_model_rate_through() -> None:
    tone = sine(1000.0, 48_000, 0.5)
    stereo16 = np.round(np.stack([tone, tone], axis=1) * 32767).astype(np.int16)  # (n, 2)
    from_int = AudioResampler(48_000, MODEL_RATE)
    from_float = AudioResampler(48_000, MODEL_RATE)
    np.testing.assert_allclose(from_int.resample(stereo16), from_float.resample(tone), atol=1e-4)
    same = AudioResampler(MODEL_RATE, MODEL_RATE)
    mono = sine(1000.0, MODEL_RATE, 0.1)
    np.testing.assert_array_equal(same.resample(mono), mono)
    assert len(same.flush()) == 0 and same.out_samples == len(mono)
    with pytest.raises(ValueError):
        from_float.resample(np.zeros((2, 3, 4), np.float32))


# -- media files --------------------------------------------------------------------------------


def test_network_urls_are_told_from_files() -> None:
    for url in ("rtsp://cam/x", "udp://127.0.0.1:5000", "srt://h:1", "https://h/a.m3u8"):
        assert is_network_url(url)
    for path in ("clip.mp4", "/data/clip.mp4", "file:///data/clip.mp4", "C:\\clips\\a.mp4"):
        assert not is_network_url(path)


@pytest.mark.parametrize("name", ["clip16k.mp4", "clip48k.mp4"])
def test_file_unpaced_matches_decode_media(media_dir: Path, name: str) -> None:
    path = media_dir / name
    source = MediaStreamSource(path, sample_rate=MODEL_RATE, speed=0)
    assert source.has_video and source.has_audio and not source.reconnect
    sink, _ = run_to_end(source)
    offline = decode_media(path, sample_rate=MODEL_RATE)

    assert [s.level for s in sink.statuses] == ["info"] and sink.statuses[-1].ended
    np.testing.assert_array_equal([f.time for f in sink.frames], offline.frame_times)
    for live, frame in zip(sink.frames, offline.frames, strict=True):
        np.testing.assert_array_equal(live.rgb, frame)

    assert_contiguous(sink.audio, MODEL_RATE)
    start = round((sink.audio[0].time - offline.audio_start) * MODEL_RATE)  # align by time
    live = audio_of(sink)
    assert start == 0 and len(live) == len(offline.audio)
    np.testing.assert_allclose(live, offline.audio[start : start + len(live)], atol=1e-4)
    assert source.counters.as_dict() == {
        "frames": len(offline.frames), "audio_samples": len(offline.audio), "audio_overflows": 0, "errors": 0,
        "frames_dropped": 0, "reconnects": 0, "audio_resyncs": 0,
    }  # fmt: skip


def test_file_is_paced_by_speed(media_dir: Path) -> None:
    speed = 4.0
    began = time.monotonic()
    sink, origin = run_to_end(MediaStreamSource(media_dir / "clip48k.mp4", speed=speed))
    elapsed = time.monotonic() - began
    expected = CLIP_S / speed
    assert 0.5 * expected < elapsed < expected + 5.0
    for item in [*sink.frames, *sink.audio]:
        assert item.capture == pytest.approx(origin + item.time / speed, abs=1e-9)


def test_paced_file_stops_promptly(media_dir: Path) -> None:
    source = MediaStreamSource(media_dir / "clip16k.mp4", speed=0.1)  # would take 30 s
    sink = CollectingSink()
    source.start(sink, time.monotonic())
    assert wait_for(lambda: len(sink.frames) >= 1, 5.0)
    began = time.monotonic()
    source.stop()
    assert time.monotonic() - began < 1.0
    assert not source._thread.is_alive()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: d / "missing.mp4", "no such media file"),
        (lambda d: (d / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(50_000)) and d / "noise.mp4",
         "cannot open"),
    ],
    ids=["missing", "random-bytes"],
)  # fmt: skip
def test_bad_file_reports_error_and_ends(tmp_path: Path, make: Callable[[Path], Path], problem: str) -> None:
    path = make(tmp_path)
    sink, _ = run_to_end(MediaStreamSource(path, speed=0), timeout_s=10.0)
    assert sink.frames == [] and sink.audio == []
    (status,) = sink.statuses
    assert status.level == "error" and status.ended
    assert str(path) in status.message and problem in status.message


def test_corrupt_data_in_a_file_is_survived(media_dir: Path, tmp_path: Path) -> None:
    data = bytearray((media_dir / "clip16k.mp4").read_bytes())
    rng = np.random.default_rng(1)
    for start in range(3_000, len(data) // 2, 17_000):  # inside the media data, before the index
        data[start : start + 3_000] = rng.bytes(3_000)
    path = tmp_path / "damaged.mp4"
    path.write_bytes(bytes(data))
    source = MediaStreamSource(path, speed=0)
    sink, _ = run_to_end(source)
    assert source.counters.errors >= 1
    assert any(s.level == "warning" and str(path) in s.message for s in sink.statuses)
    assert sink.statuses[-1].ended and sink.statuses[-1].level == "info"  # carried on to the end
    assert len(sink.frames) > SHORT.fps  # most of the clip still came through
    times = [f.time for f in sink.frames]
    assert times == sorted(times)


# -- network streams ----------------------------------------------------------------------------


class FfmpegSender:
    """``ffmpeg -re`` sending a looping clip as MPEG-TS over UDP: a network camera that can die."""

    def __init__(self, clip: Path, url: str) -> None:
        self.command = [
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "25",  # a keyframe a second
            "-c:a", "aac", "-f", "mpegts", url,
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def udp_sender(media_dir: Path) -> Iterator[FfmpegSender]:
    sender = FfmpegSender(media_dir / "clip48k.mp4", f"udp://127.0.0.1:{free_port(udp=True)}")
    yield sender
    sender.kill()


def problems_naming(sink: CollectingSink, url: str) -> list[SourceStatus]:
    return [s for s in sink.statuses if s.level in ("warning", "error") and url in s.message]


@requires_ffmpeg
@pytest.mark.slow
def test_udp_stream_rebases_survives_sender_death_and_reconnects(udp_sender: FfmpegSender) -> None:
    url = udp_sender.command[-1]
    source = MediaStreamSource(url, read_timeout_s=1.0, backoff_s=0.2)
    assert source.is_network and source.reconnect
    sink = CollectingSink()
    origin = time.monotonic()
    source.start(sink, origin)  # listening before the sender starts, so the first keyframe is seen
    udp_sender.start()
    try:
        assert wait_for(lambda: len(sink.frames) >= 40 and len(sink.audio) >= 15, 15.0), sink.statuses
        first = list(sink.frames)
        assert not [s for s in sink.statuses if s.level == "error" or s.discontinuity], sink.statuses
        times = np.array([f.time for f in first])
        assert 0.0 <= times[0] < 1.0 and np.all(np.diff(times) > 0)
        assert np.median(np.diff(times)) == pytest.approx(1 / SHORT.fps, abs=1e-3)
        audio = list(sink.audio)
        assert_contiguous(audio, MODEL_RATE)
        assert -0.1 <= audio[0].time < 1.0  # the base is the video's start: AAC priming may come just before
        assert times[0] == pytest.approx(0.0, abs=1e-3)  # frames sit on the step grid, as in a file
        assert abs(audio[-1].time - first[-1].time) < 1.0  # one base for both streams
        assert all(f.capture >= origin for f in first)

        udp_sender.kill()
        killed = time.monotonic()
        assert wait_for(lambda: problems_naming(sink, url), source.read_timeout_s + 3.0), sink.statuses
        assert time.monotonic() - killed < source.read_timeout_s + 3.0
        before = max(f.time for f in sink.frames)
        count = len(sink.frames)

        udp_sender.start()
        assert wait_for(lambda: any(s.discontinuity and s.level == "info" for s in sink.statuses), 15.0), sink.statuses
        assert "reconnected" in next(s.message for s in sink.statuses if s.discontinuity)
        assert wait_for(lambda: len(sink.frames) >= count + 25, 10.0), sink.statuses
        after = [f.time for f in sink.frames[count:]]
        assert min(after) > before and after == sorted(after)
        assert source.counters.reconnects == 1
        assert not any(s.ended for s in sink.statuses)
    finally:
        began = time.monotonic()
        source.stop()
        assert time.monotonic() - began < 2.5
        assert not source._thread.is_alive()


@requires_ffmpeg
def test_udp_without_reconnect_ends_when_the_sender_dies(udp_sender: FfmpegSender) -> None:
    url = udp_sender.command[-1]
    source = MediaStreamSource(url, read_timeout_s=0.5, reconnect=False)
    sink = CollectingSink()
    source.start(sink, time.monotonic())
    udp_sender.start()
    try:
        assert wait_for(lambda: len(sink.frames) >= 5, 10.0), sink.statuses
        udp_sender.kill()
        assert sink.ended.wait(3.0), sink.statuses
        last = sink.statuses[-1]
        assert last.level == "error" and url in last.message and "read timeout" in last.message
    finally:
        source.stop()


def test_dead_network_stream_retries_with_backoff_then_gives_up() -> None:
    url = f"udp://127.0.0.1:{free_port(udp=True)}"  # nobody sends
    source = MediaStreamSource(url, open_timeout_s=0.3, max_reconnects=2, backoff_s=0.1)
    sink, _ = run_to_end(source, timeout_s=10.0)
    assert [s.level for s in sink.statuses] == ["error"] * 3
    assert all(url in s.message and "cannot open" in s.message for s in sink.statuses)
    assert "attempt 1 of 2 in 0.1 s" in sink.statuses[0].message
    assert "attempt 2 of 2 in 0.2 s" in sink.statuses[1].message  # the wait doubled
    assert sink.statuses[2].ended and "giving up" in sink.statuses[2].message


def test_stop_returns_while_a_stream_is_still_opening() -> None:
    source = MediaStreamSource(f"udp://127.0.0.1:{free_port(udp=True)}", open_timeout_s=2.0)
    sink = CollectingSink()
    source.start(sink, time.monotonic())
    time.sleep(0.2)  # inside av.open, which only its timeout interrupts
    began = time.monotonic()
    source.stop()
    assert time.monotonic() - began < 2.5
    source._thread.join(timeout=5.0)
    assert not source._thread.is_alive()
    assert sink.statuses == []  # a stopped source reports nothing more


# -- webcam (OpenCV) ----------------------------------------------------------------------------


def test_webcam_reads_a_video_file_as_a_camera(media_dir: Path) -> None:
    path = media_dir / "clip16k.mp4"
    source = WebcamSource(str(path))
    assert source.has_video and not source.has_audio
    sink, origin = run_to_end(source)
    offline = decode_media(path)
    assert len(sink.frames) == len(offline.frames)
    for live, frame in zip(sink.frames, offline.frames, strict=True):
        assert live.rgb.shape == frame.shape and live.rgb.dtype == np.uint8
        # OpenCV converts YUV to RGB with its own rounding; the colour order must match (RGB, not BGR).
        assert np.mean(np.abs(live.rgb.astype(np.int16) - frame)) < 3.0
    times = np.array([f.time for f in sink.frames])
    assert np.all(np.diff(times) > 0)
    np.testing.assert_allclose(times, [f.capture - origin for f in sink.frames], atol=1e-12)
    assert sink.statuses[-1].level == "info" and sink.statuses[-1].ended
    assert source.counters.frames == len(offline.frames)


def test_missing_camera_reports_error_and_ends() -> None:
    source = WebcamSource(97, max_reopens=1, backoff_s=0.05)
    sink, _ = run_to_end(source, timeout_s=10.0)
    assert sink.frames == []
    assert [s.level for s in sink.statuses] == ["error", "error"]
    assert all("webcam 97" in s.message for s in sink.statuses)
    assert sink.statuses[-1].ended and not sink.statuses[0].ended


# -- synthetic avsynth stream -------------------------------------------------------------------


def test_synthetic_stream_is_the_decoded_test_clips_back_to_back() -> None:
    """What the stream shows is what evaluation saw: each rendered clip after a real H.264/AAC round
    trip, clip k from k x 10 s on, with a state reset announced at each clip boundary."""
    from avbind.realtime.sources.synthetic import codec_round_trip

    source = SyntheticSource(seed=2026, clips=2, speed=0)
    sink, _ = run_to_end(source)
    rendered = [render_clip(source.config, source.dataset_index(k)) for k in range(2)]
    decoded = [codec_round_trip(r[0], r[1], source.config) for r in rendered]
    clip_s = source.segments_per_clip  # 1 s segments

    assert [a.split for a in source.clip_annotations] == ["test", "test"]
    assert source.clip_annotations == [r[2] for r in rendered]
    frames = np.concatenate([d.frames for d in decoded])
    times = np.concatenate([k * clip_s + d.frame_times for k, d in enumerate(decoded)])
    assert len(sink.frames) == len(frames) == sum(len(r[0]) for r in rendered)
    np.testing.assert_allclose([f.time for f in sink.frames], times, atol=1e-9)
    np.testing.assert_array_equal(np.stack([f.rgb for f in sink.frames]), frames)
    assert not np.array_equal(frames, np.concatenate([r[0] for r in rendered]))  # really through the codec
    # Each clip's audio is one contiguous run where its decoded timeline puts it (AAC leaves a clip
    # 48 ms longer than its video, so the next clip's run starts before the previous one's end).
    breaks = [i for i in range(1, len(sink.audio))
              if abs(sink.audio[i].time - sink.audio[i - 1].time - len(sink.audio[i - 1].samples) / source.sample_rate)
              > 1e-6]
    assert len(breaks) == 1
    runs = [sink.audio[: breaks[0]], sink.audio[breaks[0]:]]
    for k, (d, chunks) in enumerate(zip(decoded, runs, strict=True)):
        assert chunks[0].time == pytest.approx(k * clip_s + d.audio_start, abs=1e-9)
        assert_contiguous(chunks, source.sample_rate)
        np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), d.audio)
    boundary, end = sink.statuses
    assert boundary.discontinuity and not boundary.ended and "clip 1" in boundary.message
    assert end.ended and end.level == "info"

    for segment in range(2 * source.segments_per_clip):
        clip, second = divmod(segment, source.segments_per_clip)
        ann = rendered[clip][2]
        expected = ann.class_index if any(a <= second < b for a, b in ann.events) else len(CLASS_NAMES)
        assert source.truth(segment) == expected
    with pytest.raises(IndexError):
        source.truth(2 * source.segments_per_clip)


def test_synthetic_endless_stream_knows_truth_ahead_and_stops_promptly() -> None:
    source = SyntheticSource(seed=5, speed=1.0)
    n_test = source.config.n_test
    later = annotate_clip(source.config, source.dataset_index(n_test + 3))  # wraps around the split
    assert later == annotate_clip(source.config, source.dataset_index(3)) and later.split == "test"
    assert source.truth(10_000 * source.segments_per_clip) in range(len(CLASS_NAMES) + 1)
    sink = CollectingSink()
    origin = time.monotonic()
    source.start(sink, origin)
    assert wait_for(lambda: len(sink.frames) >= 5 and len(sink.audio) >= 10, 5.0)
    source.stop()
    # Stopped within stop()'s wait, not abandoned at its timeout (a wall-time bound would depend on
    # the machine's load: the thread may be in the middle of a clip's codec round trip).
    assert not source._thread.is_alive()
    assert sink.statuses == []
    # Paced at speed 1 from when the first clip was ready (its codec round trip takes a moment).
    offsets = [item.capture - item.time for item in [*sink.frames, *sink.audio]]
    assert max(offsets) - min(offsets) < 1e-6 and min(offsets) >= origin
    assert sink.frames[-1].time < time.monotonic() - min(offsets)


def test_realtime_sources_do_not_import_torch() -> None:
    code = (
        "import sys; import avbind.realtime.sources.media_stream, avbind.realtime.sources.webcam, "
        "avbind.realtime.sources.microphone, avbind.realtime.sources.synthetic, avbind.realtime.sources.resample; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
